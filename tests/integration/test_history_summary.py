"""A long thread on the real checkpointer: old turns fold into a summary, state and checkpoints stay bounded."""

from __future__ import annotations

import random
import string
import uuid

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agent.context import Context
from agent.graph import builder
from agent.history import approx_tokens


def noise(rng: random.Random, n: int = 1024) -> str:
    return "".join(rng.choices(string.ascii_letters, k=n))


async def _blob_bytes(db, tid: str) -> int:
    async with db.pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT coalesce(sum(pg_column_size(b.*)), 0) AS n FROM checkpoint_blobs b WHERE thread_id = %s",
                (tid,),
            )
        ).fetchone()
    return int(row["n"])


async def test_summarize_mode_keeps_the_thread_bounded_and_remembers_early_turns(db):
    graph = builder.compile(checkpointer=db.checkpointer, store=db.store, name="agent")
    rng = random.Random(7)
    tid = str(uuid.uuid4())
    config = {"configurable": {"thread_id": tid}}
    ctx = Context(max_revisions=0, history_tokens=1500, summary_tokens=400)
    sizes, sent = [], []
    for i in range(30):
        text = f"turn {i}: my favourite colour is colour{i}. " + noise(rng)
        calc = [HumanMessage(content=f'/tool calculator {{"expression": "{i}*2"}}')] if i % 5 == 0 else []
        for message in [*calc, HumanMessage(content=text)]:
            sent.append(message.content)
            await graph.ainvoke({"messages": [message]}, config, context=ctx)
        state = (await graph.aget_state(config)).values
        sizes.append(sum(approx_tokens(m) for m in state["messages"]))
    state = (await graph.aget_state(config)).values
    messages = state["messages"]
    # Bounded: the earlier turns never exceed the budget (+ the last turn), whatever the thread length.
    assert max(sizes[10:]) <= 1500 + 400, sizes
    assert messages[-2].content.startswith("turn 29:")
    assert isinstance(messages[0], HumanMessage), "folding cuts at turn boundaries"
    calls = {tc["id"] for m in messages if isinstance(m, AIMessage) for tc in m.tool_calls}
    assert calls == {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    # The early turns live on in the summary, which stays within its budget (newest lines kept).
    summary = state["summary"]
    assert 0 < len(summary) <= 400 * 4
    newest_folded = sent[sent.index(messages[0].content) - 1]
    assert summary.splitlines()[-1].startswith("- The user asked: " + newest_folded[:40])
    assert "turn 0:" not in summary, "the oldest lines were dropped to keep the summary in budget"
    # More turns do not grow the latest checkpoint's state: the messages blob stays the same order of size.
    before = await _blob_bytes(db, tid)
    for i in range(30, 40):
        await graph.ainvoke(
            {"messages": [HumanMessage(content=f"turn {i}: " + noise(rng))]}, config, context=ctx
        )
    grown = await _blob_bytes(db, tid) - before
    assert grown < 10 * 40_000, f"10 more turns stored {grown} bytes of blobs"


async def test_the_summary_call_is_never_streamed_to_the_client(db):
    graph = builder.compile(checkpointer=db.checkpointer, store=db.store, name="agent")
    rng = random.Random(8)
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    ctx = Context(max_revisions=0, history_tokens=600)
    for i in range(4):
        await graph.ainvoke(
            {"messages": [HumanMessage(content=f"turn {i} " + noise(rng))]}, config, context=ctx
        )
    streamed = []
    async for chunk, _meta in graph.astream(
        {"messages": [HumanMessage(content="how do workers recover?")]},
        config,
        context=ctx,
        stream_mode="messages",
    ):
        streamed.append(str(chunk.content))
    state = (await graph.aget_state(config)).values
    assert state.get("summary"), "this turn folded earlier turns"
    assert streamed and "The user asked" not in "".join(streamed)


async def test_trim_mode_keeps_every_message(db):
    graph = builder.compile(checkpointer=db.checkpointer, store=db.store, name="agent")
    rng = random.Random(9)
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    ctx = Context(max_revisions=0, history_tokens=600, history="trim")
    for i in range(8):
        await graph.ainvoke(
            {"messages": [HumanMessage(content=f"turn {i} " + noise(rng))]}, config, context=ctx
        )
    state = (await graph.aget_state(config)).values
    assert len([m for m in state["messages"] if isinstance(m, HumanMessage)]) == 8
    assert not state.get("summary")
