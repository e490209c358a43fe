"""Fields the SDKs may send that Keel cannot honour are refused with a 422 that says so, never ignored."""

from __future__ import annotations

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
