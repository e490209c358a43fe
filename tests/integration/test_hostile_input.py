"""Hostile input at the HTTP edge: refused with a 4xx `{"detail": str}` before anything is written.

One rule for every JSON body, query parameter and path parameter: no NUL, no unpaired surrogate (Postgres
text and jsonb cannot hold them), integers within 64 bits, finite numbers, at most 64 levels of nesting;
plus bounds on offsets, TTLs, store filters and namespaces. The in-process app runs on the real Postgres.
"""

from __future__ import annotations

import json
import uuid

import pytest

from server.settings import Settings
from tests.support.inprocess import api_client, running_service

ALICE = {"x-api-key": "ka"}
Q = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}
NUL, SURROGATE = "\\u0000", "\\ud800"  # JSON escapes, as a client sends them
BAD = "@BAD@"
UNSTORABLE = "contains a NUL character or an unpaired surrogate, which Postgres cannot store"


@pytest.fixture(scope="module")
async def svc(db):
    settings = Settings(keel_api_keys="ka:alice:admin", keel_max_body_bytes=200_000)
    async with running_service(settings, db) as service:
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


@pytest.fixture(scope="module")
async def tid(client):
    r = await client.post("/threads", json={}, headers=ALICE)
    assert r.status_code == 200, r.text
    return r.json()["thread_id"]


async def written(db) -> tuple[int, ...]:
    """Rows in every table a request could write to."""
    async with db.pool.connection() as conn:
        out = []
        for table in ("keel_threads", "keel_runs", "checkpoints", "checkpoint_writes", "store"):
            out.append((await (await conn.execute(f"SELECT count(*) AS n FROM {table}")).fetchone())["n"])
    return tuple(out)


def raw(body: object, bad: str) -> bytes:
    """`body` as JSON text with every @BAD@ replaced by a JSON escape (so a lone surrogate can be sent)."""
    return json.dumps(body).replace(BAD, bad).encode()


def ask(content: str) -> dict:
    return {"messages": [{"role": "user", "content": content}]}


# (method, path, body with @BAD@ inside, the field the 422 must name)
BODIES = [
    ("POST", "/threads", {"metadata": {"k": f"a{BAD}b"}}, "metadata.k"),
    ("PATCH", "/threads/{tid}", {"metadata": {"k": f"a{BAD}b"}}, "metadata.k"),
    ("POST", "/threads/search", {"metadata": {"k": BAD}}, "metadata.k"),
    ("POST", "/threads/count", {"values": {"k": BAD}}, "values.k"),
    ("POST", "/threads/{tid}/state", {"values": ask(f"a{BAD}b")}, "values.messages.0.content"),
    ("POST", "/threads/{tid}/history", {"metadata": {"k": BAD}}, "metadata.k"),
    (
        "POST",
        "/threads/{tid}/runs",
        {"assistant_id": "agent", "input": ask(f"a{BAD}b")},
        "input.messages.0.content",
    ),
    (
        "POST",
        "/threads/{tid}/runs/wait",
        {"assistant_id": "agent", "input": ask(BAD)},
        "input.messages.0.content",
    ),
    (
        "POST",
        "/threads/{tid}/runs/stream",
        {"assistant_id": "agent", "input": Q, "metadata": {"m": BAD}},
        "metadata.m",
    ),
    ("POST", "/runs", {"assistant_id": "agent", "input": Q, "config": {"tags": [BAD]}}, "config.tags.0"),
    ("POST", "/runs/wait", {"assistant_id": "agent", "input": ask(f"a{BAD}b")}, "input.messages.0.content"),
    (
        "POST",
        "/runs/stream",
        {"assistant_id": "agent", "input": Q, "context": {"namespace": BAD}},
        "context.namespace",
    ),
    (
        "PUT",
        "/store/items",
        {"namespace": ["notes"], "key": "k", "value": {"text": f"a{BAD}b"}},
        "value.text",
    ),
    ("PUT", "/store/items", {"namespace": [f"no{BAD}tes"], "key": "k", "value": {}}, "namespace.0"),
    ("PUT", "/store/items", {"namespace": ["notes"], "key": BAD, "value": {}}, "key"),
    ("POST", "/store/items/search", {"query": f"a{BAD}b"}, "query"),
    ("POST", "/store/items/search", {"filter": {"k": BAD}}, "filter.k"),
    ("POST", "/store/namespaces", {"prefix": [BAD]}, "prefix.0"),
    ("POST", "/knowledge/search", {"query": f"a{BAD}b", "mode": "fts"}, "query"),
    ("POST", "/knowledge/search", {"query": f"a{BAD}b", "mode": "hybrid"}, "query"),
    (
        "POST",
        "/knowledge/ingest",
        {"namespace": "kb", "documents": [{"source": "a.md", "content": f"# A{BAD}"}]},
        "documents.0.content",
    ),
    ("DELETE", "/knowledge/sources", {"source": f"a{BAD}.md"}, "source"),
    ("POST", "/assistants/search", {"metadata": {"k": BAD}}, "metadata.k"),
]


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
@pytest.mark.parametrize("method,path,body,field", BODIES, ids=[f"{m} {p} {f}" for m, p, _, f in BODIES])
async def test_unstorable_text_in_a_body_is_422_naming_the_field(
    client, db, tid, bad, method, path, body, field
):
    before = await written(db)
    r = await client.request(
        method,
        path.format(tid=tid),
        content=raw(body, bad),
        headers={**ALICE, "content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json() == {"detail": f"{field}: {UNSTORABLE}"}
    assert await written(db) == before, "a refused request must write nothing"


async def test_unstorable_keys_are_named_too(client, db):
    before = await written(db)
    for bad, shown in ((NUL, "a\\x00"), (SURROGATE, "a\\ud800")):
        r = await client.post(
            "/threads",
            content=raw({"metadata": {f"a{BAD}": 1}}, bad),
            headers={**ALICE, "content-type": "application/json"},
        )
        assert r.status_code == 422
        assert r.json() == {"detail": f"metadata.{shown}: this key {UNSTORABLE}"}
    assert await written(db) == before


@pytest.mark.parametrize(
    "path,params,field",
    [
        ("/store/items", {"namespace": "notes", "key": "a\x00b"}, "query.key"),
        ("/store/items", {"namespace": "no\x00tes", "key": "k"}, "query.namespace"),
        ("/knowledge/sources", {"namespace": "kb\x00"}, "query.namespace"),
        ("/threads/{tid}/runs", {"status": "\x00"}, "query.status"),
        ("/threads/{tid}/state/a\x00b", {}, "path.checkpoint_id"),
        ("/assistants/agent\x00", {}, "path.assistant_id"),
        ("/threads/{tid}/runs/{tid}/stream", {"stream_mode": "values\x00"}, "query.stream_mode"),
    ],
)
async def test_nul_in_query_and_path_parameters_is_422(client, db, tid, path, params, field):
    before = await written(db)
    r = await client.get(path.format(tid=tid).replace("\x00", "%00"), params=params, headers=ALICE)
    assert r.status_code == 422, r.text
    assert r.json() == {"detail": f"{field}: {UNSTORABLE}"}
    assert await written(db) == before


async def test_a_refused_state_update_leaves_the_thread_working(client, db):
    """The bricking case: the NUL used to reach the checkpoint, then every later run failed and re-appended."""
    r = await client.post("/threads", json={}, headers=ALICE)
    thread = r.json()["thread_id"]
    r = await client.post(
        f"/threads/{thread}/runs/wait", json={"assistant_id": "agent", "input": Q}, headers=ALICE
    )
    assert r.status_code == 200 and "__error__" not in r.json(), r.text
    before = await written(db)
    for bad in (NUL, SURROGATE):
        r = await client.post(
            f"/threads/{thread}/state",
            content=raw({"values": ask(f"a{BAD}b")}, bad),
            headers={**ALICE, "content-type": "application/json"},
        )
        assert r.status_code == 422 and "values.messages.0.content" in r.json()["detail"], r.text
    assert await written(db) == before
    r = await client.post(
        f"/threads/{thread}/runs/wait",
        headers=ALICE,
        json={"assistant_id": "agent", "input": ask("And how does recovery work?")},
    )
    assert r.status_code == 200 and "__error__" not in r.json(), r.text
    runs = (await client.get(f"/threads/{thread}/runs", headers=ALICE)).json()
    assert [x["status"] for x in runs] == ["success", "success"]
    state = (await client.get(f"/threads/{thread}/state", headers=ALICE)).json()
    asked = [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]
    assert asked == [Q["messages"][0]["content"], "And how does recovery work?"], asked
    assert (await client.get(f"/threads/{thread}", headers=ALICE)).json()["status"] == "idle"


DEEP = 300  # past orjson's 255 levels, below the JSON parser's recursion limit


def nested(levels: int) -> dict:
    value: object = "leaf"
    for _ in range(levels):
        value = {"k": value}
    return value  # type: ignore[return-value]


# Inputs that answered 500 with a text body (and dropped the connection). (method, path, JSON text, status)
OUT_OF_RANGE = [
    ("POST", "/threads", json.dumps({"metadata": {"n": 2**64 + 1}}), 422),
    ("POST", "/threads", json.dumps({"metadata": {"n": -(2**63) - 1}}), 422),
    ("PATCH", "/threads/{tid}", json.dumps({"metadata": {"n": 2**70}}), 422),
    ("POST", "/threads/search", json.dumps({"metadata": {"n": 2**64}}), 422),
    ("POST", "/threads/count", json.dumps({"values": {"n": 10**30}}), 422),
    ("POST", "/runs", json.dumps({"assistant_id": "agent", "input": Q, "metadata": {"n": 2**65}}), 422),
    (
        "POST",
        "/threads/{tid}/runs",
        json.dumps({"assistant_id": "agent", "input": {"messages": [], "n": 2**65}}),
        422,
    ),
    ("PUT", "/store/items", json.dumps({"namespace": ["notes"], "key": "k", "value": {"n": 2**64}}), 422),
    ("POST", "/threads", '{"metadata": {"n": NaN}}', 422),
    ("POST", "/threads/search", '{"values": {"n": Infinity}}', 422),
    ("POST", "/threads", '{"metadata": {"n": 1e400}}', 422),
    ("POST", "/threads/search", json.dumps({"offset": 2**63}), 422),
    ("POST", "/threads/count", json.dumps({"offset": 2**64}), 422),
    ("POST", "/assistants/search", json.dumps({"offset": 2**63}), 422),
    ("POST", "/store/items/search", json.dumps({"offset": 2**63}), 422),
    ("POST", "/store/namespaces", json.dumps({"offset": 2**63}), 422),
    ("POST", "/threads", json.dumps({"ttl": 1e12}), 422),
    ("POST", "/threads", json.dumps({"ttl": {"ttl": 1e12, "strategy": "delete"}}), 422),
    ("PUT", "/store/items", json.dumps({"namespace": ["notes"], "key": "k", "value": {}, "ttl": 1e12}), 422),
    ("PUT", "/store/items", json.dumps({"namespace": ["notes"], "key": "k", "value": {}, "ttl": -5}), 422),
    (
        "PUT",
        "/store/items",
        json.dumps({"namespace": ["notes"], "key": "k", "value": {}, "ttl": 1e-200}),
        422,
    ),
    ("POST", "/threads", json.dumps({"metadata": nested(DEEP)}), 422),
    ("POST", "/threads/{tid}/state", json.dumps({"values": {"messages": [], "x": nested(DEEP)}}), 422),
    (
        "POST",
        "/runs/wait",
        json.dumps({"assistant_id": "agent", "input": {"messages": [], "x": nested(DEEP)}}),
        422,
    ),
    ("PUT", "/store/items", json.dumps({"namespace": ["notes"], "key": "k", "value": nested(DEEP)}), 422),
    ("POST", "/store/items/search", json.dumps({"filter": {"k": {"$regex": "."}}}), 422),
    ("POST", "/store/items/search", json.dumps({"filter": {"k": {"eq": 1}}}), 422),
    ("POST", "/store/items/search", json.dumps({"namespace_prefix": ["langgraph"]}), 422),
    ("PUT", "/store/items", json.dumps({"namespace": ["langgraph"], "key": "k", "value": {}}), 422),
    ("POST", "/store/items/search", json.dumps({"namespace_prefix": ["memories", ""]}), 422),
    ("POST", "/store/items/search", json.dumps({"namespace_prefix": ["a.b"]}), 422),
    (
        "POST",
        "/runs",
        json.dumps({"assistant_id": "agent", "input": Q, "config": {"configurable": [1]}}),
        422,
    ),
    ("POST", "/runs", json.dumps({"assistant_id": "agent", "input": Q, "config": {"tags": "x"}}), 422),
    ("POST", "/runs", json.dumps({"assistant_id": "agent", "input": Q, "config": {"metadata": 5}}), 422),
    ("POST", "/threads/{tid}/state/checkpoint", json.dumps({"checkpoint": {"checkpoint_id": 5}}), 422),
    ("POST", "/threads/{tid}/history", json.dumps({"before": {"configurable": "x"}}), 422),
    ("POST", "/threads/{tid}/history", json.dumps({"checkpoint": {"checkpoint_id": ["x"]}}), 422),
]


@pytest.mark.parametrize(
    "method,path,text,status", OUT_OF_RANGE, ids=[f"{m} {p} {t[:40]}" for m, p, t, _ in OUT_OF_RANGE]
)
async def test_out_of_range_input_is_4xx_detail(client, db, tid, method, path, text, status):
    before = await written(db)
    r = await client.request(
        method,
        path.format(tid=tid),
        content=text.encode(),
        headers={**ALICE, "content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    assert set(r.json()) == {"detail"} and isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert await written(db) == before


@pytest.mark.parametrize(
    "path,params",
    [
        ("/threads/{tid}/runs", {"offset": str(2**63)}),
        ("/threads/{tid}/runs", {"limit": str(10**30)}),
        ("/threads/{tid}/history", {"limit": str(2**64)}),
        ("/assistants/agent/graph", {"xray": "²"}),
        ("/assistants/agent/graph", {"xray": "9" * 5000}),
    ],
)
async def test_out_of_range_query_parameters_are_422(client, db, tid, path, params):
    before = await written(db)
    r = await client.get(path.format(tid=tid), params=params, headers=ALICE)
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"detail"} and isinstance(r.json()["detail"], str)
    assert await written(db) == before


async def test_limits_at_the_bounds_are_accepted(client, tid):
    """The bounds are inclusive and documented: the largest offset and integer still work."""
    r = await client.post(
        "/threads/search", json={"offset": 2**63 - 1, "metadata": {"n": 2**63 - 1}}, headers=ALICE
    )
    assert r.status_code == 200 and r.json() == []
    r = await client.get(f"/threads/{tid}/runs", params={"offset": str(2**63 - 1)}, headers=ALICE)
    assert r.status_code == 200 and r.json() == []
    r = await client.post("/threads", json={"metadata": {"deep": nested(60), "n": -(2**63)}}, headers=ALICE)
    assert r.status_code == 200, r.text
    r = await client.get("/assistants/agent/graph", params={"xray": "2"}, headers=ALICE)
    assert r.status_code == 200 and r.json()["nodes"]
    r = await client.put(
        "/store/items",
        json={"namespace": ["notes"], "key": f"k-{uuid.uuid4()}", "value": {}, "ttl": 60 * 24 * 366 * 100},
        headers=ALICE,
    )
    assert r.status_code == 204, r.text
    r = await client.post("/store/items/search", json={"filter": {"n": {"$gte": 1}, "m": 2}}, headers=ALICE)
    assert r.status_code == 200
