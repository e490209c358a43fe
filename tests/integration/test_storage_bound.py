"""Long threads stay bounded: old checkpoints and unreferenced blobs are trimmed; the state stays whole."""

from __future__ import annotations

import uuid

from langchain_core.messages import HumanMessage

from agent.context import Context
from agent.graph import builder
from server.retention import trim_checkpoints


async def test_trimming_keeps_latest_state_and_recent_history(db):
    graph = builder.compile(checkpointer=db.checkpointer, store=db.store, name="agent")
    tid = str(uuid.uuid4())
    config = {"configurable": {"thread_id": tid}}
    for i in range(12):
        await graph.ainvoke(
            {"messages": [HumanMessage(content=f"turn {i}: how do workers scale out?")]},
            config,
            context=Context(max_revisions=0),
        )
    before = (await graph.aget_state(config)).values

    async def sizes():
        async with db.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = %s) AS n, "
                    "(SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %s) AS blobs",
                    (tid, tid),
                )
            ).fetchone()
        return row["n"], row["blobs"]

    n0, blobs0 = await sizes()
    assert await trim_checkpoints(db, tid, keep=10) == n0 - 10
    n1, blobs1 = await sizes()
    assert n1 == 10 and blobs1 < blobs0
    after = (await graph.aget_state(config)).values
    assert [m.content for m in after["messages"]] == [m.content for m in before["messages"]]
    assert len([s async for s in graph.aget_state_history(config)]) == 10
    # The thread goes on normally after trimming.
    out = await graph.ainvoke(
        {"messages": [HumanMessage(content="and after trimming?")]}, config, context=Context(max_revisions=0)
    )
    assert out["messages"][-2].content == "and after trimming?"
    assert await trim_checkpoints(db, tid, keep=0) == 0
