"""Owner liveness: a run whose worker died is reaped at once, a live worker's run never early (store.LIVENESS_CLASS);
and the crash epoch an attempt was claimed in (PostgresRestarted).

Drives the queue's SQL on a real Postgres with real sessions: a "worker" here is a connection that holds (or
dropped) its advisory lock, the way a worker process's heartbeat connection does until the process dies.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from server.runs import queue
from server.runs.store import LIVENESS_CLASS, RunStatus
from tests.support.inprocess import keel_database

LONG_LEASE = 600.0  # far from expiring during a test: only liveness can free these runs


@pytest.fixture
async def quiet_db(fresh_database_url, embeddings):
    """A database of its own with no worker: nothing claims or reaps but the test."""
    async with keel_database(fresh_database_url, embeddings, pool_max=4) as database:
        yield database


async def pending_run(db) -> str:
    tid, rid = str(uuid.uuid4()), str(uuid.uuid4())
    async with db.pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO keel_threads (thread_id, user_id, metadata) VALUES (%s, 'u', '{}')", (tid,)
        )
        await conn.execute(
            "INSERT INTO keel_runs (run_id, thread_id, assistant_id, user_id, status, kwargs) "
            "VALUES (%s, %s, %s, 'u', 'pending', '{}')",
            (rid, tid, str(uuid.uuid4())),
        )
    return rid


async def lease_of(db, rid: str) -> dict:
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status, lease_owner, lease_lock, lease_expires_at > now() AS unexpired, "
            "lease_renewed_at > pg_postmaster_start_time() AS renewed_since_start FROM keel_runs WHERE run_id = %s",
            (rid,),
        )
        row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def locker(url: str, key: int) -> psycopg.AsyncConnection:
    """A session holding liveness lock `key`, as a worker's heartbeat connection does."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    row = await (await conn.execute(queue.lock_liveness_sql(), (key,))).fetchone()
    assert row is not None and row[0]
    return conn


async def wait_lock_released(db, key: int) -> None:
    """Postgres ends a closed session's backend (and its locks) asynchronously: wait for it, not for a time."""
    for _ in range(500):
        async with db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid "
                "AND objid = %s::oid AND objsubid = 2",
                (LIVENESS_CLASS, key),
            )
            row = await cur.fetchone()
        if row is not None and row["n"] == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"liveness lock {key} still held after its session closed")


async def reap(db, owner: str = "reaper", lock: int = 0) -> list[str]:
    rows = await queue.reap(db.pool, 3, owner=owner, lease_s=LONG_LEASE, held=[], lock=lock)
    return [str(r["run_id"]) for r in rows]


async def test_a_claim_names_the_liveness_lock_only_while_it_is_held(quiet_db, fresh_database_url):
    unheld = await pending_run(quiet_db)
    c = await queue.claim(quiet_db.pool, "w1", LONG_LEASE, lock=111)
    assert c is not None and c.run_id == unheld
    lease = await lease_of(quiet_db, unheld)
    assert lease["lease_lock"] is None and lease["renewed_since_start"]

    held = await pending_run(quiet_db)
    session = await locker(fresh_database_url, 222)
    try:
        c = await queue.claim(quiet_db.pool, "w2", LONG_LEASE, lock=222)
        assert c is not None and c.run_id == held
        assert (await lease_of(quiet_db, held))["lease_lock"] == 222
        # A run whose lease names no lock is never reaped before it expires.
        assert await reap(quiet_db) == []
        assert (await lease_of(quiet_db, unheld))["status"] == "running"
    finally:
        await session.close()


async def test_a_dead_owners_run_is_reaped_before_its_lease_expires(quiet_db, fresh_database_url):
    rid = await pending_run(quiet_db)
    session = await locker(fresh_database_url, 333)
    try:
        assert (await queue.claim(quiet_db.pool, "w1", LONG_LEASE, lock=333)) is not None
        # Alive (its session holds the lock): another worker's reap leaves the run alone.
        assert await reap(quiet_db) == []
        assert (await lease_of(quiet_db, rid))["status"] == "running"
    finally:
        await session.close()  # the process died: Postgres ends its sessions and drops the lock
    await wait_lock_released(quiet_db, 333)
    assert (await lease_of(quiet_db, rid))["unexpired"], "the lease has not run out"
    assert await reap(quiet_db) == [rid]
    lease = await lease_of(quiet_db, rid)
    assert lease["status"] == "pending" and lease["lease_owner"] is None and lease["lease_lock"] is None
    # Taken up by the next claim at a new epoch, so anything the dead owner left in flight is fenced.
    again = await queue.claim(quiet_db.pool, "w2", LONG_LEASE, lock=0)
    assert again is not None and again.run_id == rid and again.epoch == 2 and again.attempt == 2


async def test_a_lock_dropped_by_a_postgres_restart_does_not_count_as_a_dead_owner(
    quiet_db, fresh_database_url
):
    """A restart drops every lock, live owners' too: only a lease renewed since the postmaster started counts."""
    rid = await pending_run(quiet_db)
    session = await locker(fresh_database_url, 444)
    try:
        assert (await queue.claim(quiet_db.pool, "w1", LONG_LEASE, lock=444)) is not None
    finally:
        await session.close()
    await wait_lock_released(quiet_db, 444)
    async with quiet_db.pool.connection() as conn:  # as if the last renewal predates the running postmaster
        await conn.execute(
            "UPDATE keel_runs SET lease_renewed_at = pg_postmaster_start_time() - interval '1 second' "
            "WHERE run_id = %s",
            (rid,),
        )
    assert await reap(quiet_db) == []
    assert (await lease_of(quiet_db, rid))["status"] == "running"


async def test_a_heartbeat_on_the_locked_session_names_the_lock(quiet_db, fresh_database_url):
    """A lease taken before the lock (claim named none) is named by the first heartbeat, which runs on the
    session that holds the lock; from then on the owner's death is noticed at once."""
    rid = await pending_run(quiet_db)
    assert (await queue.claim(quiet_db.pool, "w1", LONG_LEASE, lock=555)) is not None
    assert (await lease_of(quiet_db, rid))["lease_lock"] is None
    session = await locker(fresh_database_url, 555)
    try:
        cur = await session.execute(queue.heartbeat_sql(), (LONG_LEASE, 555, [rid], "w1"))
        assert [r[0] for r in await cur.fetchall()] == [rid]
        assert (await lease_of(quiet_db, rid))["lease_lock"] == 555
        assert await reap(quiet_db) == []
    finally:
        await session.close()
    await wait_lock_released(quiet_db, 555)
    assert await reap(quiet_db) == [rid]


async def test_a_taken_key_is_refused_to_a_second_session(fresh_database_url):
    """Two live workers never share a key: the second one's lock attempt fails (the worker then picks again)."""
    first = await locker(fresh_database_url, 666)
    second = await psycopg.AsyncConnection.connect(fresh_database_url, autocommit=True)
    try:
        row = await (await second.execute(queue.lock_liveness_sql(), (666,))).fetchone()
        assert row is not None and row[0] is False
    finally:
        await first.close()
        await second.close()


async def test_a_claim_records_the_crash_epoch_and_finish_refuses_another(quiet_db):
    """An attempt's outcome is not recorded once Postgres has crashed since the claim (the crash may have lost the
    attempt's commits that did not wait for the disk): PostgresRestarted, and nothing changes. The crash epoch is
    a token in an unlogged table, which crash recovery empties: emptying it here is what recovery does to it."""
    from server.runs.fencing import PostgresRestarted

    rid = await pending_run(quiet_db)
    c = await queue.claim(quiet_db.pool, "w1", LONG_LEASE)
    assert c is not None and c.run_id == rid
    epoch = c.run["pg_epoch"]
    assert isinstance(epoch, uuid.UUID)
    done = {"thread_status": "idle", "thread_values": {}, "interrupts": {}}
    async with quiet_db.pool.connection() as conn:
        await conn.execute("DELETE FROM keel_crash_epoch")  # (as crash recovery truncates an unlogged table)
    with pytest.raises(PostgresRestarted):
        await queue.finish(quiet_db.pool, c, RunStatus.SUCCESS, pg_epoch=epoch, **done)
    assert (await lease_of(quiet_db, rid))["status"] == "running", "rolled back"
    async with quiet_db.pool.connection() as conn:
        new = await (await conn.execute("SELECT keel_crash_epoch() AS e")).fetchone()
    assert new is not None and new["e"] != epoch, "a new epoch was drawn, and stays"
    assert await queue.finish(quiet_db.pool, c, RunStatus.SUCCESS, pg_epoch=new["e"], **done)
    assert (await lease_of(quiet_db, rid))["status"] == "success"
