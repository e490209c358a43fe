"""Keel's connection pool: per-connection settings (HNSW search), health checks only when a connection may be dead."""

from __future__ import annotations

import select
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

# HNSW candidate list size per search (KEEL_HNSW_EF_SEARCH); pgvector's own default is 40. See docs/benchmarks.md.
HNSW_EF_SEARCH = 100

# Every pooled connection returns rows as dicts (the saver and the store need it; Keel's queries rely on it).
Connection: TypeAlias = psycopg.AsyncConnection[DictRow]
Pool: TypeAlias = AsyncConnectionPool[Connection]


def _configurer(hnsw_ef_search: int = HNSW_EF_SEARCH) -> Callable[[Connection], Awaitable[None]]:
    """The pool's configure callback: per-connection settings, applied once when a connection is opened."""
    ef = int(hnsw_ef_search)
    if not 1 <= ef <= 1000:  # pgvector's range
        raise ValueError(f"hnsw.ef_search must be between 1 and 1000, got {ef}")

    async def _configure(conn: Connection) -> None:
        # Filtered (namespace) HNSW searches must return the full k; pgvector's default can return fewer.
        await conn.execute("SET hnsw.iterative_scan = 'relaxed_order'")
        # A larger candidate list than pgvector's 40: recall@10 >= 0.95 on real embeddings at 100k chunks.
        await conn.execute(f"SET hnsw.ef_search = {ef}")
        conn._keel_returned = time.monotonic()  # type: ignore[attr-defined]

    return _configure


@asynccontextmanager
async def pipelined_transaction(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """One transaction on a pooled (autocommit) connection in pipeline mode, in as few round trips as its reads
    allow: BEGIN goes out with the first statements, COMMIT with the last ones and the pipeline's one Sync, where
    psycopg's `transaction()` in a pipeline syncs after BEGIN and again before COMMIT (two round trips more).

    A statement's result is there once read (`fetchone` waits for it: one round trip for everything sent so far),
    or after the block. An error (a statement's, the COMMIT's, or one raised in the block) leaves the transaction
    rolled back and propagates; a statement that fails is raised where its result is read, or at the end."""
    assert conn.autocommit, "pipelined_transaction needs an autocommit connection (the pool's)"
    committed = False
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            yield
            await conn.execute("COMMIT")
        committed = True
    finally:
        status = conn.info.transaction_status
        if not committed and status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            try:
                await conn.execute("ROLLBACK")
            except psycopg.Error:
                pass  # (a broken connection: the pool discards it)


async def _stamp(conn: Connection) -> None:
    conn._keel_returned = time.monotonic()  # type: ignore[attr-defined]


CHECK_AFTER_IDLE_S = 30.0


def _socket_has_news(conn: Connection) -> bool:
    """An idle connection should have nothing to read; data (or EOF) means the server spoke: often a
    FATAL "terminating connection" from an idle reaper or pg_terminate_backend."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


async def _check(conn: Connection) -> None:
    # Test a connection before use when it may be dead: the server sent something while it sat idle,
    # or it sat idle long enough for a proxy to drop it silently. A round trip on every checkout would
    # double the statements of a run for nothing.
    idle = time.monotonic() - getattr(conn, "_keel_returned", 0.0)
    if conn.closed or idle > CHECK_AFTER_IDLE_S or _socket_has_news(conn):
        await AsyncConnectionPool.check_connection(conn)


def make_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    max_idle: float = 60.0,
    max_lifetime: float = 1800.0,
    name: str = "keel",
    hnsw_ef_search: int = HNSW_EF_SEARCH,
) -> Pool:
    """Keel's hardened pool: health-checked, recycled, no server-side prepared statements (poolers)."""
    return AsyncConnectionPool(
        url,
        connection_class=Connection,
        min_size=min_size,
        max_size=max_size,
        max_idle=max_idle,
        max_lifetime=max_lifetime,
        check=_check,
        configure=_configurer(hnsw_ef_search),
        reset=_stamp,
        kwargs={"autocommit": True, "prepare_threshold": None, "row_factory": dict_row},
        open=False,
        name=name,
    )
