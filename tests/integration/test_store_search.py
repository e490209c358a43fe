"""POST /store/items/search with a `query`, as langgraph-api's store answers it: the items whose `text` was
embedded come first by similarity (a number `score`), then, up to `limit`, the matching items with nothing
to embed (`score: null`), so a query never hides items a plain search lists. Every search item has `score`."""

from __future__ import annotations

import uuid

import pytest

from server.settings import Settings
from tests.support.inprocess import api_client, running_service

ALICE = {"x-api-key": "ka"}


@pytest.fixture(scope="module")
async def client(db):
    async with running_service(Settings(keel_api_keys="ka:alice"), db) as svc, api_client(svc) as c:
        yield c


async def put(client, ns: list[str], key: str, value: dict) -> None:
    r = await client.put("/store/items", json={"namespace": ns, "key": key, "value": value}, headers=ALICE)
    assert r.status_code == 204, r.text


async def search(client, **body) -> list[dict]:
    r = await client.post("/store/items/search", json=body, headers=ALICE)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_a_query_lists_embedded_items_by_score_then_the_others(client):
    ns = ["notes", uuid.uuid4().hex[:8]]
    await put(client, ns, "plain-a", {"x": 1})
    await put(client, ns, "plain-b", {"y": "z"})
    await put(client, ns, "tides", {"text": "The moon pulls the ocean into tides."})
    await put(client, ns, "workers", {"text": "Workers claim runs from a Postgres queue."})

    plain = await search(client, namespace_prefix=ns)
    assert len(plain) == 4 and all("score" in i and i["score"] is None for i in plain)

    found = await search(client, namespace_prefix=ns, query="how do workers take runs from the queue")
    assert [i["key"] for i in found[:2]] == ["workers", "tides"]
    assert all(isinstance(i["score"], float) for i in found[:2]) and found[0]["score"] > found[1]["score"]
    assert sorted(i["key"] for i in found[2:]) == ["plain-a", "plain-b"]
    assert all(i["score"] is None for i in found[2:])

    # Pages run through the same order: scored items, then the rest, never twice.
    pages = [
        await search(client, namespace_prefix=ns, query="workers queue", limit=1, offset=o) for o in range(5)
    ]
    assert [len(p) for p in pages] == [1, 1, 1, 1, 0]
    assert sorted(p[0]["key"] for p in pages[:4]) == ["plain-a", "plain-b", "tides", "workers"]
    assert pages[0][0]["key"] == "workers" and pages[2][0]["score"] is None
    # A filter applies to both parts.
    only = await search(client, namespace_prefix=ns, query="workers", filter={"x": 1})
    assert [i["key"] for i in only] == ["plain-a"]
