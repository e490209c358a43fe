"""LangGraph StateSnapshots as LangGraph Server API ThreadState JSON."""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.types import StateSnapshot

from server.serde import jsonable


def _checkpoint(config: RunnableConfig | None) -> dict[str, Any] | None:
    if not config:
        return None
    c = config.get("configurable") or {}
    if not c.get("checkpoint_id"):
        return None
    out = {"thread_id": str(c.get("thread_id")), "checkpoint_id": c["checkpoint_id"]}
    # As langgraph-api: checkpoint_ns and checkpoint_map only when the config has them.
    if "checkpoint_ns" in c:
        out["checkpoint_ns"] = c["checkpoint_ns"] or ""
    if "checkpoint_map" in c:
        out["checkpoint_map"] = c["checkpoint_map"]
    return out


def _interrupt(i: Any) -> dict[str, Any]:
    return {"value": jsonable(getattr(i, "value", i)), "id": getattr(i, "id", None)}


def interrupts_of(snapshot: StateSnapshot) -> list[dict[str, Any]]:
    """Every pending interrupt of a snapshot, flat."""
    out = [_interrupt(i) for i in (snapshot.interrupts or ())]
    if not out:
        for t in snapshot.tasks:
            out.extend(_interrupt(i) for i in t.interrupts)
    return out


def interrupts_by_task(snapshot: StateSnapshot) -> dict[str, list[dict[str, Any]]]:
    """Interrupts keyed by task id, as Thread.interrupts carries them."""
    return {t.id: [_interrupt(i) for i in t.interrupts] for t in snapshot.tasks if t.interrupts}


def snapshot_json(s: StateSnapshot, *, select: list[str] | None = None) -> dict[str, Any]:
    """ThreadState: values, next, tasks, checkpoint, parent_checkpoint, metadata, created_at, interrupts."""
    checkpoint = _checkpoint(s.config)
    parent = _checkpoint(s.parent_config)
    out: dict[str, Any] = {
        "values": jsonable(s.values if s.values is not None else {}),
        "next": list(s.next),
        "tasks": [
            {
                "id": t.id,
                "name": t.name,
                "path": jsonable(list(t.path)),
                "error": (str(t.error) if t.error else None),
                "interrupts": [_interrupt(i) for i in t.interrupts],
                "checkpoint": _checkpoint(t.state) if isinstance(t.state, dict) else None,
                "state": None,
                "result": jsonable(t.result) if getattr(t, "result", None) is not None else None,
            }
            for t in s.tasks
        ],
        "checkpoint": checkpoint,
        "parent_checkpoint": parent,
        "metadata": jsonable(s.metadata) if s.metadata is not None else None,  # null with no checkpoint
        "created_at": s.created_at,
        "interrupts": interrupts_of(s),
        "checkpoint_id": checkpoint["checkpoint_id"] if checkpoint else None,
        "parent_checkpoint_id": parent["checkpoint_id"] if parent else None,
    }
    if select:
        keep = {k.split(".", 1)[0] for k in select}
        out = {k: v for k, v in out.items() if k in keep}
        value_keys = [k.split(".", 1)[1] for k in select if k.startswith("values.")]
        if value_keys and isinstance(out.get("values"), dict):
            out["values"] = {k: v for k, v in out["values"].items() if k in value_keys}
    return out
