"""The graph on the real Postgres saver and store: restarts, migrations, pool hardening."""

from __future__ import annotations

import uuid

from langchain_core.messages import HumanMessage

from agent.context import Context
from agent.graph import builder
from memory.embeddings import EMBED_DIMS
from server.db import MIGRATIONS, migrate, open_database


async def test_migrations_are_idempotent(db):
    async with db.pool.connection() as conn:
        assert await migrate(conn) == 0
        assert await migrate(conn) == 0
        cur = await conn.execute("SELECT max(v) AS v, count(*) AS n FROM keel_migrations")
        row = await cur.fetchone()
    assert row["v"] == len(MIGRATIONS) and row["n"] == len(MIGRATIONS)


async def test_opening_twice_changes_nothing(database_url, embeddings, db):
    async with db.pool.connection() as conn:
        before = await (
            await conn.execute("SELECT count(*) AS n FROM pg_indexes WHERE schemaname = 'public'")
        ).fetchone()
    again = await open_database(database_url, embeddings=embeddings, dims=EMBED_DIMS, pool_max=2)
    await again.close()
    async with db.pool.connection() as conn:
        after = await (
            await conn.execute("SELECT count(*) AS n FROM pg_indexes WHERE schemaname = 'public'")
        ).fetchone()
    assert before == after


async def test_pool_is_hardened(db):
    kwargs = db.pool.kwargs
    assert kwargs["prepare_threshold"] is None and kwargs["autocommit"] is True
    assert db.pool.max_idle and db.pool.max_lifetime
    async with db.pool.connection() as conn:
        row = await (await conn.execute("SHOW hnsw.iterative_scan")).fetchone()
    assert row["hnsw.iterative_scan"] == "relaxed_order"
    # One shared pool behind the saver and the store (no private connections).
    assert db.checkpointer.conn is db.pool and db.store.conn is db.pool


async def test_resume_after_interrupt_on_a_freshly_compiled_graph(db):
    """As after a restart: a new compiled graph on the same database continues the thread."""
    ctx = Context()
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    first = builder.compile(checkpointer=db.checkpointer, store=db.store, name="agent")
    await first.ainvoke(
        {"messages": [HumanMessage(content="How does recovery work?")]},
        config,
        context=ctx,
        interrupt_before=["critique"],
        durability="sync",
    )
    assert (await first.aget_state(config)).next == ("critique",)
    del first

    second = builder.compile(checkpointer=db.checkpointer, store=db.store, name="agent")
    out = await second.ainvoke(None, config, context=ctx, durability="sync")
    assert out["status"] in ("done", "budget_exhausted:max_revisions", "not_found")
    history = [s async for s in second.aget_state_history(config)]
    # One parent chain, newest first, no forks.
    for newer, older in zip(history, history[1:], strict=False):
        assert (
            newer.parent_config["configurable"]["checkpoint_id"]
            == older.config["configurable"]["checkpoint_id"]
        )
