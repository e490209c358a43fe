"""The official `langgraph_sdk` client (0.4.14) against a live `keel serve`.

These are the calls a LangGraph user (and Studio) makes; every assertion is about what the SDK sees.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    UnprocessableEntityError,
)

from tests.support.live import live_server as _live_server

pytestmark = pytest.mark.slow

QUESTION = "How do I scale out workers?"
RECOVERY_QUESTION = "What happens to a run after a worker crash?"


def ask(text: str = QUESTION) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture
async def client(live_server) -> AsyncIterator[Any]:
    # api_key=None: never pick up LANGSMITH_API_KEY etc. from the environment.
    c = get_client(url=live_server.url, api_key=None)
    try:
        yield c
    finally:
        await c.aclose()


def http_status(exc: BaseException) -> int:
    """The status code of an SDK error.

    langgraph_sdk 0.4.14 maps most calls' errors to typed classes (NotFoundError, ConflictError, ...), but
    `runs.wait` goes through `request_reconnect`, which raises a plain httpx.HTTPStatusError with the
    response body added as a note. Both are httpx.HTTPStatusError.
    """
    assert isinstance(exc, httpx.HTTPStatusError), repr(exc)
    return exc.response.status_code


def last_ai(values: dict[str, Any]) -> dict[str, Any]:
    ais = [m for m in values.get("messages", []) if m.get("type") == "ai"]
    assert ais, f"no AI message in {values!r}"
    return ais[-1]


def assert_cited_answer(values: dict[str, Any], source: str = "scaling.md") -> None:
    """A final answer that cites a passage from the corpus."""
    assert values.get("status") == "done", values.get("status")
    answer = last_ai(values)["content"]
    assert isinstance(answer, str) and "[1]" in answer, answer
    assert "Sources:" in answer and source in answer, answer
    assert values.get("answer") == answer
    assert any(source in s["source"] for s in values.get("sources", [])), values.get("sources")


# ----------------------------------------------------------------------------------------------- assistants


async def test_assistants_search_get_graph_schemas(client):
    found = await client.assistants.search(metadata={"created_by": "system"})
    assert [a["graph_id"] for a in found] == ["agent"]
    a = found[0]
    uuid.UUID(a["assistant_id"])
    assert a["metadata"] == {"created_by": "system"}

    by_name = await client.assistants.get("agent")
    by_id = await client.assistants.get(a["assistant_id"])
    assert by_name == by_id == a

    graph = await client.assistants.get_graph("agent")
    node_ids = {n["id"] for n in graph["nodes"]}
    assert {"__start__", "__end__", "retrieve", "summarize", "critique"} <= node_ids
    assert {"source": "__start__", "target": "retrieve"} in [
        {k: e[k] for k in ("source", "target")} for e in graph["edges"]
    ]

    schemas = await client.assistants.get_schemas("agent")
    assert schemas["graph_id"] == "agent"
    assert schemas["input_schema"] and "messages" in schemas["input_schema"]["properties"]
    assert schemas["output_schema"] and "answer" in schemas["output_schema"]["properties"]
    assert schemas["state_schema"]

    # A graph id works as an assistant id (Keel's intended difference); any other id that is not a UUID is
    # 422 and an unknown UUID 404, as in the reference (docs/api.md, Assistants).
    with pytest.raises(UnprocessableEntityError) as err:
        await client.assistants.get("no-such-graph")
    assert err.value.status_code == 422 and "UUID" in err.value.message
    with pytest.raises(NotFoundError):
        await client.assistants.get(str(uuid.uuid4()))


# ----------------------------------------------------------------------------------------------- threads


async def test_threads_create_get_search_conflict(client):
    tag = uuid.uuid4().hex
    t = await client.threads.create(metadata={"suite": "compat", "tag": tag})
    tid = t["thread_id"]
    uuid.UUID(tid)
    assert t["status"] == "idle"
    assert t["metadata"] == {"suite": "compat", "tag": tag}
    for key in ("created_at", "updated_at"):
        assert t[key]

    got = await client.threads.get(tid)
    assert got["thread_id"] == tid and got["metadata"]["tag"] == tag

    found = await client.threads.search(metadata={"tag": tag})
    assert [x["thread_id"] for x in found] == [tid]
    assert await client.threads.search(metadata={"tag": "nothing-" + tag}) == []

    with pytest.raises(ConflictError) as err:
        await client.threads.create(thread_id=tid)
    # The SDK's error classes are httpx.HTTPStatusError subclasses carrying the response.
    assert isinstance(err.value, httpx.HTTPStatusError)
    assert err.value.status_code == 409 and err.value.response.status_code == 409
    assert tid in err.value.message

    same = await client.threads.create(thread_id=tid, if_exists="do_nothing")
    assert same["thread_id"] == tid and same["metadata"]["tag"] == tag

    # A caller-chosen id is honoured.
    mine = str(uuid.uuid4())
    assert (await client.threads.create(thread_id=mine))["thread_id"] == mine


# ----------------------------------------------------------------------------------------------- runs


async def test_runs_wait_answers_with_citation(client):
    t = await client.threads.create()
    created: list[dict] = []
    values = await client.runs.wait(t["thread_id"], "agent", input=ask(), on_run_created=created.append)
    assert_cited_answer(values)
    assert created and created[0]["thread_id"] == t["thread_id"]

    thread = await client.threads.get(t["thread_id"])
    assert thread["status"] == "idle"
    assert thread["metadata"]["graph_id"] == "agent"
    assert thread["values"]["answer"] == values["answer"]

    run = await client.runs.get(t["thread_id"], created[0]["run_id"])
    assert run["status"] == "success"
    runs = await client.runs.list(t["thread_id"])
    assert [r["run_id"] for r in runs] == [created[0]["run_id"]]

    # A second turn on the same thread answers the new question and keeps the conversation.
    values2 = await client.runs.wait(t["thread_id"], "agent", input=ask(RECOVERY_QUESTION))
    assert_cited_answer(values2, source="recovery.md")
    assert [m["type"] for m in values2["messages"]] == ["human", "ai", "human", "ai"]


async def test_runs_stream_values_and_updates(client):
    t = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            t["thread_id"], "agent", input=ask(), stream_mode=["values", "updates"]
        )
    ]
    events = [p.event for p in parts]
    assert events[0] == "metadata", events
    run_id = parts[0].data["run_id"]
    uuid.UUID(run_id)
    assert events[-1] == "values", events  # no trailing end event, as the reference server
    assert set(events) == {"metadata", "values", "updates"}, events

    updated_nodes = [node for p in parts if p.event == "updates" for node in p.data]
    assert updated_nodes[:3] == ["retrieve", "summarize", "critique"], updated_nodes
    final = [p.data for p in parts if p.event == "values"][-1]
    assert_cited_answer(final)

    run = await client.runs.get(t["thread_id"], run_id)
    assert run["status"] == "success"
    assert (await client.threads.get(t["thread_id"]))["status"] == "idle"


async def test_runs_stream_messages_tuple(client):
    t = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(t["thread_id"], "agent", input=ask(), stream_mode="messages-tuple")
    ]
    events = [p.event for p in parts]
    assert events[0] == "metadata", events
    messages = [p.data for p in parts if p.event == "messages"]
    assert messages, events
    assert set(events) == {"metadata", "messages"}, events
    for data in messages:
        assert isinstance(data, list) and len(data) == 2, data
        chunk, meta = data
        assert isinstance(chunk, dict) and "content" in chunk and "type" in chunk
        assert isinstance(meta, dict) and "langgraph_node" in meta
    from_summarize = [c for c, m in messages if m["langgraph_node"] == "summarize"]
    assert from_summarize, [m["langgraph_node"] for _, m in messages]
    text = "".join(c["content"] for c in from_summarize if isinstance(c["content"], str))
    assert "[1]" in text and "scaling.md" in text, text


async def test_interrupt_before_then_resume_with_null_input(client):
    tid = (await client.threads.create())["thread_id"]
    values = await client.runs.wait(tid, "agent", input=ask(), interrupt_before=["critique"])
    # the graph's output channels only (internal ones such as the draft stay in the thread's state)
    assert isinstance(values, dict) and set(values) == {"messages", "answer", "sources", "status"}, values
    assert values["status"] == "running"  # stopped before the critic ran

    state = await client.threads.get_state(tid)
    assert state["next"] == ["critique"]
    assert (await client.threads.get(tid))["status"] == "interrupted"

    resumed = await client.runs.wait(tid, "agent", input=None)
    assert_cited_answer(resumed)
    state = await client.threads.get_state(tid)
    assert state["values"]["critique"]["score"] >= 0  # the critic ran (its verdict is in the thread's state)
    assert state["next"] == []
    assert (await client.threads.get(tid))["status"] == "idle"


@pytest.mark.parametrize("command", [{"resume": "go on"}, {"goto": "critique"}], ids=["resume", "goto"])
async def test_interrupt_before_then_command(client, command):
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "agent", input=ask(), interrupt_before=["critique"])
    assert (await client.threads.get_state(tid))["next"] == ["critique"]

    resumed = await client.runs.wait(tid, "agent", command=command)
    assert resumed["status"] == "done"
    assert (await client.threads.get_state(tid))["values"]["critique"], "the critic ran"
    assert (await client.threads.get_state(tid))["next"] == []
    assert (await client.threads.get(tid))["status"] == "idle"


async def test_history_newest_first_with_parent_chain_and_before(client):
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "agent", input=ask())
    history = await client.threads.get_history(tid, limit=50)
    assert len(history) >= 4, len(history)
    steps = [h["metadata"]["step"] for h in history]
    assert steps == sorted(steps, reverse=True), steps
    assert history[0]["next"] == [] and history[0]["values"]["status"] == "done"
    assert history[-1]["metadata"]["source"] == "input" and history[-1]["parent_checkpoint"] is None
    for newer, older in zip(history, history[1:], strict=False):
        assert newer["checkpoint"]["checkpoint_id"] == newer["checkpoint_id"]
        assert newer["parent_checkpoint"]["checkpoint_id"] == older["checkpoint"]["checkpoint_id"]
        assert newer["parent_checkpoint_id"] == older["checkpoint_id"]

    latest = await client.threads.get_state(tid)
    assert latest["checkpoint"]["checkpoint_id"] == history[0]["checkpoint_id"]

    pivot = history[1]["checkpoint_id"]
    expected = [h["checkpoint_id"] for h in history[2:]]
    as_config = await client.threads.get_history(
        tid, limit=50, before={"configurable": {"checkpoint_id": pivot}}
    )
    as_checkpoint = await client.threads.get_history(tid, limit=50, before={"checkpoint_id": pivot})
    # The GET form of the route takes the bare checkpoint id.
    as_query = await client.http.get(f"/threads/{tid}/history", params={"limit": 50, "before": pivot})
    for got in (as_config, as_checkpoint, as_query):
        assert [h["checkpoint_id"] for h in got] == expected
    # get_history POSTs `before`; a bare string there is 422, as the reference's schema has it.
    with pytest.raises(UnprocessableEntityError) as err:
        await client.threads.get_history(tid, limit=50, before=pivot)
    assert "before" in err.value.message

    limited = await client.threads.get_history(tid, limit=2)
    assert [h["checkpoint_id"] for h in limited] == [h["checkpoint_id"] for h in history[:2]]


async def test_stateless_wait_and_stream(client):
    values = await client.runs.wait(None, "agent", input=ask())
    assert_cited_answer(values)

    parts = [
        p
        async for p in client.runs.stream(
            None, "agent", input=ask(RECOVERY_QUESTION), stream_mode=["values", "updates"]
        )
    ]
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[-1] == "values", events
    final = [p.data for p in parts if p.event == "values"][-1]
    assert_cited_answer(final, source="recovery.md")


# ----------------------------------------------------------------------------------------------- errors


async def test_sdk_error_classes(client):
    missing = str(uuid.uuid4())
    with pytest.raises(NotFoundError) as err:
        await client.threads.get(missing)
    assert err.value.status_code == 404
    assert missing in err.value.message and "not found" in err.value.message

    with pytest.raises(UnprocessableEntityError) as err:
        await client.threads.get("not-a-uuid")
    assert err.value.status_code == 422 and "UUID" in err.value.message

    tid = (await client.threads.create())["thread_id"]
    with pytest.raises(httpx.HTTPStatusError) as err:
        await client.runs.wait(tid, "no-such-assistant", input=ask())
    assert http_status(err.value) == 422
    assert "no-such-assistant" in err.value.response.json()["detail"]
    assert (await client.threads.get(tid))["status"] == "idle"
    assert await client.runs.list(tid) == []

    with pytest.raises(httpx.HTTPStatusError) as err:
        await client.runs.wait(str(uuid.uuid4()), "agent", input=ask())
    assert http_status(err.value) == 404
    assert err.value.response.json() == {"detail": "Thread or assistant not found."}

    # Streams use the typed errors.
    with pytest.raises(UnprocessableEntityError):
        async for _ in client.runs.stream(tid, "no-such-assistant", input=ask()):
            pass
    with pytest.raises(NotFoundError):
        async for _ in client.runs.stream(str(uuid.uuid4()), "agent", input=ask()):
            pass


async def test_failed_create_writes_nothing(client):
    # (An unknown interrupt_before node is no failure: it is accepted and never interrupts, as in the
    # reference; docs/api.md, Run request body.)
    for bad, status in (
        ({"assistant_id": "no-such-assistant"}, 422),
        ({"context": {"user_id": "mallory"}}, 422),
        ({"config": {"configurable": {"k": 1}}, "context": {"retrieve_k": 2}}, 400),
    ):
        tid = str(uuid.uuid4())
        kwargs: dict[str, Any] = {"assistant_id": "agent", "input": ask(), "if_not_exists": "create", **bad}
        assistant = kwargs.pop("assistant_id")
        with pytest.raises(httpx.HTTPStatusError) as err:
            await client.runs.wait(tid, assistant, **kwargs)
        assert http_status(err.value) == status, bad
        with pytest.raises(NotFoundError):
            await client.threads.get(tid)

    # The same call with a valid body creates the thread and answers.
    tid = str(uuid.uuid4())
    values = await client.runs.wait(tid, "agent", input=ask(), if_not_exists="create")
    assert_cited_answer(values)
    assert (await client.threads.get(tid))["status"] == "idle"


async def test_raw_http_error_bodies(live_server):
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        r = await http.post(
            "/threads", content=b'{"metadata": {', headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]

        big = b'{"metadata": {"blob": "' + b"x" * 1_100_000 + b'"}}'
        r = await http.post("/threads", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert "too large" in r.json()["detail"]

        async def chunks():  # no Content-Length: the guard must count the streamed bytes
            yield b'{"metadata": {"blob": "'
            for _ in range(12):
                yield b"y" * 100_000
            yield b'"}}'

        r = await http.post("/threads", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert isinstance(r.json()["detail"], str)

        r = await http.post("/threads/search", json={"limit": "ten"})
        assert r.status_code == 422, r.text
        assert "limit" in r.json()["detail"]

        r = await http.post("/threads/search", json=[1, 2])
        assert r.status_code == 422, r.text
        assert isinstance(r.json()["detail"], str)

        r = await http.post("/runs/wait", json={"input": ask()})  # no assistant_id
        assert r.status_code == 422, r.text
        assert "assistant_id" in r.json()["detail"]

        r = await http.get(f"/threads/{uuid.uuid4()}")
        assert r.status_code == 404 and isinstance(r.json()["detail"], str)

        # Studio posts JSON labelled text/plain; it is accepted.
        r = await http.post(
            "/threads",
            content=b'{"metadata": {"via": "text/plain"}}',
            headers={"content-type": "text/plain;charset=UTF-8"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["metadata"] == {"via": "text/plain"}

        r = await http.get("/ok")
        assert r.json() == {"ok": True, "services": {}}
        assert (await http.get("/ok", params={"check_db": 1})).json() == {
            "ok": True,
            "services": {"postgres": "healthy"},
        }


# ----------------------------------------------------------------------------------------------- auth


@pytest.fixture(scope="module")
def auth_server(database_url, live_server):
    """A second server on the same (already ingested) database with API keys: ka -> alice, kb -> bob."""
    with _live_server(database_url, extra_env={"KEEL_API_KEYS": "ka:alice,kb:bob"}, corpus={}) as srv:
        yield srv


async def test_api_keys_isolate_users(auth_server):
    alice = get_client(url=auth_server.url, api_key="ka")
    bob = get_client(url=auth_server.url, api_key="kb")
    anon = get_client(url=auth_server.url, api_key=None)
    wrong = get_client(url=auth_server.url, api_key="wrong")
    try:
        t = await alice.threads.create(metadata={"owner": "alice"})
        tid = t["thread_id"]
        assert (await alice.threads.get(tid))["thread_id"] == tid

        with pytest.raises(NotFoundError):
            await bob.threads.get(tid)
        with pytest.raises(httpx.HTTPStatusError) as err:
            await bob.runs.wait(tid, "agent", input=ask())
        assert http_status(err.value) == 404
        assert await bob.threads.search(metadata={"owner": "alice"}) == []
        assert [x["thread_id"] for x in await alice.threads.search(metadata={"owner": "alice"})] == [tid]

        with pytest.raises(AuthenticationError) as err:
            await anon.threads.get(tid)
        assert err.value.status_code == 401
        with pytest.raises(AuthenticationError):
            await wrong.threads.search()

        values = await alice.runs.wait(tid, "agent", input=ask())
        assert_cited_answer(values)
    finally:
        for c in (alice, bob, anon, wrong):
            await c.aclose()

    async with httpx.AsyncClient(base_url=auth_server.url) as http:
        r = await http.get(f"/threads/{tid}", headers={"authorization": "Bearer ka"})
        assert r.status_code == 200 and r.json()["thread_id"] == tid
        r = await http.get(f"/threads/{tid}")
        assert r.status_code == 401 and isinstance(r.json()["detail"], str)
        assert (await http.get("/ok")).status_code == 200


async def test_background_run_join_and_resumable_stream(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "agent", input=ask())
    assert run["status"] == "pending"
    # A background run records every mode, so a join may ask for updates only; without last_event_id a
    # join sends live events only (as the reference server), with it Keel replays its durable log.
    parts = [
        p async for p in client.runs.join_stream(tid, run["run_id"], stream_mode="updates", last_event_id="0")
    ]
    events = [p.event for p in parts]
    assert "updates" in events and "values" not in events and events[-1] == "updates", events
    joined = await client.runs.join(tid, run["run_id"])
    assert joined["status"] == "done"
    listed = await client.runs.list(tid)
    assert [r["run_id"] for r in listed] == [run["run_id"]] and listed[0]["status"] == "success"

    # A resumable stream carries ids; joining with last_event_id replays exactly what came after it.
    parts = [
        p
        async for p in client.runs.stream(
            tid,
            "agent",
            input=ask(RECOVERY_QUESTION),
            stream_mode=["values", "updates"],
            stream_resumable=True,
        )
    ]
    ids = [int(p.id) for p in parts if p.id is not None]
    assert ids == list(range(1, len(ids) + 1))
    runs = await client.runs.list(tid)
    rid = runs[0]["run_id"]
    tail = [p async for p in client.runs.join_stream(tid, rid, last_event_id=str(ids[2]))]
    assert [int(p.id) for p in tail if p.id is not None] == ids[3:]


async def test_cancel_and_delete_run(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "agent", input=ask(), interrupt_before=["summarize"])
    await client.runs.join(tid, run["run_id"])
    done = await client.runs.get(tid, run["run_id"])
    assert done["status"] == "success"  # stopped at an interrupt: success, its thread interrupted
    with pytest.raises(httpx.HTTPStatusError) as e:
        await client.runs.cancel(tid, run["run_id"])
    assert http_status(e.value) == 404  # nothing to cancel, as the reference answers
    await client.runs.delete(tid, run["run_id"])
    with pytest.raises(NotFoundError):
        await client.runs.get(tid, run["run_id"])


async def test_store_api_is_scoped_to_the_caller(auth_server):
    """The LangGraph Server store API (Studio's memory view) over pgvector memory, per user."""
    alice = get_client(url=auth_server.url, api_key="ka")
    bob = get_client(url=auth_server.url, api_key="kb")
    try:
        await alice.store.put_item(
            ["memories", "prefs"], key="drink", value={"text": "Alice drinks green tea"}
        )
        await alice.store.put_item(["memories"], key="pet", value={"text": "Alice has a cat named Miso"})
        got = await alice.store.get_item(["memories", "prefs"], key="drink")
        assert got["value"] == {"text": "Alice drinks green tea"} and got["namespace"] == [
            "memories",
            "prefs",
        ]
        hits = (await alice.store.search_items(["memories"], query="which animal lives with her", limit=5))[
            "items"
        ]
        assert hits and hits[0]["key"] == "pet" and "score" in hits[0]
        spaces = (await alice.store.list_namespaces())["namespaces"]
        assert ["memories", "prefs"] in spaces
        # Bob sees none of it, even naming the same namespace and key.
        assert await bob.store.get_item(["memories", "prefs"], key="drink") is None  # null, as the reference
        assert (await bob.store.search_items(["memories"], query="tea"))["items"] == []
        assert (await bob.store.list_namespaces())["namespaces"] == []
        await bob.store.delete_item(
            ["memories", "prefs"], key="drink"
        )  # deletes bob's (nonexistent) item only
        assert (await alice.store.get_item(["memories", "prefs"], key="drink"))["key"] == "drink"
        await alice.store.delete_item(["memories", "prefs"], key="drink")
        assert await alice.store.get_item(["memories", "prefs"], key="drink") is None
        with pytest.raises(UnprocessableEntityError):
            await alice.store.search_items(["bad.label"])
    finally:
        await alice.aclose()
        await bob.aclose()
