"""A connection that dies under a request (Postgres restarting, a backend terminated) is not a 500.

The chaos soak saw one: a run creation whose pooled connection died at that instant answered 500. Here the
request is held on a real table lock, its backend is terminated with pg_terminate_backend while it waits,
and then the lock is released: run creation and read-only requests try again and succeed (the run is
recorded once), and a write that cannot safely be repeated answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager

import psycopg
import pytest

from server.settings import Settings
from tests.support.inprocess import api_client, running_service

Q = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}


@pytest.fixture(scope="module")
async def svc(db):
    async with running_service(Settings(), db) as service:
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


@asynccontextmanager
async def cut_while_waiting(url: str, table: str):
    """Hold an exclusive lock on `table`; yield a function that terminates the backends waiting for it whose
    statement matches a LIKE pattern (the request's; the in-process worker's polls may be waiting too)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=False) as holder:
        await holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

        async def terminate_waiters(statement: str, timeout: float = 20.0) -> int:
            deadline = time.monotonic() + timeout
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
                while time.monotonic() < deadline:
                    cur = await admin.execute(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE c.relname = %s AND NOT l.granted "
                        "AND l.pid <> pg_backend_pid() AND a.query LIKE %s",
                        (table, statement),
                    )
                    killed = len(await cur.fetchall())
                    if killed:
                        return killed
                    await asyncio.sleep(0.02)
            raise AssertionError(f"no {statement!r} waited for the lock on {table}")

        try:
            yield terminate_waiters
        finally:
            await holder.rollback()


async def count_runs(db) -> int:
    async with db.pool.connection() as conn:
        return (await (await conn.execute("SELECT count(*) AS n FROM keel_runs")).fetchone())["n"]


async def test_run_creation_survives_its_connection_dying(client, db):
    before = await count_runs(db)
    async with cut_while_waiting(db.url, "keel_runs") as terminate_waiters:
        request = asyncio.create_task(client.post("/runs", json={"assistant_id": "agent", "input": Q}))
        assert await terminate_waiters("INSERT INTO keel_runs %") == 1
    r = await request
    assert r.status_code == 200, r.text
    assert await count_runs(db) == before + 1  # recorded once
    joined = await client.get(f"/threads/{r.json()['thread_id']}/runs/{r.json()['run_id']}/join")
    assert joined.status_code == 200 and joined.json()["messages"][-1]["type"] == "ai"


async def test_reads_survive_their_connection_dying(client, db):
    tid = (await client.post("/threads", json={"metadata": {"k": "v"}})).json()["thread_id"]
    async with cut_while_waiting(db.url, "keel_threads") as terminate_waiters:
        get = asyncio.create_task(client.get(f"/threads/{tid}"))
        assert await terminate_waiters("SELECT %FROM keel_threads WHERE thread_id = $1") == 1
    r = await get
    assert r.status_code == 200 and r.json()["metadata"] == {"k": "v"}
    async with cut_while_waiting(db.url, "keel_threads") as terminate_waiters:
        search = asyncio.create_task(client.post("/threads/search", json={"metadata": {"k": "v"}}))
        assert await terminate_waiters("SELECT count(*) AS n FROM keel_threads %") == 1
    r = await search
    assert r.status_code == 200 and [t["thread_id"] for t in r.json()] == [tid]


async def test_a_write_that_cannot_be_repeated_answers_503_and_the_connection_stays_usable(client, db):
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    async with cut_while_waiting(db.url, "keel_threads") as terminate_waiters:
        patch = asyncio.create_task(client.patch(f"/threads/{tid}", json={"metadata": {"a": 1}}))
        assert await terminate_waiters("SELECT %FROM keel_threads WHERE thread_id = $1") == 1
    r = await patch
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json() == {"detail": "The database is unavailable at the moment; retry shortly"}
    r = await client.patch(f"/threads/{tid}", json={"metadata": {"a": 2}})
    assert r.status_code == 200 and r.json()["metadata"] == {"a": 2}


async def test_thread_creation_with_an_id_chosen_by_the_server_survives_its_connection_dying(client, db):
    async with cut_while_waiting(db.url, "keel_threads") as terminate_waiters:
        create = asyncio.create_task(client.post("/threads", json={"metadata": {"survived": True}}))
        assert await terminate_waiters("INSERT INTO keel_threads %") == 1
    r = await create
    assert r.status_code == 200, r.text
    r = await client.post("/threads/search", json={"metadata": {"survived": True}})
    assert len(r.json()) == 1
    # A caller-chosen id with if_exists=raise cannot be repeated blindly (it could not tell its own insert from
    # a conflict): 503, and the caller retries.
    tid = str(uuid.uuid4())
    async with cut_while_waiting(db.url, "keel_threads") as terminate_waiters:
        create = asyncio.create_task(client.post("/threads", json={"thread_id": tid}))
        assert await terminate_waiters("INSERT INTO keel_threads %") == 1
    assert (await create).status_code == 503
    assert (await client.post("/threads", json={"thread_id": tid})).status_code == 200
