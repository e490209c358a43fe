"""Issue 11 routes and statuses as the reference server (langgraph-api) has them, in process over the real
database: thread copy/prune/stream, runs batch and bulk cancel, DELETE of a running run, Location headers,
the store's missing key, and the state routes' statuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from agent.models import register_model, unregister_model
from server.app import create_app
from server.settings import Settings
from tests.support.inprocess import api_client, running_service
from tests.support.live import free_port
from tests.support.scripted import ScriptedChatModel

ALICE, BOB = {"x-api-key": "ka"}, {"authorization": "Bearer kb"}
Q = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}
RUN = {"assistant_id": "agent", "input": Q}
ACCEPT = {"score": 0.9, "reasons": [], "revised_query": ""}


@pytest.fixture(scope="module")
async def svc(db):
    settings = Settings(keel_api_keys="ka:alice,kb:bob")
    async with running_service(settings, db) as service:
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


async def new_thread(client, headers=ALICE) -> str:
    r = await client.post("/threads", json={}, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["thread_id"])


async def ran_thread(client, headers=ALICE) -> str:
    """A thread with one finished run (the offline model answers)."""
    tid = await new_thread(client, headers)
    r = await client.post(f"/threads/{tid}/runs/wait", json=RUN, headers=headers)
    assert r.status_code == 200 and "__error__" not in r.json(), r.text
    return tid


async def until(predicate, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def run_status(client, tid: str, rid: str) -> str | None:
    r = await client.get(f"/threads/{tid}/runs/{rid}", headers=ALICE)
    return r.json()["status"] if r.status_code == 200 else None


@contextlib.contextmanager
def gated_model(svc) -> Any:
    """Runs block in their first model call until the returned event is set."""
    gate = asyncio.Event()

    class Gated(ScriptedChatModel):
        async def _agenerate(self, messages, stop=None, run_manager=None, **kw):
            await gate.wait()
            return self._generate(messages, stop=stop, **kw)

    name = f"test:gated-{uuid.uuid4()}"
    register_model(name, Gated(["answer one", ACCEPT, "answer two", ACCEPT, "answer three", ACCEPT]))
    svc.settings.keel_model = name
    try:
        yield gate
    finally:
        gate.set()
        svc.settings.keel_model = None
        unregister_model(name)


# ------------------------------------------------------------------------------------------------ store


async def test_store_get_of_a_missing_key_is_200_null(client):
    r = await client.get(
        "/store/items", params={"namespace": "memories.parity", "key": "nope"}, headers=ALICE
    )
    assert r.status_code == 200 and r.json() is None
    r = await client.put(
        "/store/items",
        json={"namespace": ["memories", "parity"], "key": "k", "value": {"a": 1}},
        headers=ALICE,
    )
    assert r.status_code == 204
    got = await client.get("/store/items", params={"namespace": "memories.parity", "key": "k"}, headers=ALICE)
    assert got.json()["value"] == {"a": 1}
    other = await client.get("/store/items", params={"namespace": "memories.parity", "key": "k"}, headers=BOB)
    assert other.status_code == 200 and other.json() is None  # another user's item is not there for Bob


# ------------------------------------------------------------------------------------------------ state


async def test_state_at_an_unknown_checkpoint_is_an_empty_state(client):
    tid = await ran_thread(client)
    unknown = "1f0a0000-0000-6000-8000-000000000000"
    for r in (
        await client.get(f"/threads/{tid}/state/{unknown}", headers=ALICE),
        await client.post(
            f"/threads/{tid}/state/checkpoint", json={"checkpoint": {"checkpoint_id": unknown}}, headers=ALICE
        ),
    ):
        assert r.status_code == 200, r.text
        assert r.json()["values"] == {} and r.json()["next"] == [] and r.json()["tasks"] == []
        assert r.json()["metadata"] is None  # no checkpoint, no metadata: null as the reference
    # a known checkpoint still answers its state
    state = (await client.get(f"/threads/{tid}/state", headers=ALICE)).json()
    at = await client.get(f"/threads/{tid}/state/{state['checkpoint']['checkpoint_id']}", headers=ALICE)
    assert at.json()["values"] == state["values"] and state["values"]


async def test_state_update_on_a_thread_that_never_ran_is_400(client):
    tid = await new_thread(client)
    r = await client.post(f"/threads/{tid}/state", json={"values": {"answer": "x"}}, headers=ALICE)
    assert r.status_code == 400 and "no assigned graph ID" in r.json()["detail"], r.text
    assert (await client.post(f"/threads/{tid}/history", json={}, headers=ALICE)).json() == []
    ran = await ran_thread(client)
    r = await client.post(f"/threads/{ran}/state", json={"values": {"answer": "x"}}, headers=ALICE)
    assert r.status_code == 200, r.text


async def test_history_before_as_a_string_is_422_and_as_a_config_works(client):
    tid = await ran_thread(client)
    history = (await client.post(f"/threads/{tid}/history", json={"limit": 3}, headers=ALICE)).json()
    cid = history[0]["checkpoint"]["checkpoint_id"]
    r = await client.post(f"/threads/{tid}/history", json={"before": cid}, headers=ALICE)
    assert r.status_code == 422 and "before" in r.json()["detail"]
    r = await client.post(
        f"/threads/{tid}/history",
        json={"limit": 2, "before": {"configurable": {"checkpoint_id": cid}}},
        headers=ALICE,
    )
    assert r.status_code == 200 and [h["checkpoint"] for h in r.json()] == [
        h["checkpoint"] for h in history[1:3]
    ]
    r = await client.get(f"/threads/{tid}/history", params={"limit": 1, "before": cid}, headers=ALICE)
    assert r.status_code == 200 and r.json()[0]["checkpoint"] == history[1]["checkpoint"]  # GET takes the id


# ------------------------------------------------------------------------------------------------ threads


async def test_copy_thread_has_the_same_state_and_history_and_is_independent(client):
    tid = await ran_thread(client)
    await client.patch(f"/threads/{tid}", json={"metadata": {"owner": "parity"}}, headers=ALICE)
    r = await client.post(f"/threads/{tid}/copy", headers=ALICE)
    assert r.status_code == 200, r.text
    copy = r.json()
    cid = copy["thread_id"]
    assert cid != tid and copy["metadata"]["owner"] == "parity" and copy["status"] == "idle"
    assert copy["metadata"]["graph_id"] == "agent"
    orig_state = (await client.get(f"/threads/{tid}/state", headers=ALICE)).json()
    copy_state = (await client.get(f"/threads/{cid}/state", headers=ALICE)).json()
    assert copy_state["values"] == orig_state["values"] and copy_state["values"]
    assert copy_state["checkpoint"]["thread_id"] == cid
    assert copy_state["checkpoint"]["checkpoint_id"] == orig_state["checkpoint"]["checkpoint_id"]
    h1 = (await client.post(f"/threads/{tid}/history", json={"limit": 100}, headers=ALICE)).json()
    h2 = (await client.post(f"/threads/{cid}/history", json={"limit": 100}, headers=ALICE)).json()
    assert [h["values"] for h in h2] == [h["values"] for h in h1] and len(h1) > 1
    # the copy has no runs, and changing it leaves the original alone
    assert (await client.get(f"/threads/{cid}/runs", headers=ALICE)).json() == []
    r = await client.post(f"/threads/{cid}/state", json={"values": {"answer": "copy only"}}, headers=ALICE)
    assert r.status_code == 200, r.text
    assert (await client.get(f"/threads/{cid}/state", headers=ALICE)).json()["values"][
        "answer"
    ] == "copy only"
    assert (await client.get(f"/threads/{tid}/state", headers=ALICE)).json()["values"] == orig_state["values"]
    # a run continues the copy
    r = await client.post(f"/threads/{cid}/runs/wait", json=RUN, headers=ALICE)
    assert r.status_code == 200 and "__error__" not in r.json()
    # unknown, or another user's: 409, as the reference answers
    assert (await client.post(f"/threads/{uuid.uuid4()}/copy", headers=ALICE)).status_code == 409
    assert (await client.post(f"/threads/{tid}/copy", headers=BOB)).status_code == 409


async def test_prune_delete_and_keep_latest(client):
    mine, other = await ran_thread(client), await new_thread(client, BOB)
    r = await client.post(
        "/threads/prune", json={"thread_ids": [mine, other, str(uuid.uuid4())]}, headers=ALICE
    )
    assert r.status_code == 200 and r.json() == {"pruned_count": 1}
    assert (await client.get(f"/threads/{mine}", headers=ALICE)).status_code == 404
    assert (await client.get(f"/threads/{other}", headers=BOB)).status_code == 200  # not Alice's to prune

    kept = await ran_thread(client)
    before = (await client.post(f"/threads/{kept}/history", json={"limit": 100}, headers=ALICE)).json()
    assert len(before) > 1
    r = await client.post(
        "/threads/prune", json={"thread_ids": [kept], "strategy": "keep_latest"}, headers=ALICE
    )
    assert r.status_code == 200 and r.json() == {"pruned_count": 1}
    after = (await client.post(f"/threads/{kept}/history", json={"limit": 100}, headers=ALICE)).json()
    assert len(after) == 1 and after[0]["values"] == before[0]["values"]
    assert after[0]["checkpoint"] == before[0]["checkpoint"]
    assert (await client.get(f"/threads/{kept}", headers=ALICE)).status_code == 200

    assert (await client.post("/threads/prune", json={"thread_ids": []}, headers=ALICE)).json() == {
        "pruned_count": 0
    }
    r = await client.post("/threads/prune", json={"thread_ids": [], "strategy": "x"}, headers=ALICE)
    assert r.status_code == 422 and "strategy" in r.json()["detail"]
    r = await client.post("/threads/prune", json={"thread_ids": ["not-a-uuid"]}, headers=ALICE)
    assert r.status_code == 422


# ------------------------------------------------------------------------------------------------ runs


async def test_wait_and_join_set_location_headers(client):
    r = await client.post("/runs/wait", json=RUN, headers=ALICE)
    assert r.status_code == 200
    base = r.headers["content-location"]
    assert base.startswith("/threads/") and r.headers["location"] == base + "/join"
    tid = await new_thread(client)
    r = await client.post(f"/threads/{tid}/runs/wait", json=RUN, headers=ALICE)
    base = r.headers["content-location"]
    assert base.startswith(f"/threads/{tid}/runs/") and r.headers["location"] == base + "/join"
    r = await client.get(base + "/join", headers=ALICE)
    assert r.status_code == 200 and r.headers["content-location"] == base
    assert r.headers["location"] == base + "/join"


async def test_batch_creates_stateless_runs_all_or_none(client, db):
    keep = {**RUN, "on_completion": "keep"}  # the temporary threads stay, to join the runs
    r = await client.post("/runs/batch", json=[keep, {**keep, "metadata": {"n": 2}}], headers=ALICE)
    assert r.status_code == 200, r.text
    runs = r.json()
    assert len(runs) == 2 and runs[0]["thread_id"] != runs[1]["thread_id"]
    assert runs[1]["metadata"]["n"] == 2 and all(x["status"] == "pending" for x in runs)
    for run in runs:
        out = await client.get(f"/threads/{run['thread_id']}/runs/{run['run_id']}/join", headers=ALICE)
        assert out.status_code == 200 and "__error__" not in out.json()
    assert (await client.post("/runs/batch", json=[], headers=ALICE)).status_code == 422
    async with db.pool.connection() as conn:
        count = "SELECT count(*) AS n FROM keel_runs"
        n = (await (await conn.execute(count)).fetchone())["n"]
        r = await client.post("/runs/batch", json=[RUN, {"assistant_id": "nope", "input": Q}], headers=ALICE)
        assert r.status_code == 422, r.text
        assert (await (await conn.execute(count)).fetchone())["n"] == n, "a refused batch records no run"


async def test_bulk_cancel_by_ids_and_by_status(client, svc):
    bad = [
        ({"status": "sleeping"}, "Invalid status"),
        ({"status": "pending", "thread_id": str(uuid.uuid4())}, "must be omitted"),
        ({}, "Must provide"),
        ({"thread_id": str(uuid.uuid4())}, "Must provide"),
    ]
    for body, detail in bad:
        r = await client.post("/runs/cancel", json=body, headers=ALICE)
        assert r.status_code == 422 and detail in r.json()["detail"], (body, r.text)
    with gated_model(svc) as gate:
        tid = await new_thread(client)
        first = (await client.post(f"/threads/{tid}/runs", json=RUN, headers=ALICE)).json()["run_id"]
        second = (await client.post(f"/threads/{tid}/runs", json=RUN, headers=ALICE)).json()["run_id"]
        await until(lambda: _is(client, tid, first, "running"), "the first run to start")
        # Bob cannot cancel Alice's runs by status: he has none
        r = await client.post("/runs/cancel", json={"status": "all"}, headers=BOB)
        assert r.status_code == 404
        r = await client.post(
            "/runs/cancel", json={"thread_id": tid, "run_ids": [first, second]}, headers=ALICE
        )
        assert r.status_code == 204, r.text
        await until(lambda: _is(client, tid, first, "interrupted"), "the running run to stop")
        assert await run_status(client, tid, second) == "interrupted"
        # finished runs: nothing to cancel, 404 as the reference
        r = await client.post("/runs/cancel", json={"thread_id": tid, "run_ids": [first]}, headers=ALICE)
        assert r.status_code == 404 and "No matching runs" in r.json()["detail"]
        r = await client.post(f"/threads/{tid}/runs/{first}/cancel", headers=ALICE)
        assert r.status_code == 404
        # by status: every pending run of the caller
        other = await new_thread(client)
        third = (await client.post(f"/threads/{other}/runs", json=RUN, headers=ALICE)).json()["run_id"]
        fourth = (await client.post(f"/threads/{other}/runs", json=RUN, headers=ALICE)).json()["run_id"]
        await until(lambda: _is(client, other, third, "running"), "the third run to start")
        r = await client.post("/runs/cancel?action=interrupt", json={"status": "pending"}, headers=ALICE)
        assert r.status_code == 204
        assert await run_status(client, other, fourth) == "interrupted"
        assert await run_status(client, other, third) == "running"
        gate.set()
        await until(lambda: _is(client, other, third, "success"), "the third run to finish")


async def _is(client, tid: str, rid: str, status: str) -> bool:
    return await run_status(client, tid, rid) == status


async def test_delete_of_a_running_run_cancels_then_deletes_it(client, svc):
    tid = await ran_thread(client)
    state = (await client.get(f"/threads/{tid}/state", headers=ALICE)).json()
    with gated_model(svc):
        rid = (await client.post(f"/threads/{tid}/runs", json=RUN, headers=ALICE)).json()["run_id"]
        await until(lambda: _is(client, tid, rid, "running"), "the run to start")
        r = await client.delete(f"/threads/{tid}/runs/{rid}", headers=ALICE)
        assert r.status_code == 204, r.text
        assert (await client.get(f"/threads/{tid}/runs/{rid}", headers=ALICE)).status_code == 404
        thread = (await client.get(f"/threads/{tid}", headers=ALICE)).json()
        assert thread["status"] == "idle"
        after = (await client.get(f"/threads/{tid}/state", headers=ALICE)).json()
        assert after["checkpoint"] == state["checkpoint"], "the deleted run's checkpoints are rolled back"


# ------------------------------------------------------------------------------------------------ thread stream


@contextlib.asynccontextmanager
async def served(svc) -> AsyncIterator[str]:
    """The app over a real socket (ASGITransport buffers whole responses; a thread stream never ends)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(svc.settings, svc), port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: _started(server), "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _started(server: uvicorn.Server) -> bool:
    return bool(server.started)


class SSE:
    """Reads a server-sent event stream: comments and events, as they arrive."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self.lines = lines
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []

    async def read(self) -> None:
        event: dict[str, Any] = {}
        async for line in self.lines:
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif not line:
                if event:
                    self.events.append(event)
                event = {}
            else:
                key, _, value = line.partition(":")
                event[key] = value.strip() if key != "data" else json.loads(value)


@contextlib.asynccontextmanager
async def thread_stream(url: str, tid: str, headers: dict[str, str] | None = None, **params: str):
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        req = http.stream(
            "GET", f"/threads/{tid}/stream", headers={**ALICE, **(headers or {})}, params=params
        )
        async with req as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            sse = SSE(r.aiter_lines())
            task = asyncio.create_task(sse.read())
            try:
                await until(lambda: _true(sse.comments), "the stream to join")
                yield sse
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def _true(value: Any) -> bool:
    return bool(value)


async def _logged(svc, rid: str) -> bool:
    async with svc.db.pool.connection() as conn:
        row = await (
            await conn.execute("SELECT count(*) AS n FROM keel_run_events WHERE run_id = %s", (rid,))
        ).fetchone()
    return bool(row["n"])


def run_done(sse: SSE, rid: str) -> Any:
    async def check() -> bool:
        return any(e.get("id") == f"{rid}:done" for e in sse.events)

    return check


async def test_thread_stream_sends_live_run_events_and_resumes_after_last_event_id(client, svc):
    tid = await ran_thread(client)  # a finished run: not replayed without Last-Event-ID
    old = (await client.get(f"/threads/{tid}/runs", headers=ALICE)).json()[0]["run_id"]
    async with served(svc) as url:
        with gated_model(svc) as gate:
            first = (await client.post(f"/threads/{tid}/runs", json=RUN, headers=ALICE)).json()["run_id"]
            await until(lambda: _logged(svc, first), "the run to log its first event")
            async with thread_stream(url, tid) as sse:
                gate.set()  # the run in progress: its events from now on, then run_done
                await until(run_done(sse, first), "the first run's run_done")
                r = await client.post(f"/threads/{tid}/runs/wait", json=RUN, headers=ALICE)
                second = r.headers["content-location"].rsplit("/", 1)[1]
                await until(run_done(sse, second), "the second run's run_done")
        assert not any(e["id"].startswith(old) for e in sse.events), "a finished run is not replayed"
        names = [e["event"] for e in sse.events]
        assert "end" not in names and "values" in names
        assert sse.events[0]["id"].startswith(first) and sse.events[0]["id"] != f"{first}:1"
        done = next(i for i, e in enumerate(sse.events) if e["id"] == f"{first}:done")
        assert sse.events[done]["event"] == "metadata"
        assert sse.events[done]["data"] == {"status": "run_done", "run_id": first}
        rest = sse.events[done + 1 :]
        assert (
            rest[0]["event"] == "metadata"
            and rest[0]["data"]["run_id"] == second
            and rest[0]["id"] == f"{second}:1"
        )
        assert rest[-1]["data"] == {"status": "run_done", "run_id": second}
        # resume after the first event of the second run: the rest of it, in order, then its run_done
        async with thread_stream(url, tid, {"last-event-id": f"{second}:1"}) as resumed:
            await until(run_done(resumed, second), "the resumed run_done")
        assert [(e["event"], e["id"]) for e in resumed.events] == [(e["event"], e["id"]) for e in rest[1:]]
        # lifecycle only, from the old run on: each run's start and run_done
        async with thread_stream(url, tid, {"last-event-id": f"{old}:1"}, stream_modes="lifecycle") as life:
            await until(run_done(life, second), "the lifecycle events")
        assert [e["id"] for e in life.events] == [
            f"{old}:done",
            f"{first}:1",
            f"{first}:done",
            f"{second}:1",
            f"{second}:done",
        ]
    r = await client.get(f"/threads/{uuid.uuid4()}/stream", headers=ALICE)
    assert r.status_code == 404
    r = await client.get(f"/threads/{tid}/stream", headers=BOB)
    assert r.status_code == 404
    r = await client.get(f"/threads/{tid}/stream", params={"stream_modes": "nope"}, headers=ALICE)
    assert r.status_code == 422 and r.json()["detail"] == "Invalid stream mode: nope"
    r = await client.get(f"/threads/{tid}/stream", headers={**ALICE, "last-event-id": "garbage"})
    assert r.status_code == 422
