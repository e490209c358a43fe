"""Run event retention: the stream events of long-finished runs are deleted in batches; the runs stay usable."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from server.retention import prune_run_events
from server.settings import Settings
from tests.support.inprocess import api_client, keel_database, running_service

WEEK = 7 * 24 * 3600.0
Q = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}


# ------------------------------------------------------------------ the sweep itself, on synthetic rows


@pytest.fixture
async def quiet_db(fresh_database_url, embeddings):
    """A database of its own with no worker: nothing claims, finishes or reaps the rows a test writes."""
    async with keel_database(fresh_database_url, embeddings, pool_max=4) as database:
        yield database


async def add_run(db, status: str, *, finished_days_ago: float | None, events: int) -> str:
    """A run row with `events` stream events; finished_at that many days ago (None: not finished)."""
    rid = str(uuid.uuid4())
    async with db.pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO keel_runs (run_id, thread_id, assistant_id, user_id, status, finished_at) VALUES "
            "(%s, %s, %s, 'u', %s, CASE WHEN %s::float IS NULL THEN NULL "
            "ELSE now() - %s::float * interval '1 day' END)",
            (rid, str(uuid.uuid4()), str(uuid.uuid4()), status, finished_days_ago, finished_days_ago),
        )
        if events:
            await conn.execute(
                "INSERT INTO keel_run_events (run_id, seq, attempt, event, data) "
                "SELECT %s, s, 1, 'messages', '{\"t\": \"tok\"}'::jsonb FROM generate_series(1, %s) s",
                (rid, events),
            )
    return rid


async def event_counts(db, run_ids: list[str]) -> dict[str, int]:
    async with db.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT r.run_id::text AS id, (SELECT count(*) FROM keel_run_events e WHERE e.run_id = r.run_id) AS n "
                "FROM keel_runs r WHERE r.run_id = ANY(%s::uuid[])",
                (run_ids,),
            )
        ).fetchall()
    return {r["id"]: r["n"] for r in rows}


async def test_old_finished_runs_lose_events_recent_and_unfinished_keep_them(quiet_db):
    db = quiet_db
    old = {
        s: await add_run(db, s, finished_days_ago=10, events=7)
        for s in ("success", "error", "interrupted", "timeout")
    }
    recent = await add_run(db, "success", finished_days_ago=1, events=5)
    running = await add_run(db, "running", finished_days_ago=None, events=6)
    pending = await add_run(db, "pending", finished_days_ago=None, events=2)
    # A non-terminal run never loses events, even with a stale finish time.
    odd = await add_run(db, "running", finished_days_ago=10, events=3)
    empty = await add_run(db, "success", finished_days_ago=10, events=0)
    kept = {recent: 5, running: 6, pending: 2, odd: 3}

    assert await prune_run_events(db, 0) == 0, "TTL 0 keeps everything"
    assert set((await event_counts(db, list(old.values()))).values()) == {7}

    assert await prune_run_events(db, WEEK) == 4 * 7
    counts = await event_counts(db, [*old.values(), *kept, empty])
    assert all(counts[rid] == 0 for rid in old.values())
    assert {rid: counts[rid] for rid in kept} == kept
    async with db.pool.connection() as conn:
        rows = {
            r["id"]: r
            for r in await (
                await conn.execute("SELECT run_id::text AS id, status, events_pruned_at FROM keel_runs")
            ).fetchall()
        }
    assert len(rows) == 9, "run rows stay"
    assert {rid for rid, r in rows.items() if r["events_pruned_at"] is not None} == {*old.values(), empty}
    assert rows[old["timeout"]]["status"] == "timeout"
    assert await prune_run_events(db, WEEK) == 0, "a second sweep finds nothing"

    # A shorter TTL reaches the recent run too, still never the unfinished ones.
    assert await prune_run_events(db, 3600) == 5
    assert {rid: n for rid, n in (await event_counts(db, list(kept))).items() if n} == {
        running: 6,
        pending: 2,
        odd: 3,
    }


async def test_batches_cover_more_rows_than_one_batch(quiet_db):
    db = quiet_db
    big = await add_run(db, "success", finished_days_ago=30, events=23)
    small = [await add_run(db, "error", finished_days_ago=20, events=3) for _ in range(6)]
    fresh = await add_run(db, "success", finished_days_ago=0, events=4)
    total = 23 + 6 * 3

    # A bounded call (the workers' sweep) stops after max_batches statements of `batch` rows...
    assert await prune_run_events(db, WEEK, batch=5, max_batches=2) == 10
    assert (await event_counts(db, [big]))[big] == 13, "oldest run first, a run larger than a batch split up"
    # ...an unbounded one (keel prune) loops until nothing is left.
    assert await prune_run_events(db, WEEK, batch=5) == total - 10
    counts = await event_counts(db, [big, *small, fresh])
    assert counts.pop(fresh) == 4 and set(counts.values()) == {0}
    async with db.pool.connection() as conn:
        n = (
            await (
                await conn.execute("SELECT count(*) AS n FROM keel_runs WHERE events_pruned_at IS NOT NULL")
            ).fetchone()
        )["n"]
    assert n == 7


async def test_concurrent_sweeps_share_the_work(quiet_db):
    db = quiet_db
    runs = [await add_run(db, "success", finished_days_ago=9, events=40) for _ in range(5)]
    got = await asyncio.gather(*(prune_run_events(db, WEEK, batch=7) for _ in range(3)))
    assert sum(got) == 5 * 40, "every row deleted exactly once"
    assert set((await event_counts(db, runs)).values()) == {0}


async def test_the_partial_index_serves_the_sweep(quiet_db):
    from server.retention import _EXPIRED_RUNS

    db = quiet_db
    async with db.pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")  # the tables are tiny here: show the index fits
        plan = await (
            await conn.execute("EXPLAIN " + _EXPIRED_RUNS, {"ttl": WEEK, "batch": 5000, "upto": None})
        ).fetchall()
    assert "keel_runs_events_ttl_idx" in " ".join(r["QUERY PLAN"] for r in plan)


# ------------------------------------------------------------------ real runs over the API


@pytest.fixture(scope="module")
async def svc(db):
    async with running_service(Settings(keel_api_keys="", keel_events_ttl_seconds=WEEK), db) as service:
        service.worker.sweep_s = 3600.0  # only the worker-sweep test turns the periodic sweep on
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


async def finished_run(client) -> tuple[str, str, dict]:
    """A thread with one finished background run: (thread id, run id, what join returned)."""
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    r = await client.post(
        f"/threads/{tid}/runs",
        json={"assistant_id": "agent", "input": Q, "stream_mode": ["values", "updates"]},
    )
    assert r.status_code == 200, r.text
    rid = r.json()["run_id"]
    joined = (await client.get(f"/threads/{tid}/runs/{rid}/join")).json()
    assert joined["messages"][-1]["type"] == "ai"
    return tid, rid, joined


async def backdate(db, rid: str, days: float) -> None:
    async with db.pool.connection() as conn:
        await conn.execute(
            "UPDATE keel_runs SET finished_at = finished_at - %s * interval '1 day' WHERE run_id = %s",
            (days, rid),
        )


def sse_events(text: str) -> list[str]:
    return [line[len("event: ") :] for line in text.splitlines() if line.startswith("event: ")]


async def test_join_and_stream_of_a_pruned_run(client, db):
    tid, rid, joined = await finished_run(client)
    replay = await client.get(f"/threads/{tid}/runs/{rid}/stream", headers={"last-event-id": "0"})
    assert "values" in sse_events(replay.text), "before pruning, the stream replays the run"
    await backdate(db, rid, 8)
    assert await prune_run_events(db, WEEK) >= len(sse_events(replay.text))
    assert (await event_counts(db, [rid]))[rid] == 0

    r = await client.get(f"/threads/{tid}/runs/{rid}")
    assert r.status_code == 200 and r.json()["status"] == "success", "the run row stays"
    # Joining the stream of a pruned run: nothing to replay, and the response ends at once.
    for headers in ({}, {"last-event-id": "3"}):
        r = await asyncio.wait_for(client.get(f"/threads/{tid}/runs/{rid}/stream", headers=headers), 5)
        assert r.status_code == 200 and sse_events(r.text) == []
    # join of a finished run reads the thread (every channel, as the reference server), not the events.
    r = await asyncio.wait_for(client.get(f"/threads/{tid}/runs/{rid}/join"), 5)
    assert r.status_code == 200 and {k: r.json()[k] for k in joined} == joined
    state = (await client.get(f"/threads/{tid}/state")).json()
    assert state["values"]["messages"][-1]["content"] == joined["messages"][-1]["content"]

    # The thread goes on; the new run's events are there and a sweep leaves them alone.
    r = await client.post(f"/threads/{tid}/runs/stream", json={"assistant_id": "agent", "input": Q})
    assert "values" in sse_events(r.text)
    assert await prune_run_events(db, WEEK) == 0
    runs = (await client.get(f"/threads/{tid}/runs")).json()
    assert len(runs) == 2 and {x["status"] for x in runs} == {"success"}


async def test_the_workers_periodic_sweep_prunes_events(client, db, svc):
    tid, rid, _ = await finished_run(client)
    _, young, _ = await finished_run(client)
    await backdate(db, rid, 8)
    svc.worker.sweep_s = 0.1
    try:
        for _ in range(100):
            if (await event_counts(db, [rid]))[rid] == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        svc.worker.sweep_s = 3600.0
    assert (await event_counts(db, [rid]))[rid] == 0
    assert (await event_counts(db, [young]))[young] > 0, "a recent run keeps its events"
    assert (await client.get(f"/threads/{tid}/runs/{rid}/join")).json()["messages"][-1]["type"] == "ai"
