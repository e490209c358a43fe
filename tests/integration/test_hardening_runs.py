"""The run engine under hostile timing (issue 9): a cancel or interrupt at any instant, housekeeping after a
run, a run that completed before its worker died, an unknown checkpoint id, database internals in errors.

In process (ASGI client, in-process worker) on the real embedded Postgres, with the 4-node fault graph.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from server.settings import Settings
from tests.support.cluster import PLAIN, TERMINAL, assert_event_log
from tests.support.inprocess import api_client, running_service

KEEP = 5  # checkpoints kept per thread in this module


class Sql:
    """What assert_event_log needs: `sql(query, *args)` on the test database."""

    def __init__(self, url: str) -> None:
        self.url = url

    def sql(self, query: str, *args: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(query, args).fetchall()

    async def run(self, statement: str) -> None:
        """DDL, off the event loop: it waits for the in-process worker's transactions, which need the loop."""

        def run() -> None:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(statement)

        await asyncio.to_thread(run)


@pytest.fixture(scope="module")
async def svc(db):
    settings = Settings(
        keel_graph="tests.support.fault_graph:build",
        keel_lease_seconds=1.0,
        keel_keep_checkpoints=KEEP,
        keel_max_attempts=3,
    )
    async with running_service(settings, db, workers=4) as service:
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


@pytest.fixture(scope="module")
def pg(database_url):
    return Sql(database_url)


def assert_one_chain(pg: Sql, tid: str) -> None:
    """One linear checkpoint history (the oldest kept one may have lost its parent to trimming)."""
    rows = pg.sql(
        "SELECT checkpoint_id, parent_checkpoint_id AS parent FROM checkpoints WHERE thread_id = %s "
        "AND checkpoint_ns = '' ORDER BY checkpoint_id",
        tid,
    )
    ids = {r["checkpoint_id"] for r in rows}
    heads = [r for r in rows if r["parent"] not in ids]
    assert len(heads) <= 1, f"thread {tid}: {len(heads)} separate histories"
    parents = [r["parent"] for r in rows if r["parent"] in ids]
    assert len(parents) == len(set(parents)), f"thread {tid}: the checkpoint history forks"


async def new_thread(client) -> str:
    r = await client.post("/threads", json={})
    assert r.status_code == 200, r.text
    return r.json()["thread_id"]


def body(plan: dict | None = None, tag: str = "x", **extra: Any) -> dict[str, Any]:
    return {"assistant_id": "agent", "input": {"plan": plan or {}, "inputs": [tag]}, **PLAIN, **extra}


async def wait_terminal(client, tid: str, rid: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(f"/threads/{tid}/runs/{rid}")
        if r.status_code == 404:
            return {"status": "deleted"}
        run = r.json()
        if run["status"] in TERMINAL:
            return run
        assert time.monotonic() < deadline, f"run {rid} still {run['status']} after {timeout}s"
        await asyncio.sleep(0.05)


async def wait_released(svc, rid: str, timeout: float = 15) -> None:
    """Until the in-process worker no longer holds the run (its post-finish housekeeping is over too)."""
    deadline = time.monotonic() + timeout
    while rid in svc.worker.handles:
        assert time.monotonic() < deadline, f"worker still holds run {rid}"
        await asyncio.sleep(0.01)


async def assert_thread_usable(client, pg, tid: str) -> None:
    """Not left busy; a following run completes and leaves the thread idle; one chain, gap-free logs."""
    thread = (await client.get(f"/threads/{tid}")).json()
    assert thread["status"] != "busy", thread
    r = await client.post(f"/threads/{tid}/runs/wait", json=body(tag="after"))
    assert r.status_code == 200 and r.json()["log"][-4:] == ["a", "b", "c", "d"], r.text
    assert (await client.get(f"/threads/{tid}")).json()["status"] == "idle"
    assert_one_chain(pg, tid)
    for row in pg.sql("SELECT run_id::text, status, lease_owner FROM keel_runs WHERE thread_id = %s", tid):
        assert row["status"] in TERMINAL and row["lease_owner"] is None, row
        assert_event_log(pg, row["run_id"], row["status"])


# ------------------------------------------------------------------------------ 1. cancel at any instant


async def test_cancel_right_after_create_always_ends_the_run(client, svc, pg):
    """Create + cancel at once, many times, with the cancel landing before, while and after the worker prepares."""
    rng = random.Random(9)
    runs = []
    for _ in range(24):
        tid = await new_thread(client)
        r = await client.post(f"/threads/{tid}/runs", json=body({"b": {"sleep": 0.05}}))
        assert r.status_code == 200, r.text
        rid = r.json()["run_id"]
        await asyncio.sleep(rng.choice([0, 0, 0.001, 0.003, 0.01, 0.03]))
        r = await client.post(f"/threads/{tid}/runs/{rid}/cancel", params={"action": "interrupt"})
        assert r.status_code in (200, 404, 409), r.text
        runs.append((tid, rid))
    for tid, rid in runs:
        run = await wait_terminal(client, tid, rid)
        assert run["status"] in ("interrupted", "success"), run
    for tid, _ in runs:
        await assert_thread_usable(client, pg, tid)


async def test_multitask_interrupt_bursts_end_every_run(client, svc, pg):
    """Each run of a burst interrupts the one before it, at whatever instant that one has reached."""
    for burst in range(6):
        tid = await new_thread(client)
        rids = []
        for i in range(5):
            r = await client.post(
                f"/threads/{tid}/runs",
                json=body({"b": {"sleep": 0.02}}, tag=f"{burst}-{i}", multitask_strategy="interrupt"),
            )
            assert r.status_code == 200, r.text
            rids.append(r.json()["run_id"])
        outcomes = [(await wait_terminal(client, tid, rid))["status"] for rid in rids]
        assert outcomes[-1] == "success", outcomes
        assert all(o in ("interrupted", "success") for o in outcomes), outcomes
        await assert_thread_usable(client, pg, tid)


async def test_rollback_before_the_run_started_keeps_earlier_history(client, svc, pg):
    """A rollback cancel that lands before the run recorded where it started must not touch older checkpoints."""
    for _ in range(8):
        tid = await new_thread(client)
        r = await client.post(f"/threads/{tid}/runs/wait", json=body(tag="kept"))
        assert r.json()["inputs"] == ["kept"]
        r = await client.post(f"/threads/{tid}/runs", json=body(tag="dropped"))
        rid = r.json()["run_id"]
        await client.post(f"/threads/{tid}/runs/{rid}/cancel", params={"action": "rollback"})
        run = await wait_terminal(client, tid, rid)
        state = (await client.get(f"/threads/{tid}/state")).json()
        if run["status"] == "deleted":
            assert state["values"]["inputs"] == ["kept"], state["values"]
            assert state["values"]["log"] == ["a", "b", "c", "d"], state["values"]
        else:
            assert run["status"] == "success", run
        await assert_thread_usable(client, pg, tid)


async def waiting_on_lock(pg: Sql, query_prefix: str, timeout: float = 15) -> None:
    """Until a backend of this database waits for a lock in a statement starting with `query_prefix`."""
    deadline = time.monotonic() + timeout
    while not pg.sql(
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
        "AND query LIKE %s",
        query_prefix + "%",
    ):
        assert time.monotonic() < deadline, f"nothing waits in {query_prefix!r}"
        await asyncio.sleep(0.01)


async def test_cancel_while_a_failed_run_undoes_its_effects(client, svc, pg, database_url, tmp_path):
    """A run fails after two side effects and is cancelled in the middle of undoing them (row and table locks
    stop it first before it marks itself compensating, then inside its first compensation): it finishes the
    undo, then ends in error (interrupt) or is deleted (rollback). Each effect is undone exactly once."""
    from tests.support.fault_graph import _TABLE as EFFECTS_TABLE

    await pg.run(EFFECTS_TABLE)
    for action in ("interrupt", "rollback"):
        marker = tmp_path / action
        plan = {
            "a": {"sleep": 0.3, "touch": str(marker)},
            "b": {"effects": [{"id": "s1"}, {"id": "s2"}], "fail": True},
        }
        tid = await new_thread(client)
        rid = (await client.post(f"/threads/{tid}/runs", json=body(plan))).json()["run_id"]
        deadline = time.monotonic() + 15
        while not marker.exists():
            assert time.monotonic() < deadline, "node a never started"
            await asyncio.sleep(0.005)
        async with (
            await psycopg.AsyncConnection.connect(database_url) as row_lock,
            await psycopg.AsyncConnection.connect(database_url) as table_lock,
        ):
            await row_lock.execute("SELECT 1 FROM keel_runs WHERE run_id = %s FOR NO KEY UPDATE", (rid,))
            await waiting_on_lock(pg, "UPDATE keel_runs SET compensating")  # b acted and failed
            await table_lock.execute("LOCK TABLE fault_effects IN EXCLUSIVE MODE")
            await row_lock.rollback()
            await waiting_on_lock(pg, "INSERT INTO fault_effects")  # inside the first compensation
            r = await client.post(f"/threads/{tid}/runs/{rid}/cancel", params={"action": action})
            assert r.status_code == 200, r.text
            while (h := svc.worker.handles.get(rid)) is not None and h.cancel != action:
                assert time.monotonic() < deadline, "the worker never heard of the cancel"
                await asyncio.sleep(0.005)
            await table_lock.rollback()
        run = await wait_terminal(client, tid, rid)
        if action == "interrupt":
            assert run["status"] == "error" and "injected permanent failure" in run["error"]["message"], run
        else:
            assert run["status"] == "deleted", run
            assert (await client.get(f"/threads/{tid}/state")).json()["values"] == {}
        ledger = pg.sql("SELECT status, compensation FROM keel_tool_ledger WHERE thread_id = %s", tid)
        assert [(r["status"], r["compensation"]) for r in ledger] == [("succeeded", "done")] * 2, ledger
        undone = pg.sql(
            "SELECT key FROM fault_effects WHERE key LIKE %s AND kind = 'compensation'", f"{tid}%"
        )
        assert sorted(k["key"][-2:] for k in undone) == ["s1", "s2"], undone
        await assert_thread_usable(client, pg, tid)


# ------------------------------------------------------------------------------ 8. housekeeping after finish


async def test_housekeeping_after_finish_is_never_cut_short(client, svc, pg):
    """Every run trims its thread to KEEP checkpoints and every stateless run deletes its temporary thread,
    although the lease heartbeat (every 0.25 s here) sees each run disappear from `running` meanwhile."""

    async def thread_runs(n: int) -> None:
        tid = await new_thread(client)
        for i in range(n):
            r = await client.post(f"/threads/{tid}/runs/wait", json=body(tag=str(i)))
            assert r.status_code == 200 and r.json()["log"] == ["a", "b", "c", "d"] * (i + 1), r.text
            await wait_released(svc, r.headers["content-location"].split("/")[-1])
            kept = pg.sql(
                "SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''", tid
            )[0]["n"]
            assert kept <= KEEP, f"run {i}: thread kept {kept} checkpoints (keep {KEEP})"

    async def stateless_runs(n: int) -> None:
        for i in range(n):
            r = await client.post("/runs/wait", json=body(tag=str(i)))
            assert r.status_code == 200 and r.json()["log"] == ["a", "b", "c", "d"], r.text
            _, _, tid, _, rid = r.headers["content-location"].split("/")
            await wait_released(svc, rid)
            left = pg.sql(
                "SELECT (SELECT count(*) FROM keel_threads WHERE thread_id = %s::uuid) + "
                "(SELECT count(*) FROM checkpoints WHERE thread_id = %s) AS n",
                tid,
                tid,
            )[0]["n"]
            assert left == 0, f"stateless run {i}: its temporary thread {tid} is still there"

    await asyncio.gather(*(thread_runs(20) for _ in range(3)), *(stateless_runs(20) for _ in range(3)))


# ------------------------------------------------------------------------------ 9b. unknown checkpoint ids


def footprint(pg: Sql, tid: str) -> tuple:
    """Everything a run creation writes for a thread."""
    row = pg.sql(
        "SELECT (SELECT count(*) FROM keel_runs) AS runs, (SELECT count(*) FROM keel_threads) AS threads, "
        "(SELECT count(*) FROM checkpoints WHERE thread_id = %s) AS checkpoints, "
        "(SELECT count(*) FROM keel_run_events) AS events, "
        "(SELECT (status, updated_at, metadata)::text FROM keel_threads WHERE thread_id = %s::uuid) AS thread",
        tid,
        tid,
    )[0]
    return tuple(row.values())


async def test_run_from_an_unknown_checkpoint_is_refused_and_writes_nothing(client, svc, pg):
    tid = await new_thread(client)
    r = await client.post(f"/threads/{tid}/runs/wait", json=body(tag="first"))
    assert r.json()["log"] == ["a", "b", "c", "d"]
    await wait_released(svc, r.headers["content-location"].split("/")[-1])  # its checkpoint trim is over
    unknown = "1f0a0000-0000-6000-8000-000000000000"
    before = footprint(pg, tid)
    for path, extra in [
        (f"/threads/{tid}/runs", {"checkpoint_id": unknown}),
        (f"/threads/{tid}/runs/wait", {"checkpoint": {"checkpoint_id": unknown}}),
        (f"/threads/{tid}/runs/stream", {"checkpoint_id": unknown, "multitask_strategy": "interrupt"}),
        (f"/threads/{tid}/runs", {"checkpoint": {"checkpoint_id": unknown, "checkpoint_ns": ""}}),
    ]:
        r = await client.post(path, json=body(**extra))
        assert r.status_code == 404, (path, r.text)
        assert r.json() == {"detail": f"Checkpoint with ID {unknown} not found"}
    missing = str(uuid.uuid4())
    r = await client.post(
        f"/threads/{missing}/runs", json=body(checkpoint_id=unknown, if_not_exists="create")
    )
    assert r.status_code == 404 and (await client.get(f"/threads/{missing}")).status_code == 404
    # A stateless run has no thread whose checkpoint it could start from.
    for path in ("/runs", "/runs/wait", "/runs/stream"):
        r = await client.post(path, json=body(checkpoint_id=unknown))
        assert r.status_code == 422 and "checkpoint_id" in r.json()["detail"], r.text
    assert footprint(pg, tid) == before, "a refused run must write nothing"
    # A checkpoint the thread has still works: continue from the one after b (c and d run again).
    history = (await client.post(f"/threads/{tid}/history", json={"limit": 10})).json()
    after_b = next(h for h in history if h["values"].get("log") == ["a", "b"])
    r = await client.post(
        f"/threads/{tid}/runs/wait",
        json={**body(), "input": None, "checkpoint_id": after_b["checkpoint"]["checkpoint_id"]},
    )
    assert r.status_code == 200 and r.json()["log"] == ["a", "b", "c", "d"], r.text


# ------------------------------------------------------------------------------ 9c. no database internals


async def test_run_errors_carry_no_database_internals(client, pg, caplog):
    """A Postgres error inside a run reaches clients as a generic internal error; the log keeps the detail."""
    tid = await new_thread(client)
    secret = (
        'duplicate key value violates unique constraint "checkpoints_pkey" (postgresql://keel:hunter2@db)'
    )
    await pg.run(
        "CREATE OR REPLACE FUNCTION keel_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.thread_id = '{tid}' THEN RAISE EXCEPTION '{secret}'; END IF; RETURN NEW; END $$"
    )
    await pg.run(
        "CREATE TRIGGER keel_test_refuse BEFORE INSERT ON checkpoints FOR EACH ROW "
        "EXECUTE FUNCTION keel_test_refuse()"
    )
    try:
        r = await client.post(f"/threads/{tid}/runs/wait", json=body())
        rid = r.headers["content-location"].split("/")[-1]
        generic = {
            "error": "InternalError",
            "message": f"the run failed because of an internal error; see the server log for run {rid}",
        }
        assert r.json() == {"__error__": generic}
        assert (await client.get(f"/threads/{tid}/runs/{rid}")).json()["error"] == generic
        thread = (await client.get(f"/threads/{tid}")).json()
        assert thread["status"] == "error" and thread["error"] == generic
        events = pg.sql("SELECT data FROM keel_run_events WHERE run_id = %s AND event = 'error'", rid)
        assert [e["data"] for e in events] == [generic]
        r = await client.post(f"/threads/{tid}/runs/stream", json=body())
        assert "event: error" in r.text and "InternalError" in r.text
        for text in (r.text, str(thread), str(events)):
            for leak in (
                "checkpoints_pkey",
                "constraint",
                "hunter2",
                "postgresql://",
                "psycopg",
                "RaiseException",
            ):
                assert leak not in text, (leak, text)
        assert secret.split(" (")[0] in caplog.text and rid in caplog.text, "the server log keeps the detail"
    finally:
        await pg.run("DROP TRIGGER IF EXISTS keel_test_refuse ON checkpoints")
        await pg.run("DROP FUNCTION IF EXISTS keel_test_refuse()")
    # An exception of the graph's own code keeps its type and message: clients rely on them.
    tid = await new_thread(client)
    r = await client.post(f"/threads/{tid}/runs/wait", json=body({"b": {"fail": True}}))
    assert r.json() == {"__error__": {"error": "RuntimeError", "message": "injected permanent failure in b"}}
