"""What Studio and the SDKs read from a run matches the reference server (langgraph-api 0.16.7, `langgraph
dev` serving this project's langgraph.json): the expectations below were taken from its answers to the same
requests. In-process over the real database, with the project's graph and its offline model."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from agent.models import register_model, unregister_model
from server.settings import Settings
from tests.support.inprocess import api_client, running_service
from tests.support.scripted import ScriptedChatModel

H = {"x-api-key": "ka"}
Q = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}
OUTPUT = {"messages", "answer", "sources", "status"}  # agent.state.OutputState: what the reference sends
ONE_PASS = {"max_revisions": 0}


@pytest.fixture(scope="module")
async def svc(db):
    async with running_service(Settings(keel_api_keys="ka:alice"), db) as service:
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


def events(text: str) -> list[tuple[str, object]]:
    out, name, data = [], None, []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and name is not None:
            out.append((name, json.loads("\n".join(data)) if data else None))
            name, data = None, []
    return out


async def thread(client) -> str:
    r = await client.post("/threads", json={}, headers=H)
    assert r.status_code == 200, r.text
    return r.json()["thread_id"]


async def stream(client, tid: str, **body) -> list[tuple[str, object]]:
    r = await client.post(
        f"/threads/{tid}/runs/stream", json={"assistant_id": "agent", "input": Q, **body}, headers=H
    )
    assert r.status_code == 200, r.text
    return events(r.text)


async def test_values_updates_and_wait_carry_the_output_schema_only(client):
    tid = await thread(client)
    seen = await stream(client, tid, stream_mode=["values", "updates"], context=ONE_PASS)
    values = [d for e, d in seen if e == "values"]
    updates = [d for e, d in seen if e == "updates"]
    assert values and updates
    assert all(set(v) <= OUTPUT for v in values), values[-1].keys()
    assert set(values[-1]) == OUTPUT
    for u in updates:
        for node, written in u.items():
            assert set(written or {}) <= OUTPUT, (node, written)
    r = await client.post(
        f"/threads/{tid}/runs/wait",
        json={"assistant_id": "agent", "input": Q, "context": ONE_PASS},
        headers=H,
    )
    assert set(r.json()) == OUTPUT
    # The thread's state keeps every channel, as the reference's does.
    state = (await client.get(f"/threads/{tid}/state", headers=H)).json()
    assert {"passages", "draft", "critique"} <= set(state["values"])


async def test_no_trailing_end_event(client):
    tid = await thread(client)
    seen = await stream(client, tid, stream_mode=["values"], context=ONE_PASS)
    assert seen[0][0] == "metadata" and seen[-1][0] == "values"
    assert "end" not in [e for e, _ in seen]


async def test_messages_mode_sends_typed_partials_and_complete_messages(client):
    tid = await thread(client)
    seen = await stream(client, tid, stream_mode=["messages"], context=ONE_PASS)
    names = [e for e, _ in seen]
    assert set(names) == {"metadata", "messages/metadata", "messages/partial", "messages/complete"}, names
    sent = [m for e, d in seen if e.startswith("messages/") and e != "messages/metadata" for m in d]
    assert sent and all(m["type"] == "ai" for m in sent), {m["type"] for m in sent}
    assert not any("tool_call_chunks" in m or "chunk_position" in m for m in sent)
    # one messages/metadata per message, before its first part
    ids = [next(iter(d)) for e, d in seen if e == "messages/metadata"]
    assert len(ids) == len(set(ids)) == len({m["id"] for m in sent})
    # the graph's final answer is a whole message: messages/complete, as the reference sends it
    assert names[-1] == "messages/complete" and seen[-1][1][0]["id"].startswith("final-")


async def test_debug_checkpoints_name_their_checkpoint_and_the_run(client):
    tid = await thread(client)
    seen = await stream(client, tid, stream_mode=["debug"], context=ONE_PASS)
    run_id = seen[0][1]["run_id"]
    checkpoints = [d["payload"] for e, d in seen if e == "debug" and d["type"] == "checkpoint"]
    assert len(checkpoints) >= 3
    first, second = checkpoints[0], checkpoints[1]
    assert first["parent_checkpoint"] is None
    assert second["parent_checkpoint"] == first["checkpoint"]
    assert second["checkpoint"]["thread_id"] == tid and second["checkpoint"]["checkpoint_ns"] == ""
    assert second["checkpoint"]["checkpoint_id"] == second["config"]["configurable"]["checkpoint_id"]
    conf = second["config"]["configurable"]
    assert conf["run_id"] == run_id and conf["thread_id"] == tid and conf["graph_id"] == "agent"
    assert uuid.UUID(conf["assistant_id"])
    # `checkpoints` mode: the same configs
    seen = await stream(client, tid, stream_mode=["checkpoints"], context=ONE_PASS)
    run_id = seen[0][1]["run_id"]
    conf = [d for e, d in seen if e == "checkpoints"][-1]["config"]["configurable"]
    assert conf["run_id"] == run_id and conf["graph_id"] == "agent" and conf["thread_id"] == tid


async def test_events_mode_alone_and_mixed(client):
    tid = await thread(client)
    seen = await stream(client, tid, stream_mode=["updates", "events"], context=ONE_PASS)
    kinds = {d["event"] for e, d in seen if e == "events"}
    assert {"on_chain_start", "on_chain_end", "on_chat_model_stream"} <= kinds, kinds
    assert [e for e, _ in seen].count("updates") == 3  # retrieve, summarize, critique
    # the run's own stream parts are sent in their modes, not as `events`
    root = {d["run_id"] for e, d in seen if e == "events" and d["event"] == "on_chain_stream"}
    assert seen[0][1]["run_id"] not in root
    only = await stream(client, tid, stream_mode="events", context=ONE_PASS)
    assert {e for e, _ in only} == {"metadata", "events"}


async def test_interrupted_run_succeeds_and_its_thread_is_interrupted(client):
    tid = await thread(client)
    seen = await stream(client, tid, stream_mode=["updates"], interrupt_before=["summarize"])
    assert seen[-1] == ("updates", {"__interrupt__": []})
    [run] = (await client.get(f"/threads/{tid}/runs", headers=H)).json()
    assert run["status"] == "success"
    assert (await client.get(f"/threads/{tid}", headers=H)).json()["status"] == "interrupted"


async def test_joining_finished_and_unknown_runs(client):
    tid = await thread(client)
    seen = await stream(client, tid, stream_mode=["values"], context=ONE_PASS)
    rid = seen[0][1]["run_id"]
    # join of a finished run: the thread's values, every channel (the reference's fallback)
    r = await client.get(f"/threads/{tid}/runs/{rid}/join", headers=H)
    assert r.status_code == 200 and {"passages", "answer"} <= set(r.json())
    # join_stream of a finished run: nothing (live events only) ...
    r = await client.get(f"/threads/{tid}/runs/{rid}/stream", headers=H)
    assert r.status_code == 200 and events(r.text) == []
    # ... unless Last-Event-ID asks for the logged ones after it (Keel's durable log)
    r = await client.get(f"/threads/{tid}/runs/{rid}/stream", headers={**H, "Last-Event-ID": "1"})
    replay = [e for e, _ in events(r.text)]
    assert replay and "metadata" not in replay and set(replay) == {"values"}
    unknown = uuid.uuid4()
    r = await client.get(f"/threads/{tid}/runs/{unknown}/join", headers=H)
    assert r.status_code == 200
    assert r.json() == {"__error__": {"error": "HTTPException", "message": "404: Run not found"}}
    r = await client.get(f"/threads/{tid}/runs/{unknown}/stream", headers=H)
    assert r.status_code == 200
    assert events(r.text) == [("error", {"error": "HTTPException", "message": "404: Run not found"})]


class Gated(ScriptedChatModel):
    gate: asyncio.Event
    entered: asyncio.Event  # set when a call reaches the gate: the run is blocked in the model

    async def _agenerate(self, messages, stop=None, run_manager=None, **kw):
        self.entered.set()
        await self.gate.wait()
        return self._generate(messages, stop=stop, **kw)


async def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_join_stream_of_a_running_run_is_live_and_a_cancel_sends_no_error(client, svc):
    gate, entered = asyncio.Event(), asyncio.Event()
    name = f"test:gated-{uuid.uuid4()}"
    register_model(
        name,
        Gated(
            ["slow answer", {"score": 0.9, "reasons": [], "revised_query": ""}], gate=gate, entered=entered
        ),
    )
    svc.settings.keel_model = name
    try:
        tid = await thread(client)
        r = await client.post(
            f"/threads/{tid}/runs",
            json={"assistant_id": "agent", "input": Q, "stream_mode": ["values", "updates"]},
            headers=H,
        )
        rid = r.json()["run_id"]

        async def blocked_and_logged() -> bool:
            # The run is blocked in summarize's model call, and every event it sent before (the input's
            # values, retrieve's update, the values after retrieve) is in the log. The writer flushes in
            # batches, so retrieve's update alone can be logged before the values that follow it: a join
            # that read the log position in between saw those values as a live event.
            if not entered.is_set():
                return False
            async with svc.db.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT count(*) FILTER (WHERE event = 'updates') AS updates,"
                    " count(*) FILTER (WHERE event = 'values') AS vals"
                    " FROM keel_run_events WHERE run_id = %s",
                    (rid,),
                )
                row = await cur.fetchone()
                return row["updates"] >= 1 and row["vals"] >= 2

        await wait_for(blocked_and_logged, "the run to block in summarize with retrieve's events logged")
        joined = asyncio.create_task(client.get(f"/threads/{tid}/runs/{rid}/stream", headers=H))

        async def following() -> bool:  # the join has read the log position and tails the run
            return bool(svc.feed._waiters.get(rid))

        await wait_for(following, "the join to follow the run")
        r = await client.post(f"/threads/{tid}/runs/{rid}/cancel", params={"wait": 1}, headers=H)
        assert r.status_code in (200, 202, 204), r.text
        got = await asyncio.wait_for(joined, 10)
        seen = events(got.text)
        # the run's metadata (which run, which attempt), then live events only: no replay of what happened
        # before the join (values, retrieve's update), and no error event for the cancel
        assert seen == [("metadata", {"run_id": rid, "attempt": 1})], seen
        assert (await client.get(f"/threads/{tid}/runs/{rid}", headers=H)).json()["status"] == "interrupted"
    finally:
        gate.set()
        svc.settings.keel_model = None
        unregister_model(name)
