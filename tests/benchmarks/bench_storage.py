"""Checkpoint storage of a 200-turn thread: stock (every checkpoint kept) vs Keel's history folding and trimming.

Workload as in durability.md §8: each turn adds 5 messages of 1 KB random text (incompressible) to an
add_messages channel, durability sync, one thread: a stock one-node graph, and Keel's offline agent (which
gets the five messages as input) with history "trim" (every message kept) and "summarize" (the default:
older turns folded into a bounded summary); plus Keel's agent on short questions.
"""

from __future__ import annotations

import asyncio
import random
import string
import time
import uuid
from typing import Annotated

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from tests.benchmarks.common import ROOT, new_db, scratch_postgres, table

TURNS = 200


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _chat_graph():
    rng = random.Random(1)

    def reply(state: Chat) -> dict:
        text = lambda: "".join(rng.choices(string.ascii_letters + string.digits, k=1024))  # noqa: E731
        return {"messages": [AIMessage(content=text()) for _ in range(4)]}

    b = StateGraph(Chat)
    b.add_node("reply", reply)
    b.add_edge(START, "reply")
    return b


async def _thread_bytes(db, tid: str) -> float:
    async with db.pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT coalesce((SELECT sum(pg_column_size(t.*)) FROM checkpoints t WHERE thread_id = %s), 0) + "
                "coalesce((SELECT sum(pg_column_size(t.*)) FROM checkpoint_blobs t WHERE thread_id = %s), 0) + "
                "coalesce((SELECT sum(pg_column_size(t.*)) FROM checkpoint_writes t WHERE thread_id = %s), 0) AS b",
                (tid, tid, tid),
            )
        ).fetchone()
    return float(row["b"]) / 1e6


async def _run(url: str) -> list[dict]:
    from agent.context import Context
    from agent.graph import builder
    from memory.embeddings import EMBED_DIMS, get_embeddings
    from memory.ingest import ingest_paths
    from server.db import open_database
    from server.retention import trim_checkpoints

    db = await open_database(url, embeddings=get_embeddings(None), dims=EMBED_DIMS)
    rows = []
    try:
        await ingest_paths(db.store, [ROOT / "docs"], namespace="default", root=ROOT)
        chat = lambda: _chat_graph().compile(checkpointer=db.checkpointer)  # noqa: E731
        keel = lambda: builder.compile(checkpointer=db.checkpointer, store=db.store)  # noqa: E731
        trim, fold = Context(max_revisions=0, history="trim"), Context(max_revisions=0)
        # (workload, history mode, graph, context, checkpoints kept)
        variants = [
            ("random 5x1KB/turn, stock graph", "-", chat(), None, 0),
            ("random 5x1KB/turn, stock graph", "-", chat(), None, 100),
            ("random 5x1KB/turn, Keel agent", "trim", keel(), trim, 0),
            ("random 5x1KB/turn, Keel agent", "trim", keel(), trim, 100),
            ("random 5x1KB/turn, Keel agent", "summarize", keel(), fold, 0),
            ("random 5x1KB/turn, Keel agent", "summarize", keel(), fold, 100),
            ("short questions, Keel agent", "trim", keel(), trim, 0),
            ("short questions, Keel agent", "summarize", keel(), fold, 100),
        ]
        rng = random.Random(2)
        for label, mode, graph, ctx, keep in variants:
            tid = str(uuid.uuid4())
            cfg = {"configurable": {"thread_id": tid}, "recursion_limit": 40}
            t = time.perf_counter()
            for i in range(TURNS):
                if ctx is None:  # the stock graph adds 4 x 1 KB replies to each 1 KB message
                    msg = "".join(rng.choices(string.ascii_letters, k=1024))
                    await graph.ainvoke({"messages": [HumanMessage(content=msg)]}, cfg, durability="sync")
                elif label.startswith("random"):  # Keel replies briefly, so the caller sends all five
                    msgs = [
                        HumanMessage(content="".join(rng.choices(string.ascii_letters, k=1024)))
                        for _ in range(5)
                    ]
                    await graph.ainvoke({"messages": msgs}, cfg, context=ctx, durability="sync")
                else:
                    await graph.ainvoke(
                        {"messages": [HumanMessage(content=f"turn {i}: how do workers recover?")]},
                        cfg,
                        context=ctx,
                        durability="sync",
                    )
                if keep:
                    await trim_checkpoints(db, tid, keep)
            secs = time.perf_counter() - t
            t = time.perf_counter()
            state = await graph.aget_state({"configurable": {"thread_id": tid}})
            get_ms = (time.perf_counter() - t) * 1000
            rows.append(
                {
                    "thread": label,
                    "history": mode,
                    "checkpoints kept": "all" if not keep else keep,
                    "MB after 200 turns": await _thread_bytes(db, tid),
                    "messages": len(state.values["messages"]),
                    "get_state ms": get_ms,
                    "run s": secs,
                }
            )
    finally:
        await db.close()
    return rows


def run() -> str:
    with scratch_postgres() as (admin, _):
        rows = asyncio.run(_run(new_db(admin, "bench_storage")))
    return (
        table(
            rows,
            [
                "thread",
                "history",
                "checkpoints kept",
                "MB after 200 turns",
                "messages",
                "get_state ms",
                "run s",
            ],
        )
        + "\n\nMB = row bytes of checkpoints + checkpoint_blobs + checkpoint_writes for the thread "
        "(pg_column_size, after TOAST compression); messages = in the latest state. Target: under 25 MB at "
        "200 turns. Keel's defaults: history summarize, 100 checkpoints kept."
    )
