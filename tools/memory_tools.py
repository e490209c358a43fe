"""remember / recall: the user's long-term memory in the store, namespaced by the authenticated user."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, Field

from tools.registry import ToolContext, ToolSpec

# A namespace label may not contain "." (the Postgres store joins labels with it), so a user id is escaped:
# "%" and "." (and NUL, which Postgres text cannot hold) become %XX. Injective and reversible, and the ids of
# typical users ("local", "alice", "eve_x") are their own label. Migration 8 (server/db/) moved older rows.
_ESCAPES = {"%": "%25", ".": "%2E", "\x00": "%00"}
_EMPTY = "%"  # no escape is a bare "%", so the empty id cannot collide with another


def user_label(user_id: str) -> str:
    """The store namespace label of a user id: distinct ids always get distinct labels."""
    return "".join(_ESCAPES.get(c, c) for c in user_id) if user_id else _EMPTY


def user_from_label(label: str) -> str:
    """The user id a label was made from (the inverse of `user_label`)."""
    if label == _EMPTY:
        return ""
    return re.sub(r"%(25|2E|00)", lambda m: {"25": "%", "2E": ".", "00": "\x00"}[m.group(1)], label)


def memories_namespace(user_id: str) -> tuple[str, str]:
    """Built from the authenticated user, never from request input."""
    return ("memories", user_label(user_id))


class RememberInput(BaseModel):
    fact: str = Field(..., min_length=1, max_length=2000, description="A durable fact or preference to keep")


class Remembered(BaseModel):
    key: str
    fact: str


class RecallInput(BaseModel):
    query: str = Field(..., min_length=1, description="What to look for in the user's memories")
    k: int = Field(5, ge=1, le=20)


class Recalled(BaseModel):
    memories: list[dict[str, Any]]


def _key(fact: str) -> str:
    # Keyed by content: remembering the same fact twice (or replaying the call) stores it once.
    return hashlib.sha256(" ".join(fact.lower().split()).encode()).hexdigest()[:24]


async def _remember(args: RememberInput, ctx: ToolContext) -> Remembered:
    if ctx.store is None:
        raise RuntimeError("no memory store is configured")
    key = _key(args.fact)
    await ctx.store.aput(memories_namespace(ctx.user_id), key, {"text": args.fact})
    return Remembered(key=key, fact=args.fact)


async def _reconcile_remember(args: RememberInput, ctx: ToolContext) -> Remembered | None:
    item = await ctx.store.aget(memories_namespace(ctx.user_id), _key(args.fact)) if ctx.store else None
    return Remembered(key=item.key, fact=item.value["text"]) if item else None


async def _forget(args: RememberInput, result: dict[str, Any], ctx: ToolContext) -> None:
    if ctx.store is not None:
        await ctx.store.adelete(memories_namespace(ctx.user_id), result["key"])


async def _recall(args: RecallInput, ctx: ToolContext) -> Recalled:
    if ctx.store is None:
        return Recalled(memories=[])
    hits = await ctx.store.asearch(memories_namespace(ctx.user_id), query=args.query, limit=args.k)
    return Recalled(memories=[{"fact": h.value.get("text"), "score": round(h.score or 0.0, 4)} for h in hits])


REMEMBER = ToolSpec(
    name="remember",
    version="1",
    description="Remember a durable fact or preference about the user.",
    input_model=RememberInput,
    output_model=Remembered,
    func=_remember,
    side_effect="write",
    reconcile=_reconcile_remember,
    compensator=_forget,
    timeout_s=15.0,
)
RECALL = ToolSpec(
    name="recall",
    version="1",
    description="Recall what is known about the user.",
    input_model=RecallInput,
    output_model=Recalled,
    func=_recall,
    side_effect="read",
    timeout_s=15.0,
)
