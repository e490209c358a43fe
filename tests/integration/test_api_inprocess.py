"""The HTTP API in-process over the real database: ownership, status, bad input, double texting."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from langchain_core.messages import AIMessage

from agent.models import register_model, unregister_model
from server.settings import Settings
from tests.support.inprocess import api_client, running_service
from tests.support.scripted import ScriptedChatModel

ALICE, BOB = {"x-api-key": "ka"}, {"authorization": "Bearer kb"}
Q = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}


@pytest.fixture(scope="module")
async def svc(db):
    settings = Settings(keel_api_keys="ka:alice,kb:bob", keel_max_body_bytes=50_000)
    async with running_service(settings, db) as service:
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


async def thread(client, headers=ALICE, **body) -> str:
    r = await client.post("/threads", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["thread_id"]


async def row_counts(db) -> tuple[int, int]:
    async with db.pool.connection() as conn:
        t = await (await conn.execute("SELECT count(*) AS n FROM keel_threads")).fetchone()
        r = await (await conn.execute("SELECT count(*) AS n FROM keel_runs")).fetchone()
    return t["n"], r["n"]


async def test_auth_required_and_threads_are_private(client):
    assert (await client.post("/threads", json={})).status_code == 401
    tid = await thread(client, metadata={"topic": "x"})
    assert (await client.get(f"/threads/{tid}", headers=ALICE)).json()["metadata"] == {"topic": "x"}
    r = await client.get(f"/threads/{tid}", headers=BOB)
    assert r.status_code == 404 and r.json() == {"detail": f"Thread with ID {tid} not found"}
    r = await client.post(
        f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": Q}, headers=BOB
    )
    assert r.status_code == 404
    found = (await client.post("/threads/search", json={"metadata": {"topic": "x"}}, headers=BOB)).json()
    assert found == []
    assert (await client.delete(f"/threads/{tid}", headers=BOB)).status_code == 404
    assert (await client.get(f"/threads/{tid}", headers=ALICE)).status_code == 200


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("get", "/threads/not-a-uuid", None, 422),
        ("get", f"/threads/{uuid.uuid4()}", None, 404),
        ("get", f"/threads/{uuid.uuid4()}/state", None, 404),
        ("post", "/threads/search", {"limit": "ten"}, 422),
        ("post", "/threads/search", {"limit": -1}, 422),
        ("post", "/threads", {"thread_id": "nope"}, 422),
        ("post", "/threads", {"metadata": "not a dict"}, 422),
        ("get", "/assistants/nope", None, 422),  # not a UUID nor a graph id, as langgraph-api answers
        ("get", f"/assistants/{uuid.uuid4()}", None, 404),
        ("post", "/runs/wait", {"assistant_id": "nope", "input": Q}, 422),
        ("post", "/runs/wait", {"input": Q}, 422),
        ("post", "/runs/wait", {"assistant_id": "agent", "input": Q, "stream_mode": "bogus"}, 422),
        ("post", "/runs/wait", {"assistant_id": "agent", "input": Q, "context": {"user_id": "mallory"}}, 422),
        ("post", "/runs/wait", {"assistant_id": "agent", "input": Q, "context": {"max_steps": "many"}}, 422),
        ("post", "/runs/wait", {"assistant_id": "agent", "command": {}}, 422),
    ],
)
async def test_bad_input_gets_4xx_detail(client, db, method, path, body, status):
    before = await row_counts(db)
    r = await getattr(client, method)(path, headers=ALICE, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert await row_counts(db) == before, "a rejected request must write nothing"


async def test_malformed_json_and_oversized_bodies(client, db):
    before = await row_counts(db)
    r = await client.post(
        "/threads", content=b'{"metadata": {', headers={**ALICE, "content-type": "application/json"}
    )
    assert r.status_code == 400 and "Malformed JSON" in r.json()["detail"]
    big = {"metadata": {"blob": "x" * 60_000}}
    r = await client.post("/threads", json=big, headers=ALICE)
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert await row_counts(db) == before


async def test_text_plain_json_is_accepted(client):
    r = await client.post(
        "/threads", content=b"{}", headers={**ALICE, "content-type": "text/plain;charset=UTF-8"}
    )
    assert r.status_code == 200


async def test_if_not_exists_create_is_all_or_nothing(client, db):
    tid = str(uuid.uuid4())
    r = await client.post(
        f"/threads/{tid}/runs/wait",
        headers=ALICE,
        json={"assistant_id": "missing", "input": Q, "if_not_exists": "create"},
    )
    assert r.status_code == 422
    assert (await client.get(f"/threads/{tid}", headers=ALICE)).status_code == 404
    r = await client.post(
        f"/threads/{tid}/runs/wait",
        headers=ALICE,
        json={"assistant_id": "agent", "input": Q, "if_not_exists": "create"},
    )
    assert r.status_code == 200 and r.json()["status"] in (
        "done",
        "budget_exhausted:max_revisions",
        "not_found",
    )


async def test_failed_run_reports_error_and_thread_status(client, svc):
    name = f"test:boom-{uuid.uuid4()}"
    register_model(name, ScriptedChatModel([ValueError("kaboom")]))
    try:
        svc.settings.keel_model = name
        tid = await thread(client)
        r = await client.post(
            f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": Q}, headers=ALICE
        )
        assert r.status_code == 200
        assert r.json() == {"__error__": {"error": "ValueError", "message": "kaboom"}}
        t = (await client.get(f"/threads/{tid}", headers=ALICE)).json()
        assert t["status"] == "error" and t["error"]["message"] == "kaboom"
        runs = (await client.get(f"/threads/{tid}/runs", headers=ALICE)).json()
        assert runs[0]["status"] == "error"
        r = await client.post(
            f"/threads/{tid}/runs/stream", json={"assistant_id": "agent", "input": Q}, headers=ALICE
        )
        # The script is used up now, so this run fails too, and the stream says so before closing.
        assert "event: error" in r.text and "event: end" not in r.text
    finally:
        svc.settings.keel_model = None
        unregister_model(name)


async def test_reject_strategy_gives_409_while_busy(client, svc):
    gate = asyncio.Event()

    async def slow(messages):
        await asyncio.sleep(0)
        return AIMessage(content="slow answer")

    class Gated(ScriptedChatModel):
        async def _agenerate(self, messages, stop=None, run_manager=None, **kw):
            await gate.wait()
            return self._generate(messages, stop=stop, **kw)

    name = f"test:gated-{uuid.uuid4()}"
    register_model(name, Gated(["slow answer", {"score": 0.9, "reasons": [], "revised_query": ""}]))
    svc.settings.keel_model = name
    try:
        tid = await thread(client)
        r = await client.post(
            f"/threads/{tid}/runs", json={"assistant_id": "agent", "input": Q}, headers=ALICE
        )
        assert r.status_code == 200 and r.json()["status"] == "pending"
        assert r.headers["content-location"].endswith(r.json()["run_id"])
        rid = r.json()["run_id"]
        for _ in range(100):
            if (await client.get(f"/threads/{tid}", headers=ALICE)).json()["status"] == "busy":
                break
            await asyncio.sleep(0.02)
        r = await client.post(
            f"/threads/{tid}/runs/wait",
            headers=ALICE,
            json={"assistant_id": "agent", "input": Q, "multitask_strategy": "reject"},
        )
        assert r.status_code == 409 and "already running" in r.json()["detail"]
        gate.set()
        r = await client.get(f"/threads/{tid}/runs/{rid}/join", headers=ALICE)
        assert r.json()["answer"] == "slow answer"
        assert (await client.get(f"/threads/{tid}", headers=ALICE)).json()["status"] == "idle"
        assert (await client.get(f"/threads/{tid}/runs/{rid}", headers=ALICE)).json()["status"] == "success"
    finally:
        gate.set()
        svc.settings.keel_model = None
        unregister_model(name)


async def test_interrupt_status_and_resume_with_null_input(client):
    tid = await thread(client)
    r = await client.post(
        f"/threads/{tid}/runs/wait",
        headers=ALICE,
        json={"assistant_id": "agent", "input": Q, "interrupt_before": ["critique"]},
    )
    assert r.status_code == 200
    t = (await client.get(f"/threads/{tid}", headers=ALICE)).json()
    assert t["status"] == "interrupted"
    # A run stopped by interrupt_before ends `success`, as the reference's; its thread says `interrupted`.
    runs = (await client.get(f"/threads/{tid}/runs", headers=ALICE)).json()
    assert [run["status"] for run in runs] == ["success"]
    state = (await client.get(f"/threads/{tid}/state", headers=ALICE)).json()
    assert state["next"] == ["critique"] and state["checkpoint"]["checkpoint_id"]
    r = await client.post(
        f"/threads/{tid}/runs/wait", headers=ALICE, json={"assistant_id": "agent", "input": None}
    )
    assert r.json()["status"] in ("done", "budget_exhausted:max_revisions", "not_found")
    assert (await client.get(f"/threads/{tid}", headers=ALICE)).json()["status"] == "idle"
    hist = (await client.post(f"/threads/{tid}/history", json={"limit": 50}, headers=ALICE)).json()
    assert hist[0]["next"] == [] and hist[-1]["parent_checkpoint"] is None
    # `before` in a POST body is a checkpoint or a config object; the GET query string takes the bare id.
    cid = hist[1]["checkpoint"]["checkpoint_id"]
    older = hist[2]["checkpoint"]["checkpoint_id"]
    for before in ({"checkpoint_id": cid}, {"configurable": {"checkpoint_id": cid}}):
        page = (
            await client.post(f"/threads/{tid}/history", json={"before": before, "limit": 2}, headers=ALICE)
        ).json()
        assert page[0]["checkpoint"]["checkpoint_id"] == older
    page = (
        await client.get(f"/threads/{tid}/history", params={"before": cid, "limit": 2}, headers=ALICE)
    ).json()
    assert page[0]["checkpoint"]["checkpoint_id"] == older
    # A bare string in the body is 422, as the reference's schema has it (docs/api.md, Thread state and history).
    r = await client.post(f"/threads/{tid}/history", json={"before": cid, "limit": 2}, headers=ALICE)
    assert r.status_code == 422 and "before" in r.json()["detail"], r.text


async def test_delete_thread_removes_runs_and_checkpoints(client, db):
    tid = await thread(client)
    await client.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": Q}, headers=ALICE)
    assert (await client.delete(f"/threads/{tid}", headers=ALICE)).status_code == 204
    async with db.pool.connection() as conn:
        for table in ("keel_runs", "checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            row = await (
                await conn.execute(f"SELECT count(*) AS n FROM {table} WHERE thread_id::text = %s", (tid,))
            ).fetchone()
            assert row["n"] == 0, table


async def test_stateless_run_leaves_no_thread(client, db):
    before = await row_counts(db)
    r = await client.post("/runs/wait", json={"assistant_id": "agent", "input": Q}, headers=ALICE)
    assert r.status_code == 200 and r.json()["messages"][-1]["type"] == "ai"
    await asyncio.sleep(0.1)
    after = await row_counts(db)
    assert after[0] == before[0], "the temporary thread is deleted (on_completion=delete)"


async def test_thread_ttl_sweep_removes_everything(client, db):
    from server.retention import sweep

    r = await client.post("/threads", json={"ttl": {"ttl": 0.005, "strategy": "delete"}}, headers=ALICE)
    tid = r.json()["thread_id"]
    keep = await thread(client)
    for t in (tid, keep):
        await client.post(
            f"/threads/{t}/runs/wait", json={"assistant_id": "agent", "input": Q}, headers=ALICE
        )
    await db.store.aput(("effects", tid), "e", {"x": 1}, index=False)
    assert (await client.post("/threads", json={"ttl": -1}, headers=ALICE)).status_code == 422
    await asyncio.sleep(0.5)
    assert tid in await sweep(db)
    assert (await client.get(f"/threads/{tid}", headers=ALICE)).status_code == 404
    async with db.pool.connection() as conn:
        for table, col in (
            ("keel_runs", "thread_id::text"),
            ("checkpoints", "thread_id"),
            ("checkpoint_writes", "thread_id"),
            ("checkpoint_blobs", "thread_id"),
        ):
            n = (
                await (
                    await conn.execute(f"SELECT count(*) AS n FROM {table} WHERE {col} = %s", (tid,))
                ).fetchone()
            )["n"]
            assert n == 0, table
        events = (
            await (
                await conn.execute(
                    "SELECT count(*) AS n FROM keel_run_events e WHERE NOT EXISTS "
                    "(SELECT 1 FROM keel_runs r WHERE r.run_id = e.run_id)"
                )
            ).fetchone()
        )["n"]
        assert events == 0, "no orphaned events"
    assert await db.store.aget(("effects", tid), "e") is None
    assert (await client.get(f"/threads/{keep}", headers=ALICE)).status_code == 200, (
        "threads without TTL stay"
    )


async def test_rollback_of_a_requeued_run_undoes_its_effects(client, db):
    """A run handed back to the queue (drain, crash) after a side effect, then cancelled with rollback:
    a worker compensates the effect before the run disappears."""
    import json as _json

    tid = await thread(client)
    rid = str(uuid.uuid4())
    async with db.pool.connection() as conn:
        ticket = await (
            await conn.execute(
                "INSERT INTO keel_tickets (owner, title, idempotency_key) VALUES ('alice', 'made before the drain', "
                "%s) RETURNING id, title, body, status, owner",
                (f"{tid}::c1",),
            )
        ).fetchone()
        # The state a drained run leaves: pending again, with a recorded, not yet compensated effect.
        await conn.execute(
            "INSERT INTO keel_runs (run_id, thread_id, assistant_id, user_id, status, kwargs, attempt) "
            "VALUES (%s, %s, %s, 'alice', 'pending', %s, 1)",
            (
                rid,
                tid,
                str(uuid.uuid5(uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8"), "agent")),
                _json.dumps(
                    {"request": {"input": None}, "user": {"id": "alice", "roles": [], "tenant": None}}
                ),
            ),
        )
        await conn.execute(
            "INSERT INTO keel_tool_ledger (key, thread_id, run_id, tool, version, args, args_hash, status, result) "
            "VALUES (%s, %s, %s, 'create_ticket', '1', %s, 'h', 'succeeded', %s)",
            (
                f"{tid}::c1",
                tid,
                rid,
                _json.dumps({"title": "made before the drain"}),
                _json.dumps(dict(ticket)),
            ),
        )
    r = await client.post(
        f"/threads/{tid}/runs/{rid}/cancel", params={"action": "rollback", "wait": 1}, headers=ALICE
    )
    assert r.status_code == 200
    for _ in range(100):
        if (await client.get(f"/threads/{tid}/runs/{rid}", headers=ALICE)).status_code == 404:
            break
        await asyncio.sleep(0.05)
    assert (await client.get(f"/threads/{tid}/runs/{rid}", headers=ALICE)).status_code == 404
    async with db.pool.connection() as conn:
        status = (
            await (
                await conn.execute("SELECT status FROM keel_tickets WHERE id = %s", (ticket["id"],))
            ).fetchone()
        )["status"]
        comp = (
            await (
                await conn.execute(
                    "SELECT compensation FROM keel_tool_ledger WHERE key = %s", (f"{tid}::c1",)
                )
            ).fetchone()
        )["compensation"]
    assert status == "cancelled" and comp == "done"
