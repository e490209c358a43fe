"""Fields the SDKs may send that Keel cannot honour are refused with a 422 that says so, never ignored."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.settings import Settings
from tests.support.inprocess import api_client, running_service

Q = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}


@pytest.fixture(scope="module")
async def client(db):
    async with running_service(Settings(), db) as service, api_client(service) as c:
        yield c


async def counts(db) -> tuple[int, int]:
    async with db.pool.connection() as conn:
        t = await (await conn.execute("SELECT count(*) AS n FROM keel_threads")).fetchone()
        r = await (await conn.execute("SELECT count(*) AS n FROM keel_runs")).fetchone()
    return t["n"], r["n"]


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("/runs/wait", {"assistant_id": "agent", "input": Q, "after_seconds": 5}, "after_seconds"),
        ("/runs", {"assistant_id": "agent", "input": Q, "webhook": "http://127.0.0.1:9/hook"}, "webhook"),
        (
            "/runs/stream",
            {"assistant_id": "agent", "input": Q, "feedback_keys": ["helpful"]},
            "feedback_keys",
        ),
        ("/threads", {"supersteps": [{"updates": [{"values": {}, "as_node": "retrieve"}]}]}, "supersteps"),
        ("/threads/search", {"extract": {"q": "values.question"}}, "extract"),
    ],
)
async def test_unsupported_fields_are_refused_and_nothing_is_written(client, db, path, body, field):
    before = await counts(db)
    r = await client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert f"{field} is not supported by this server" in r.json()["detail"]
    assert await counts(db) == before


async def test_their_empty_forms_are_accepted(client):
    r = await client.post(
        "/runs/wait",
        json={"assistant_id": "agent", "input": Q, "after_seconds": 0, "webhook": None, "feedback_keys": []},
    )
    assert r.status_code == 200, r.text
    assert (await client.post("/threads", json={"supersteps": []})).status_code == 200
    assert (await client.post("/threads/search", json={"extract": {}})).status_code == 200


async def test_assistant_search_honours_its_sort(client):
    r = await client.post("/assistants/search", json={"sort_by": "name", "sort_order": "asc"})
    assert r.status_code == 200 and [a["graph_id"] for a in r.json()] == ["agent"]
    r = await client.post("/assistants/search", json={"sort_by": "bogus"})
    assert r.status_code == 422


async def expires_at(db, tid: str):
    async with db.pool.connection() as conn:
        row = await (
            await conn.execute("SELECT expires_at FROM keel_threads WHERE thread_id = %s", (tid,))
        ).fetchone()
    return row["expires_at"] if row else "gone"


async def test_thread_patch_honours_ttl(client, db):
    """PATCH /threads/{id} with a ttl restarts the thread's expiry (it used to be accepted and ignored)."""
    from server.retention import sweep

    tid = (await client.post("/threads", json={"metadata": {"a": 1}})).json()["thread_id"]
    assert await expires_at(db, tid) is None
    r = await client.patch(
        f"/threads/{tid}", json={"metadata": {"b": 2}, "ttl": {"ttl": 60, "strategy": "delete"}}
    )
    assert r.status_code == 200 and r.json()["metadata"] == {"a": 1, "b": 2}
    first = await expires_at(db, tid)
    assert first is not None
    r = await client.patch(f"/threads/{tid}", json={"metadata": {"c": 3}})  # no ttl: the expiry stays
    assert r.status_code == 200 and await expires_at(db, tid) == first
    r = await client.patch(f"/threads/{tid}", json={"ttl": 0.0001})  # minutes: expires within 6 ms
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    while tid not in await sweep(db):
        assert time.monotonic() < deadline, "the thread did not expire"
        await asyncio.sleep(0.01)
    assert await expires_at(db, tid) == "gone"
    assert (await client.patch(f"/threads/{tid}", json={"ttl": -1})).status_code in (404, 422)
