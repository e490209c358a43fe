"""Crons over HTTP in process, on the real database: CRUD, search and count, ownership, validation, firing."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from server.crons import store as cron_store
from server.crons.scheduler import BACKGROUND_MODES
from server.routes.runs import BACKGROUND_MODES as ROUTE_BACKGROUND_MODES
from server.settings import Settings
from tests.support.inprocess import api_client, running_service

ALICE, BOB = {"x-api-key": "ka"}, {"x-api-key": "kb"}
Q = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}
YEARLY = "0 0 1 1 *"  # never due during a test unless a test makes it due


@pytest.fixture(scope="module")
async def svc(db):
    settings = Settings(keel_api_keys="ka:alice,kb:bob", keel_cron_poll_seconds=0.2)
    async with running_service(settings, db) as service:
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


async def thread(client, headers=ALICE) -> str:
    r = await client.post("/threads", json={}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["thread_id"]


async def cron(client, path="/runs/crons", headers=ALICE, **body) -> dict:
    r = await client.post(path, json={"assistant_id": "agent", "schedule": YEARLY, **body}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def make_due(db, cron_id: str) -> None:
    async with db.pool.connection() as conn:
        assert await cron_store.set_next_run_at(conn, cron_id, datetime.now(UTC) - timedelta(minutes=5))


async def cron_runs(db, cron_id: str) -> list[dict]:
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT run_id::text, thread_id::text, status, metadata, kwargs FROM keel_runs "
            "WHERE kwargs->'config'->'configurable'->>'cron_id' = %s ORDER BY created_at",
            (cron_id,),
        )
        return await cur.fetchall()


async def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_cron_runs_record_the_same_modes_as_background_runs():
    assert list(BACKGROUND_MODES) == list(ROUTE_BACKGROUND_MODES)


async def test_info_announces_crons(client):
    assert (await client.get("/info")).json()["flags"]["crons"] is True


async def test_create_get_and_shape(client):
    before = datetime.now(UTC)
    c = await cron(client, schedule="*/5 * * * *", input=Q, metadata={"team": "ops"})
    assert set(c) == {
        "cron_id",
        "assistant_id",
        "thread_id",
        "on_run_completed",
        "end_time",
        "schedule",
        "timezone",
        "created_at",
        "updated_at",
        "user_id",
        "payload",
        "next_run_date",
        "metadata",
        "enabled",
    }
    assert c["thread_id"] is None and c["on_run_completed"] == "delete" and c["enabled"] is True
    assert c["user_id"] == "alice" and c["metadata"] == {"team": "ops"} and c["timezone"] is None
    assert c["assistant_id"] == str(uuid.uuid5(uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8"), "agent"))
    nxt = datetime.fromisoformat(c["next_run_date"])
    assert before < nxt <= before + timedelta(minutes=5) and nxt.minute % 5 == 0 and nxt.second == 0
    assert c["payload"]["input"] == Q and c["payload"]["assistant_id"] == c["assistant_id"]
    assert c["payload"]["config"]["configurable"]["cron_id"] == c["cron_id"]
    got = await client.get(f"/runs/crons/{c['cron_id']}", headers=ALICE)
    assert got.status_code == 200 and got.json() == c


async def test_timezone_sets_the_ticks(client):
    c = await cron(client, schedule="0 9 * * *", timezone="Asia/Kolkata")  # 09:00 IST is 03:30 UTC
    nxt = datetime.fromisoformat(c["next_run_date"]).astimezone(UTC)
    assert (nxt.hour, nxt.minute) == (3, 30) and c["timezone"] == "Asia/Kolkata"


async def test_thread_cron_and_ownership(client):
    tid = await thread(client)
    c = await cron(client, f"/threads/{tid}/runs/crons", metadata={"k": "thread"})
    assert c["thread_id"] == tid and c["on_run_completed"] is None
    cid = c["cron_id"]
    # Bob sees nothing of Alice's crons, and cannot schedule on her thread.
    assert (await client.get(f"/runs/crons/{cid}", headers=BOB)).status_code == 404
    assert (await client.patch(f"/runs/crons/{cid}", json={"enabled": False}, headers=BOB)).status_code == 404
    assert (await client.delete(f"/runs/crons/{cid}", headers=BOB)).status_code == 404
    assert (await client.post("/runs/crons/search", json={"thread_id": tid}, headers=BOB)).json() == []
    assert (await client.post("/runs/crons/count", json={"thread_id": tid}, headers=BOB)).json() == 0
    r = await client.post(
        f"/threads/{tid}/runs/crons", json={"assistant_id": "agent", "schedule": YEARLY}, headers=BOB
    )
    assert r.status_code == 404 and r.json() == {"detail": f"Thread with ID {tid} not found"}
    assert (await client.post("/runs/crons/count", json={"thread_id": tid}, headers=ALICE)).json() == 1
    assert (await client.get(f"/runs/crons/{cid}", headers=ALICE)).json()["enabled"] is True
    # A thread's crons go with the thread.
    assert (await client.delete(f"/threads/{tid}", headers=ALICE)).status_code == 204
    assert (await client.get(f"/runs/crons/{cid}", headers=ALICE)).status_code == 404


UNKNOWN = str(uuid.uuid4())


@pytest.mark.parametrize(
    "method,path,body,status,detail",
    [
        (
            "post",
            "/runs/crons",
            {"assistant_id": "agent", "schedule": "every minute"},
            422,
            "Invalid cron schedule",
        ),
        (
            "post",
            "/runs/crons",
            {"assistant_id": "agent", "schedule": "61 * * * *"},
            422,
            "Invalid cron schedule",
        ),
        ("post", "/runs/crons", {"assistant_id": "agent", "schedule": "0 0 30 2 *"}, 422, "never fires"),
        (
            "post",
            "/runs/crons",
            {"assistant_id": "agent", "schedule": YEARLY, "timezone": "America"},
            422,
            "timezone",
        ),
        (
            "post",
            "/runs/crons",
            {"assistant_id": "nope", "schedule": YEARLY},
            404,
            "Assistant 'nope' not found",
        ),
        ("post", "/runs/crons", {"assistant_id": UNKNOWN, "schedule": YEARLY}, 404, "not found"),
        ("post", "/runs/crons", {"assistant_id": "agent"}, 422, "schedule"),
        ("post", "/runs/crons", {"schedule": YEARLY}, 422, "assistant_id"),
        (
            "post",
            "/runs/crons",
            {"assistant_id": "agent", "schedule": YEARLY, "timezone": "Mars/Base"},
            422,
            "timezone",
        ),
        (
            "post",
            "/runs/crons",
            {"assistant_id": "agent", "schedule": YEARLY, "on_run_completed": "x"},
            422,
            None,
        ),
        (
            "post",
            "/runs/crons",
            {"assistant_id": "agent", "schedule": YEARLY, "stream_mode": "bogus"},
            422,
            None,
        ),
        (
            "post",
            "/runs/crons",
            {"assistant_id": "agent", "schedule": YEARLY, "context": {"user_id": "mallory"}},
            422,
            "context.user_id",
        ),
        ("post", f"/threads/{UNKNOWN}/runs/crons", {"assistant_id": "agent", "schedule": YEARLY}, 404, None),
        ("post", "/threads/nope/runs/crons", {"assistant_id": "agent", "schedule": YEARLY}, 422, "thread ID"),
        ("post", "/runs/crons/search", {"assistant_id": "nope"}, 422, "assistant ID"),
        ("post", "/runs/crons/search", {"select": ["cron_id", "secret"]}, 422, "Invalid select columns"),
        ("post", "/runs/crons/search", {"sort_by": "schedule"}, 422, None),
        ("post", "/runs/crons/count", {"thread_id": "nope"}, 422, "thread ID"),
        ("get", f"/runs/crons/{UNKNOWN}", None, 404, "not found"),
        ("get", "/runs/crons/nope", None, 422, "cron ID"),
        ("patch", f"/runs/crons/{UNKNOWN}", {"enabled": False}, 404, "not found"),
        ("delete", f"/runs/crons/{UNKNOWN}", None, 404, "not found"),
    ],
)
async def test_validation(client, method, path, body, status, detail):
    kwargs = {"json": body} if body is not None else {}
    r = await client.request(method.upper(), path, headers=ALICE, **kwargs)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str)
    if detail:
        assert detail in r.json()["detail"]


async def test_patch(client):
    c = await cron(client, input=Q, metadata={"a": 1}, end_time="2099-01-01T00:00:00+00:00")
    cid = c["cron_id"]
    empty = await client.patch(f"/runs/crons/{cid}", json={}, headers=ALICE)
    assert empty.status_code == 400 and empty.json() == {"detail": "Request body cannot be empty"}
    bad = await client.patch(f"/runs/crons/{cid}", json={"schedule": "nope"}, headers=ALICE)
    assert bad.status_code == 422
    r = await client.patch(
        f"/runs/crons/{cid}",
        json={"schedule": "*/10 * * * *", "enabled": False, "metadata": {"b": 2}, "input": {"messages": []}},
        headers=ALICE,
    )
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["schedule"] == "*/10 * * * *" and p["enabled"] is False
    assert p["metadata"] == {"a": 1, "b": 2}
    assert p["payload"]["input"] == {"messages": []}
    assert p["payload"]["config"]["configurable"]["cron_id"] == cid
    assert datetime.fromisoformat(p["next_run_date"]).minute % 10 == 0
    assert p["end_time"] is not None and p["updated_at"] > c["updated_at"]
    cleared = (await client.patch(f"/runs/crons/{cid}", json={"end_time": None}, headers=ALICE)).json()
    assert cleared["end_time"] is None and cleared["schedule"] == "*/10 * * * *"
    assert (await client.get(f"/runs/crons/{cid}", headers=ALICE)).json() == cleared


async def test_search_count_filters_and_pages(client):
    tag = {"suite": str(uuid.uuid4())}
    tid = await thread(client)
    made = [await cron(client, metadata={**tag, "i": i}) for i in range(3)]
    made.append(await cron(client, f"/threads/{tid}/runs/crons", metadata={**tag, "i": 3}, enabled=False))
    await cron(client, metadata=tag, headers=BOB)  # Bob's: never in Alice's answers

    async def search(**body):
        r = await client.post("/runs/crons/search", json={"metadata": tag, **body}, headers=ALICE)
        assert r.status_code == 200, r.text
        return r

    everything = (await search()).json()
    assert [c["cron_id"] for c in everything] == [c["cron_id"] for c in reversed(made)]  # newest first
    assert (await client.post("/runs/crons/count", json={"metadata": tag}, headers=ALICE)).json() == 4
    assert [c["cron_id"] for c in (await search(thread_id=tid)).json()] == [made[3]["cron_id"]]
    assert (await client.post("/runs/crons/count", json={"thread_id": tid}, headers=ALICE)).json() == 1
    assert len((await search(enabled=True)).json()) == 3
    assert [c["cron_id"] for c in (await search(enabled=False)).json()] == [made[3]["cron_id"]]
    assert len((await search(assistant_id=made[0]["assistant_id"])).json()) == 4
    assert len((await search(assistant_id="agent")).json()) == 4  # a graph name works as in runs (Keel)
    assert (await search(assistant_id=str(uuid.uuid4()))).json() == []
    assert (await search(metadata={**tag, "i": 1})).json()[0]["cron_id"] == made[1]["cron_id"]
    first = await search(limit=3, sort_by="created_at", sort_order="asc")
    assert [c["cron_id"] for c in first.json()] == [c["cron_id"] for c in made[:3]]
    assert first.headers["x-pagination-next"] == "3" and first.headers["x-pagination-total"] == "4"
    last = await search(limit=3, offset=3, sort_by="created_at", sort_order="asc")
    assert [c["cron_id"] for c in last.json()] == [made[3]["cron_id"]]
    assert "x-pagination-next" not in last.headers and last.headers["x-pagination-total"] == "4"
    picked = (await search(select=["cron_id", "schedule"], limit=1)).json()
    assert picked == [{"cron_id": made[3]["cron_id"], "schedule": YEARLY}]
    by_next = (await search(sort_by="next_run_date", sort_order="asc")).json()
    assert [c["next_run_date"] for c in by_next] == sorted(c["next_run_date"] for c in by_next)
    assert (await client.delete(f"/runs/crons/{made[0]['cron_id']}", headers=ALICE)).status_code == 204
    assert (await client.delete(f"/runs/crons/{made[0]['cron_id']}", headers=ALICE)).status_code == 404
    assert (await client.post("/runs/crons/count", json={"metadata": tag}, headers=ALICE)).json() == 3


async def test_a_due_stateless_cron_fires_once_on_a_new_thread_that_it_keeps(client, db):
    c = await cron(client, input=Q, metadata={"origin": "cron"}, on_run_completed="keep")
    await make_due(db, c["cron_id"])
    runs = await wait_for(lambda: cron_runs(db, c["cron_id"]), what="the cron's run")
    assert len(runs) == 1
    run = runs[0]
    assert run["metadata"]["origin"] == "cron" and run["kwargs"]["temporary"] is True
    assert run["kwargs"]["stream_mode"] == ["values"]
    r = await client.get(f"/runs/crons/{c['cron_id']}", headers=ALICE)
    assert datetime.fromisoformat(r.json()["next_run_date"]) > datetime.now(UTC) + timedelta(days=1)
    done = await client.get(f"/threads/{run['thread_id']}/runs/{run['run_id']}/join", headers=ALICE)
    assert done.status_code == 200 and "messages" in done.json()
    assert (await client.get(f"/threads/{run['thread_id']}", headers=ALICE)).status_code == 200  # kept
    assert len(await cron_runs(db, c["cron_id"])) == 1


async def test_on_run_completed_delete_removes_the_runs_thread(client, db):
    c = await cron(client, input=Q)
    await make_due(db, c["cron_id"])
    (run,) = await wait_for(lambda: cron_runs(db, c["cron_id"]), what="the cron's run")

    async def finished_and_gone():
        runs = await cron_runs(db, c["cron_id"])
        gone = (await client.get(f"/threads/{run['thread_id']}", headers=ALICE)).status_code == 404
        return runs[0]["status"] == "success" and gone

    await wait_for(finished_and_gone, what="the run's temporary thread to be deleted")


async def test_a_thread_cron_runs_on_its_thread(client, db):
    tid = await thread(client)
    c = await cron(client, f"/threads/{tid}/runs/crons", input=Q)
    await make_due(db, c["cron_id"])
    (run,) = await wait_for(lambda: cron_runs(db, c["cron_id"]), what="the cron's run")
    assert run["thread_id"] == tid and run["kwargs"]["temporary"] is False
    listed = (await client.get(f"/threads/{tid}/runs", headers=ALICE)).json()
    assert [r["run_id"] for r in listed] == [run["run_id"]]


async def test_disabled_and_ended_crons_do_not_fire(client, db, svc):
    off = await cron(client, input=Q, enabled=False)
    ended = await cron(client, input=Q)
    async with db.pool.connection() as conn:
        await conn.execute(
            "UPDATE keel_crons SET end_time = now() - interval '1 minute' WHERE cron_id = %s",
            (ended["cron_id"],),
        )
    await make_due(db, off["cron_id"])
    await make_due(db, ended["cron_id"])
    on = await cron(client, input=Q)
    await make_due(db, on["cron_id"])
    # Once the enabled one has fired, every scheduler poll since has seen the other two as well.
    await wait_for(lambda: cron_runs(db, on["cron_id"]), what="the enabled cron's run")
    await svc.crons.tick()
    assert await cron_runs(db, off["cron_id"]) == [] and await cron_runs(db, ended["cron_id"]) == []
    # Enabling it again makes it fire (its overdue tick counts once).
    r = await client.patch(f"/runs/crons/{off['cron_id']}", json={"enabled": True}, headers=ALICE)
    assert r.status_code == 200
    assert len(await wait_for(lambda: cron_runs(db, off["cron_id"]), what="the re-enabled cron's run")) == 1


async def test_a_refused_run_is_logged_and_the_schedule_moves_on(client, db, caplog):
    c = await cron(client, input=Q)
    async with (
        db.pool.connection() as conn
    ):  # a payload POST /runs would refuse (422): only a direct write does this
        await conn.execute(
            'UPDATE keel_crons SET payload = payload || \'{"context": {"user_id": "mallory"}}\' '
            "WHERE cron_id = %s",
            (c["cron_id"],),
        )
    await make_due(db, c["cron_id"])

    async def advanced():
        r = await client.get(f"/runs/crons/{c['cron_id']}", headers=ALICE)
        return datetime.fromisoformat(r.json()["next_run_date"]) > datetime.now(UTC)

    with caplog.at_level("WARNING", logger="keel.crons"):
        await wait_for(advanced, what="the refused tick to be passed")
    assert await cron_runs(db, c["cron_id"]) == []
    assert any(c["cron_id"] in m and "422" in m for m in caplog.messages), caplog.messages
