"""retrieve: start or continue a turn, then find passages for its query in the document corpus."""

from __future__ import annotations

import asyncio
from itertools import zip_longest
from typing import Any

from langchain_core.messages import AnyMessage, HumanMessage
from langgraph.runtime import Runtime

from agent.budgets import RUNNING, finish, next_step
from agent.context import Context
from agent.offline.text import followup_context
from agent.state import Fields, State
from memory.search import search_docs
from tools.memory_tools import memories_namespace


def last_human(messages: list[AnyMessage]) -> HumanMessage | None:
    """The most recent human message (None if there is none)."""
    return next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)


def message_text(msg: AnyMessage) -> str:
    """A message's text, the text parts of multimodal content joined."""
    content = msg.content
    if isinstance(content, list):
        content = " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def continues_turn(state: State) -> bool:
    """Whether this retrieve revises the turn in progress (True) or starts a new one (False).

    A turn is the answer to one human message. Only the critic continues a turn: it is in "revise" and the
    last human message is still the one it answers, by id and by text (a message edited in place keeps its
    id but is a new question). So however the previous run ended (finished, interrupted, cancelled, rolled
    back, crashed, forked), a new message starts a new turn: new input always re-enters at START -> retrieve,
    while a resume continues the pending retrieve of the same turn. Checkpoints written before `turn_of`
    existed are judged by the question's text alone.
    """
    if state.get("phase") != "revise":
        return False
    msg = last_human(state.get("messages", []))
    if msg is None:
        return False
    if "turn_of" in state and state["turn_of"] != (msg.id or ""):
        return False
    return state.get("question") == message_text(msg)


def search_query(question: str, messages: list[AnyMessage]) -> str:
    """The first search of a turn: the question, read with the previous question when it plainly refers back
    to it ("How many dimensions do its vectors have?"). A short follow-up that does not ("How long does
    detection take?") may stand alone ("How do I send traces?"): `followup_query` gives its second reading."""
    earlier = [m for m in messages if isinstance(m, HumanMessage)][:-1]
    context = followup_context(question, message_text(earlier[-1]), strict=True) if earlier else ""
    return f"{question} {context}" if context else question


def followup_query(question: str, messages: list[AnyMessage]) -> str:
    """The question read with the previous one when it is short enough to lean on it but does not refer back
    plainly (then `search_query` is the question alone), else ""."""
    earlier = [m for m in messages if isinstance(m, HumanMessage)][:-1]
    if not earlier or search_query(question, messages) != question:
        return ""
    context = followup_context(question, message_text(earlier[-1]))
    return f"{question} {context}" if context else ""


def interleave(first: list[dict[str, Any]], second: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The passages of two searches taken in turns, best first, each passage once, at most k."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, Any]] = set()
    for pair in zip_longest(first, second):
        for hit in pair:
            if hit is None:
                continue
            key = (hit.get("key"), hit.get("text"))
            if key not in seen and len(out) < k:
                seen.add(key)
                out.append(hit)
    return out


def fresh_turn(state: State) -> Fields:
    """Every per-turn field reset for the last human message; only `messages` and `summary` carry over."""
    messages = state.get("messages", [])
    msg = last_human(messages)
    question = message_text(msg) if msg is not None else ""
    return {
        "turn_of": (msg.id or "") if msg is not None else "",
        "question": question,
        "query": search_query(question, messages),
        "passages": [],
        "sources": [],
        "draft": "",
        "draft_id": "",
        "best_answer": "",
        "best_score": -1.0,
        "critique": {},
        "revisions": 0,
        "tool_calls": 0,
        "answer": "",
        "status": RUNNING,
    }


async def recall_memories(store: Any, ctx: Context, query: str) -> list[dict[str, Any]]:
    """The caller's long-term memories relevant to the question (their own namespace only)."""
    if ctx.recall_k <= 0:
        return []
    found = await store.asearch(memories_namespace(ctx.user_id), query=query, limit=ctx.recall_k)
    return [
        {
            "key": f"memory:{m.key}",
            "text": m.value.get("text", ""),
            "source": "memory",
            "heading": "what the user told Keel before",
            "score": round(m.score or 0.0, 4),
        }
        for m in found
        if m.value.get("text") and (m.score or 0.0) >= ctx.recall_min_score
    ]


async def search_corpus(store: Any, query: str, ctx: Context, revision: int) -> list[dict[str, Any]]:
    """The corpus's passages for a query. A turn's first pass takes hybrid (dense + full-text, fused) top-k
    and dense top-k in turns, k in all: the full-text half finds a rare word the embedding model splits into
    pieces ("liveness"), the dense half keeps the passages closest in meaning when common question words
    pull unrelated full-text matches in (full-text ranking has no idf). A revision (the critic found the
    first pass weak) casts a wider net, hybrid and full-text top-2k in turns (2k in all), so it always changes
    what is retrieved even when the query cannot, and the passage naming the question's rare words comes in
    when hybrid ranks passages closer in meaning first. Hybrid needs Postgres; other stores search dense."""
    k = ctx.retrieve_k if revision == 0 else 2 * ctx.retrieve_k
    if getattr(store, "conn", None) is None:
        return await search_docs(store, query, namespace=ctx.namespace, k=k)
    hybrid = await search_docs(store, query, namespace=ctx.namespace, k=k, mode="hybrid")
    if revision:
        return interleave(
            hybrid, await search_docs(store, query, namespace=ctx.namespace, k=k, mode="fts"), k
        )
    return interleave(hybrid, await search_docs(store, query, namespace=ctx.namespace, k=k), k)


async def retrieve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Start a turn for a new human message (every per-turn field reset) or continue the critic's revision,
    then search the corpus."""
    ctx = runtime.context or Context()
    new_turn = not continues_turn(state)
    step, over = next_step(state, ctx, new_turn=new_turn)
    update: Fields = fresh_turn(state) if new_turn else {}
    if over:
        return {**update, **finish({**state, **update}, "max_steps", step=step)}
    query = update["query"] if new_turn else state.get("query", "")
    revision = 0 if new_turn else state.get("revisions", 0)
    hits = []
    if runtime.store is not None and query.strip():
        docs, memories = await asyncio.gather(  # independent lookups: one round trip of latency, not two
            search_corpus(runtime.store, query, ctx, revision),
            recall_memories(runtime.store, ctx, query),
        )
        second = followup_query(update["question"], state.get("messages", [])) if new_turn else ""
        if second:
            # A short follow-up: the passages for the question alone and for it read with the previous one.
            docs = interleave(docs, await search_corpus(runtime.store, second, ctx, 0), ctx.retrieve_k)
        hits = [*docs, *memories]
    passages = [{"index": i, **h} for i, h in enumerate(hits, start=1)]
    sources = [{k: p.get(k) for k in ("index", "source", "heading", "score")} for p in passages]
    return {**update, "passages": passages, "sources": sources, "steps": step, "phase": "answer"}
