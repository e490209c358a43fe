"""Streaming an attempt's graph into the run's event log, in the stream modes the run records.

The request as planned (and validated) when the run was created is planned again: the plan holds Python
objects (Command, Context) a JSON column cannot, and the pure planner gives the same answer every time.

What is logged is what the reference server (langgraph-api) sends: `values` and `updates` carry the
graph's output channels only (the thread's state keeps every channel), `messages` mode sends each message
as `messages/metadata` once, then `messages/partial` (a streamed chunk, accumulated, typed as the message
it becomes) or `messages/complete` (a whole message), `debug` checkpoints carry `checkpoint` and
`parent_checkpoint`, and `events` mode is LangChain's `astream_events` (v2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from langchain_core.messages import BaseMessage, BaseMessageChunk, message_chunk_to_message

from server.runs.attempt import RunHandle, run_user
from server.runs.errors import StaleResume
from server.runs.events import EventWriter
from server.runs.planner import Planner
from server.schemas import RunCreate
from server.serde import jsonable

# Run identity the reference server keeps in a run's configurable, so its debug checkpoints show it.
_CONFIG_IDS = ("run_id", "thread_id", "graph_id", "assistant_id", "user_id")


def output_values(graph: Any, values: Any) -> Any:
    """`values` restricted to the graph's output channels (what a run's values events and result carry)."""
    keys = graph.output_channels
    if not isinstance(values, dict):
        return values
    if isinstance(keys, str):
        return values.get(keys)
    return {k: v for k, v in values.items() if k in keys or k == "__interrupt__"}


def _checkpoint_ref(config: Any) -> dict[str, Any] | None:
    """The `checkpoint` object of a checkpoint's config, as the reference server derives it."""
    conf = (config or {}).get("configurable") or {}
    if not conf.get("thread_id") or not conf.get("checkpoint_id"):
        return None
    ref = {"checkpoint_id": conf["checkpoint_id"], "thread_id": conf["thread_id"]}
    if "checkpoint_ns" in conf:
        ref["checkpoint_ns"] = conf["checkpoint_ns"] or ""
    if "checkpoint_map" in conf:
        ref["checkpoint_map"] = conf["checkpoint_map"]
    return ref


def with_run_ids(payload: dict[str, Any], ids: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint payload whose config and parent_config name the run, as the reference's do."""
    payload = dict(payload)
    for key in ("config", "parent_config"):
        conf = payload.get(key)
        if isinstance(conf, dict):
            payload[key] = {**conf, "configurable": {**(conf.get("configurable") or {}), **ids}}
    return payload


def debug_chunk(chunk: Any, ids: dict[str, Any]) -> Any:
    """A `debug` event as the reference sends it: checkpoints name `checkpoint`/`parent_checkpoint`, their
    configs carry the run's ids, and a task's subgraph state is given as its `checkpoint`."""
    if not isinstance(chunk, dict) or chunk.get("type") != "checkpoint" or not chunk.get("payload"):
        return chunk
    payload = with_run_ids(chunk["payload"], ids)
    payload["checkpoint"] = _checkpoint_ref(payload.get("config"))
    payload["parent_checkpoint"] = _checkpoint_ref(payload.get("parent_config"))
    tasks = []
    for task in payload.get("tasks") or []:
        state = task.get("state") if isinstance(task, dict) else None
        if isinstance(state, dict) and state.get("configurable"):
            task = {k: v for k, v in task.items() if k != "state"}
            task["checkpoint"] = state["configurable"]
        tasks.append(task)
    payload["tasks"] = tasks
    return {**chunk, "payload": payload}


class _Publisher:
    """Turns the graph's stream parts into the run's logged events."""

    def __init__(self, writer: EventWriter, recorded: set[str], ids: dict[str, Any]) -> None:
        self.writer, self.recorded, self.ids = writer, recorded, ids
        self.messages: dict[str, Any] = {}  # message id -> the message accumulated so far
        self.last_values: Any = None

    def part(self, ns: tuple[str, ...], mode: str, chunk: Any) -> None:
        suffix = "".join(f"|{n}" for n in ns)
        if mode == "messages":
            self._message(suffix, *chunk)
            return
        if mode == "debug":
            chunk = debug_chunk(chunk, self.ids)
        elif mode == "checkpoints" and isinstance(chunk, dict):
            chunk = with_run_ids(chunk, self.ids)
        data = jsonable(chunk)
        if mode == "values" and not ns:
            self.last_values = data
        if mode in self.recorded:
            self.writer.publish(mode + suffix, data)

    def _message(self, suffix: str, msg: Any, meta: Any) -> None:
        if "messages-tuple" in self.recorded:
            self.writer.publish("messages" + suffix, jsonable([msg, meta]))
        if "messages" not in self.recorded or not isinstance(msg, BaseMessage):
            return
        mid = msg.id or ""
        if mid in self.messages:
            try:
                self.messages[mid] = self.messages[mid] + msg
            except TypeError:
                self.messages[mid] = msg
        else:
            self.messages[mid] = msg
            self.writer.publish("messages/metadata", {mid: {"metadata": jsonable(meta)}})
        event = "messages/partial" if isinstance(msg, BaseMessageChunk) else "messages/complete"
        self.writer.publish(event, [jsonable(message_chunk_to_message(self.messages[mid]))])


async def stream_graph(graph: Any, planner: Planner, h: RunHandle, writer: EventWriter, resume: bool) -> Any:
    """Run the graph (from the run's input or command, or on from its checkpoint when `resume`), publishing
    its output; returns the last top-level values (output channels only)."""
    c = h.claim
    kwargs = c.run["kwargs"] or {}
    body = RunCreate.model_validate({**kwargs.get("request", {}), "assistant_id": str(c.run["assistant_id"])})
    user = run_user(c)
    prep = planner.plan(user, body)
    assistant = prep.assistant
    if resume:
        graph_input: Any = None
        body = body.model_copy(update={"checkpoint_id": None, "checkpoint": None})
    else:
        graph_input = prep.graph_input
        if body.command is not None and "resume" in body.command.model_fields_set:
            snap = await graph.aget_state({"configurable": {"thread_id": c.thread_id}})
            if not snap.next:
                raise StaleResume("the thread has no pending interrupt to resume (already resumed?)")
    config = planner.run_config(
        body,
        thread_id=c.thread_id,
        run_id=c.run_id,
        user=user,
        assistant=assistant,
        run_metadata={**(c.run["metadata"] or {}), "keel_epoch": c.epoch, "run_attempt": c.attempt},
    )
    recorded = set(prep.modes) | set(body.record_modes or ())
    internal = (recorded - {"events"}) | {"values"}
    lg_modes = sorted({"messages" if m in ("messages", "messages-tuple") else m for m in internal})
    subgraphs = bool(body.stream_subgraphs)
    ids = {k: str(v) for k, v in config["metadata"].items() if k in _CONFIG_IDS}
    out = _Publisher(writer, recorded, ids)
    options: dict[str, Any] = {
        "context": prep.context,
        "stream_mode": lg_modes,
        "subgraphs": subgraphs,
        "interrupt_before": body.interrupt_before,
        "interrupt_after": body.interrupt_after,
        "durability": kwargs.get("durability") or "sync",
        "control": h.control,
    }
    if "events" in recorded:  # (the reference streams every channel in this mode: no output_keys)
        async for ns, mode, chunk in _with_events(graph, graph_input, config, options, writer):
            out.part(ns, mode, chunk)
    else:
        async for item in graph.astream(graph_input, config, output_keys=graph.output_channels, **options):
            ns, mode, chunk = item if subgraphs else ((), *item)
            out.part(ns, mode, chunk)
    return out.last_values


async def _with_events(
    graph: Any, graph_input: Any, config: dict[str, Any], options: dict[str, Any], writer: EventWriter
) -> AsyncIterator[tuple[tuple[str, ...], str, Any]]:
    """`astream_events` (v2): the run's own stream parts are yielded, every other event is logged as an
    `events` event (hidden ones skipped), as the reference server does."""
    root = str(config["run_id"])
    subgraphs = options["subgraphs"]
    async for event in graph.astream_events(graph_input, config, version="v2", **options):
        if "langsmith:hidden" in (event.get("tags") or ()):
            continue
        if event["event"] == "on_chain_stream" and str(event.get("run_id")) == root:
            item = event["data"]["chunk"]
            ns, mode, chunk = item if subgraphs else ((), *item)
            yield tuple(ns), mode, chunk
        else:
            writer.publish("events", jsonable(event))
