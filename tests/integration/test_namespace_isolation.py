"""Tenant isolation in the store: user ids that differ only by "." vs "_" (or by escapes) never share memories.

Over the HTTP API (in process, real Postgres) with one key per user, through the store API and through the
agent's remember/recall tools and per-turn recall; plus migration 8, which moves rows of the old encoding.
"""

from __future__ import annotations

import json

import pytest

from server.db import MIGRATIONS, migrate
from server.settings import Settings
from tests.support.inprocess import api_client, keel_database, running_service
from tools.memory_tools import memories_namespace

DOT, UNDERSCORE = {"x-api-key": "k1"}, {"x-api-key": "k2"}  # eve.x and eve_x


@pytest.fixture(scope="module")
async def client(db):
    settings = Settings(keel_api_keys="k1:eve.x,k2:eve_x")
    async with running_service(settings, db) as service, api_client(service) as c:
        yield c


def test_user_labels_are_injective_reversible_and_dot_free():
    from tools.memory_tools import user_from_label, user_label

    ids = ["local", "alice", "eve.x", "eve_x", "eve%2Ex", "eve%2Ex.", "a%b", "a%25b", "%", ".", "", "a\x00b"]
    labels = [user_label(u) for u in ids]
    assert len(set(labels)) == len(ids), dict(zip(ids, labels, strict=True))
    assert all(label and "." not in label and "\x00" not in label for label in labels)
    assert [user_from_label(label) for label in labels] == ids
    assert user_label("local") == "local" and user_label("eve_x") == "eve_x", "plain ids keep their label"


async def test_store_items_are_private_between_dot_and_underscore(client):
    async def put(headers, key, text, namespace=("memories",)):
        r = await client.put(
            "/store/items",
            headers=headers,
            json={"namespace": list(namespace), "key": key, "value": {"text": text}},
        )
        assert r.status_code == 204, r.text

    await put(DOT, "diary", "eve.x keeps the launch codes under the mat")
    await put(DOT, "note", "eve.x project notes", namespace=("projects", "apollo"))
    # eve_x sees none of it: get, search, namespaces.
    r = await client.get("/store/items", params={"namespace": "memories", "key": "diary"}, headers=UNDERSCORE)
    assert r.status_code == 200 and r.json() is None, r.text  # a missing item is null, as the reference
    r = await client.post(
        "/store/items/search",
        json={"namespace_prefix": ["memories"], "query": "launch codes"},
        headers=UNDERSCORE,
    )
    assert r.status_code == 200 and r.json() == {"items": []}, r.text
    r = await client.post("/store/namespaces", json={}, headers=UNDERSCORE)
    assert r.status_code == 200 and r.json() == {"namespaces": []}, r.text
    # eve_x's own writes and deletes stay on its side.
    await put(UNDERSCORE, "diary", "eve_x likes sailing")
    r = await client.request(
        "DELETE", "/store/items", json={"namespace": ["memories"], "key": "diary"}, headers=UNDERSCORE
    )
    assert r.status_code == 204, r.text
    r = await client.get("/store/items", params={"namespace": "memories", "key": "diary"}, headers=DOT)
    assert r.status_code == 200 and r.json()["value"] == {
        "text": "eve.x keeps the launch codes under the mat"
    }
    assert r.json()["namespace"] == ["memories"]
    r = await client.post("/store/items/search", json={"namespace_prefix": ["memories"]}, headers=DOT)
    assert [i["key"] for i in r.json()["items"]] == ["diary"]
    r = await client.post("/store/namespaces", json={}, headers=DOT)
    assert sorted(map(tuple, r.json()["namespaces"])) == [("memories",), ("projects", "apollo")]


def tool_results(values: dict) -> list[dict]:
    return [json.loads(m["content"]) for m in values["messages"] if m.get("type") == "tool"]


async def ask(client, headers, text: str) -> dict:
    r = await client.post(
        "/runs/wait",
        headers=headers,
        json={"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}},
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_remember_and_recall_are_private_between_dot_and_underscore(client, db):
    out = await ask(client, DOT, '/tool remember {"fact": "I keep my bicycle in the blue garage"}')
    assert tool_results(out)[0]["fact"] == "I keep my bicycle in the blue garage", out["messages"]
    # The recall tool and the per-turn recall of eve_x find nothing of eve.x's.
    other = await ask(client, UNDERSCORE, '/tool recall {"query": "bicycle garage"}')
    assert tool_results(other) == [{"memories": []}], other["messages"]
    other = await ask(client, UNDERSCORE, "Where is my bicycle?")
    assert not [s for s in other.get("sources", []) if s["source"] == "memory"], other["sources"]
    # eve.x recalls it, both ways.
    mine = await ask(client, DOT, '/tool recall {"query": "bicycle garage"}')
    assert tool_results(mine)[0]["memories"][0]["fact"] == "I keep my bicycle in the blue garage"
    mine = await ask(client, DOT, "Where is my bicycle?")
    assert [s for s in mine["sources"] if s["source"] == "memory"], mine["sources"]
    assert await db.store.asearch(memories_namespace("eve_x"), query="bicycle") == []


async def test_migration_moves_rows_of_the_old_encoding(fresh_database_url, embeddings):
    """A database written by the old encoding ("." -> "_", "%" kept), migrated by migration 8."""
    async with keel_database(fresh_database_url, embeddings, pool_max=2) as db:
        async with db.pool.connection() as conn:
            await conn.execute("DELETE FROM keel_migrations WHERE v >= 8")
        store = db.store
        # What the old code wrote: user "50%off" under "50%off", user "eve.x" under "eve_x", a corpus with "%".
        await store.aput(("memories", "50%off"), "m1", {"text": "prefers the window seat on trains"})
        await store.aput(("prefs", "50%off", "travel"), "p1", {"text": "aisle on planes"})
        await store.aput(("memories", "eve_x"), "m2", {"text": "written for eve.x or eve_x, nobody knows"})
        await store.aput(("docs", "sale%2Eq3"), "d1", {"text": "quarterly sales corpus"})
        async with db.pool.connection() as conn:
            before = await (await conn.execute("SELECT count(*) AS n FROM store_vectors")).fetchone()
            assert await migrate(conn) == len(MIGRATIONS) - 7
            after = await (await conn.execute("SELECT count(*) AS n FROM store_vectors")).fetchone()
            prefixes = {
                r["prefix"] for r in await (await conn.execute("SELECT prefix FROM store")).fetchall()
            }
        assert before == after, "every vector moved with its row"
        assert prefixes == {"memories.50%25off", "prefs.50%25off.travel", "memories.eve_x", "docs.sale%2Eq3"}
        # Found under the new encoding, by key, by filter and by vector search.
        assert (await store.aget(memories_namespace("50%off"), "m1")).value["text"].startswith("prefers")
        hits = await store.asearch(memories_namespace("50%off"), query="train seat")
        assert [h.key for h in hits] == ["m1"] and hits[0].score is not None
        assert [i.key for i in await store.asearch(("prefs", memories_namespace("50%off")[1]))] == ["p1"]
        # An old "eve_x" label is kept as eve_x's: the old mapping cannot be inverted (docs/memory.md).
        assert [i.key for i in await store.asearch(memories_namespace("eve_x"))] == ["m2"]
        assert await store.asearch(memories_namespace("eve.x")) == []
        assert [i.key for i in await store.asearch(("docs", "sale%2Eq3"), query="sales")] == ["d1"]
