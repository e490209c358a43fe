"""Run a question set through the run engine: one thread per item, follow-ups on the same thread.

Each turn is a queued run like `keel ask` or `POST /threads/{id}/runs` makes (lease, event log, checkpoints),
executed by a worker of the service. The run streams `updates` and `debug`: the retrieve node's task results
give the retrieved passages, and each node's `task` / `task_result` timestamps give its latency.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from server.evaluation.dataset import Item, Turn

if TYPE_CHECKING:
    from server.service import KeelService


@dataclass
class TurnResult:
    """What one turn's run did: its answer, final status, retrieved passages and per-node timings."""

    turn: Turn
    thread_id: str
    run_id: str = ""
    run_status: str = ""
    status: str = ""
    answer: str = ""
    error: str | None = None
    retrievals: list[list[dict[str, str]]] = field(default_factory=list)
    node_ms: dict[str, list[float]] = field(default_factory=dict)
    total_ms: float = 0.0
    revisions: int = 0


def _passages(result: Any) -> list[dict[str, str]] | None:
    """The passages a retrieve task returned, best first: `passages` when present, else `sources`."""
    if not isinstance(result, dict):
        return None
    for key in ("passages", "sources"):
        value = result.get(key)
        if isinstance(value, list) and all(isinstance(p, dict) for p in value):
            return [
                {
                    "source": str(p.get("source") or ""),
                    "title": str(p.get("title") or ""),
                    "heading": str(p.get("heading") or ""),
                }
                for p in value
            ]
    return None


def _timestamp(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def observe(result: TurnResult, event: str, data: Any, started: dict[str, tuple[str, float]]) -> None:
    """Fold one stream event into the turn's result (retrievals, node timings, errors)."""
    if event == "error" and isinstance(data, dict):
        result.error = f"{data.get('error')}: {data.get('message')}"
        return
    if event != "debug" or not isinstance(data, dict):
        return
    payload = data.get("payload")
    if not isinstance(payload, dict):
        return
    kind, task_id, ts = data.get("type"), str(payload.get("id")), _timestamp(data.get("timestamp"))
    if kind == "task" and ts is not None:
        started[task_id] = (str(payload.get("name")), ts)
    elif kind == "task_result":
        name = str(payload.get("name"))
        begun = started.pop(task_id, None)
        if begun is not None and ts is not None:
            result.node_ms.setdefault(name, []).append((ts - begun[1]) * 1000.0)
        if name == "retrieve":
            passages = _passages(payload.get("result"))
            if passages is not None:
                result.retrievals.append(passages)


async def run_turn(
    svc: KeelService,
    turn: Turn,
    thread_id: str,
    *,
    context: dict[str, Any],
    timeout: float,
) -> TurnResult:
    """One question as a run on `thread_id`; waits for the run to end (or `timeout`, then cancels it)."""
    from server.auth import LOCAL_USER, User
    from server.schemas import RunCreate
    from server.service import GRAPH_ID

    result = TurnResult(turn, thread_id)
    body = RunCreate(
        assistant_id=GRAPH_ID,
        input={"messages": [{"role": "user", "content": turn.question}]},
        stream_mode=["updates", "debug"],
        if_not_exists="create",
        context=context or None,
        metadata={"source": "keel eval", "eval_item": turn.key},
    )
    t0 = time.perf_counter()
    created = await svc.runs.create(User(LOCAL_USER), thread_id, body)
    result.run_id = str(created["run_id"])
    started: dict[str, tuple[str, float]] = {}

    async def follow() -> None:
        async for ev in svc.feed.subscribe(result.run_id):
            observe(result, ev.event, ev.data, started)

    try:
        await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        result.error = f"timeout after {timeout:.0f}s"
        await svc.runs.cancel(created)
    row = await svc.feed.wait_terminal(result.run_id)
    result.total_ms = (time.perf_counter() - t0) * 1000.0
    result.run_status = str((row or {}).get("status") or "")
    state = await svc.graph.aget_state({"configurable": {"thread_id": thread_id}})
    values = state.values or {}
    result.answer = str(values.get("answer") or "")
    result.status = str(values.get("status") or "")
    result.revisions = int(values.get("revisions") or 0)
    if result.run_status == "error" and result.error is None:
        result.error = str((row or {}).get("error") or "run failed")
    return result


async def run_items(
    svc: KeelService,
    items: list[Item],
    *,
    context: dict[str, Any],
    timeout: float = 120.0,
    progress: Any = None,
) -> list[TurnResult]:
    """Every item on a fresh thread, its turns in order; `progress(result)` after each turn."""
    results: list[TurnResult] = []
    for item in items:
        thread_id = str(uuid.uuid4())
        for turn in item.turns:
            r = await run_turn(svc, turn, thread_id, context=context, timeout=timeout)
            results.append(r)
            if progress is not None:
                progress(r)
    return results
