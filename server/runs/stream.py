"""Streaming an attempt's graph into the run's event log, in the stream modes the run records.

The request as planned (and validated) when the run was created is planned again: the plan holds Python
objects (Command, Context) a JSON column cannot, and the pure planner gives the same answer every time.
"""

from __future__ import annotations

from typing import Any

from server.runs.attempt import RunHandle, run_user
from server.runs.errors import StaleResume
from server.runs.events import EventWriter
from server.runs.planner import Planner
from server.schemas import RunCreate
from server.serde import jsonable


async def stream_graph(graph: Any, planner: Planner, h: RunHandle, writer: EventWriter, resume: bool) -> Any:
    """Run the graph (from the run's input or command, or on from its checkpoint when `resume`), publishing
    its output; returns the last top-level values."""
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
        run_metadata={**(c.run["metadata"] or {}), "keel_epoch": c.epoch},
    )
    recorded = set(prep.modes) | set(body.record_modes or ())
    internal = recorded | {"values"}
    lg_modes = sorted({"messages" if m in ("messages", "messages-tuple") else m for m in internal})
    subgraphs = bool(body.stream_subgraphs)
    partial: dict[str, Any] = {}
    last_values: Any = None
    async for item in graph.astream(
        graph_input,
        config,
        context=prep.context,
        stream_mode=lg_modes,
        subgraphs=subgraphs,
        interrupt_before=body.interrupt_before,
        interrupt_after=body.interrupt_after,
        durability=kwargs.get("durability") or "sync",
        control=h.control,
    ):
        ns, mode, chunk = item if subgraphs else ((), *item)
        suffix = "".join(f"|{n}" for n in ns)
        if mode == "messages":
            msg, meta = chunk
            if "messages-tuple" in recorded:
                writer.publish("messages" + suffix, jsonable([msg, meta]))
            if "messages" in recorded:
                mid = getattr(msg, "id", None) or ""
                if mid not in partial:
                    partial[mid] = msg
                    writer.publish("messages/metadata" + suffix, {mid: {"metadata": jsonable(meta)}})
                else:
                    try:
                        partial[mid] = partial[mid] + msg
                    except TypeError:
                        partial[mid] = msg
                writer.publish("messages/partial" + suffix, [jsonable(partial[mid])])
            continue
        data = jsonable(chunk)
        if mode == "values" and not ns:
            last_values = data
        if mode in recorded:
            writer.publish(mode + suffix, data)
    return last_values
