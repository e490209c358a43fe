"""Start-up: open the pool, check pgvector and the embedding model, run migrations, build the saver and store.

Keel never runs without persistence: if Postgres cannot be reached, start-up fails with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.store.postgres.aio import AsyncPostgresStore
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from memory.embeddings import DEFAULT_EMBEDDINGS, embedding_index_config
from memory.fts import ensure_fts_index
from server.db.embedded import release_embedded
from server.db.errors import DatabaseUnavailable, EmbeddingMismatch
from server.db.migrations import migrate
from server.db.pool import HNSW_EF_SEARCH, Connection, Pool, make_pool
from server.db.saver import KeelSaver, KeelStore
from server.db.urls import describe

log = logging.getLogger("keel.db")

# Serialises schema set-up across processes that share one database (API + workers starting together).
_SETUP_LOCK_KEY = 0x6B65656C  # "keel"


async def ensure_pgvector(conn: Connection, url: str) -> None:
    """Create the vector extension, or fail saying exactly what to install."""
    cur = await conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
    if await cur.fetchone() is None:
        raise DatabaseUnavailable(
            f"the Postgres server at {describe(url)} does not have the pgvector extension. Install pgvector "
            "(e.g. the postgresql-<version>-pgvector package, or the pgvector/pgvector Docker image), "
            "or unset DATABASE_URL to use Keel's embedded Postgres."
        )
    await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


@dataclass
class Database:
    """Everything Keel keeps in Postgres, behind one pool."""

    url: str
    pool: Pool
    checkpointer: AsyncPostgresSaver
    store: AsyncPostgresStore
    embeddings: Any
    server: Any = None  # the embedded server handle, if any

    async def close(self) -> None:
        await self.pool.close()
        if self.server is not None:
            # Release our handle on the embedded Postgres now (the last Keel process to leave stops it);
            # atexit would do it too, but not when a signal ends the process.
            await asyncio.to_thread(release_embedded, self.server)


async def check_embedding_model(conn: Connection, name: str, dims: int) -> None:
    """Record the embedding model with the index on first use; refuse to mix vector spaces afterwards."""
    await conn.execute(
        "INSERT INTO keel_meta (key, value) VALUES ('embeddings', %s) ON CONFLICT (key) DO NOTHING",
        (Jsonb({"model": name, "dims": dims}),),
    )
    row = await (await conn.execute("SELECT value FROM keel_meta WHERE key = 'embeddings'")).fetchone()
    assert row is not None  # inserted just above if it was missing
    have = row["value"]
    if have.get("model") != name or int(have.get("dims", 0)) != dims:
        raise EmbeddingMismatch(
            f"the memory index was built with embeddings {have.get('model')!r} ({have.get('dims')} dims), but "
            f"Keel is configured with {name!r} ({dims} dims). Vectors from different models cannot be compared: "
            "run `keel reindex` to re-embed everything with the configured model, or restore KEEL_EMBEDDINGS."
        )


async def open_database(
    url: str,
    *,
    embeddings: Any,
    dims: int,
    pool_min: int = 1,
    pool_max: int = 10,
    max_idle: float = 60.0,
    max_lifetime: float = 1800.0,
    server: Any = None,
    connect_timeout: float = 10.0,
    embeddings_name: str = DEFAULT_EMBEDDINGS,
    check_embeddings: bool = True,
    hnsw_ef_search: int = HNSW_EF_SEARCH,
) -> Database:
    """Open the pool, check pgvector, run every migration, and build the saver and store on the pool."""
    # One direct attempt first: it fails in milliseconds with the real reason (refused, auth, no database).
    try:
        probe = await psycopg.AsyncConnection.connect(url, connect_timeout=int(connect_timeout))
        await probe.close()
    except Exception as exc:
        raise DatabaseUnavailable(f"cannot connect to Postgres at {describe(url)}: {exc}".strip()) from exc
    pool = make_pool(
        url,
        min_size=pool_min,
        max_size=pool_max,
        max_idle=max_idle,
        max_lifetime=max_lifetime,
        hnsw_ef_search=hnsw_ef_search,
    )
    try:
        await pool.open(wait=True, timeout=connect_timeout)
    except PoolTimeout as exc:
        await pool.close()
        raise DatabaseUnavailable(f"cannot connect to Postgres at {describe(url)}: pool timed out") from exc

    try:
        saver = KeelSaver(pool)
        # The stock saver serialises every call behind one asyncio.Lock even with a pool (langgraph #7259).
        # A semaphore sized to the pool keeps its critical sections bounded without capping throughput.
        saver.lock = asyncio.Semaphore(max(1, pool_max - 1))  # type: ignore[assignment]
        store = KeelStore(pool, index=embedding_index_config(embeddings, dims))
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK_KEY,))
            try:
                await ensure_pgvector(conn, url)
                await saver.setup()
                await store.setup()
                n = await migrate(conn)
                await ensure_fts_index(
                    conn, pool=pool
                )  # full-text search over document chunks (search modes fts/hybrid)
                if check_embeddings:
                    await check_embedding_model(conn, embeddings_name, dims)
                if n:
                    log.info("applied %d Keel migration(s)", n)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK_KEY,))
    except BaseException:
        await pool.close()
        raise
    return Database(url=url, pool=pool, checkpointer=saver, store=store, embeddings=embeddings, server=server)
