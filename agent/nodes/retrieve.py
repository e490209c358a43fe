"""retrieve: find passages for the current query in the document corpus."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime

from agent.budgets import RUNNING, finish, next_step
from agent.context import Context
from agent.state import State
from memory.search import search_docs
from tools.memory_tools import memories_namespace


def last_human_text(state: State) -> str:
    """Text of the most recent human message ("" if none)."""
    for msg in reversed(state.get("messages", [])):
        if isinstance(msg, HumanMessage):
            content = msg.content
            if isinstance(content, list):
                content = " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
            return str(content)
    return ""


async def recall_memories(store: Any, ctx: Context, query: str) -> list[dict[str, Any]]:
    """The caller's long-term memories relevant to the question (their own namespace only)."""
    if ctx.recall_k <= 0:
        return []
    found = await store.asearch(memories_namespace(ctx.user_id), query=query, limit=ctx.recall_k)
    return [{"key": f"memory:{m.key}", "text": m.value.get("text", ""), "source": "memory",
             "heading": "what the user told Keel before", "score": round(m.score or 0.0, 4)}
            for m in found if m.value.get("text") and (m.score or 0.0) >= ctx.recall_min_score]


async def retrieve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Start a turn (reset budgets) or continue a revision, then search the corpus."""
    ctx = runtime.context or Context()
    new_turn = state.get("phase") != "revise"
    step, over = next_step(state, ctx, new_turn=new_turn)
    update: dict[str, Any] = {}
    if new_turn:
        question = last_human_text(state)
        update = {
            "question": question, "query": question, "revisions": 0, "tool_calls": 0, "best_answer": "",
            "best_score": -1.0, "draft": "", "draft_id": "", "critique": {}, "answer": "", "status": RUNNING,
        }
    if over:
        return {**update, **finish({**state, **update}, "max_steps", step=step)}
    query = update.get("query") or state.get("query") or ""
    hits = []
    if runtime.store is not None and query.strip():
        docs, memories = await asyncio.gather(  # independent lookups: one round trip of latency, not two
            search_docs(runtime.store, query, namespace=ctx.namespace, k=ctx.retrieve_k),
            recall_memories(runtime.store, ctx, query))
        hits = [*docs, *memories]
    passages = [{"index": i, **h} for i, h in enumerate(hits, start=1)]
    sources = [{k: p.get(k) for k in ("index", "source", "heading", "score")} for p in passages]
    return {**update, "passages": passages, "sources": sources, "steps": step, "phase": "answer"}
