"""The side-effect ledger: each effect runs at most once per idempotency key.

Key = thread_id:checkpoint_ns:tool_call_id. States: started (the call may or may not have taken effect),
succeeded (result recorded; replayed instead of re-executed), failed (recorded error; replayed),
unknown is `started` found by a later attempt. A started row is committed BEFORE the tool runs, so a
crash can never hide that an effect was attempted. Transactional tools write their effect in the same
transaction that marks the row succeeded, which makes them exactly-once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

Connection: TypeAlias = AsyncConnection[DictRow]
"""A connection to Keel's database; its rows are dicts (server.db makes the pool with dict_row)."""
Pool: TypeAlias = AsyncConnectionPool[Connection]
"""Keel's connection pool, as server.db makes it."""


@dataclass
class LedgerRow:
    status: str
    result: Any
    error: str | None


def make_key(thread_id: str | None, checkpoint_ns: str | None, tool_call_id: str) -> str:
    return f"{thread_id or '-'}:{checkpoint_ns or ''}:{tool_call_id}"


def _row(r: dict[str, Any] | None) -> LedgerRow | None:
    if r is None:
        return None
    return LedgerRow(r["status"], r["result"], r["error"])


async def get(pool: Pool, key: str) -> LedgerRow | None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT status, result, error FROM keel_tool_ledger WHERE key = %s", (key,))
        return _row(await cur.fetchone())


async def start(
    pool: Pool,
    key: str,
    *,
    thread_id: str | None,
    run_id: str | None,
    tool: str,
    version: str,
    args: dict[str, Any],
    args_hash: str,
) -> LedgerRow | None:
    """Record the attempt (committed). Returns the existing row instead if another attempt got there first."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO keel_tool_ledger (key, thread_id, run_id, tool, version, args, args_hash, status) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, 'started') ON CONFLICT (key) DO NOTHING RETURNING key",
            (key, thread_id or "-", run_id, tool, version, Jsonb(args), args_hash),
        )
        if await cur.fetchone() is not None:
            return None
    return await get(pool, key)


async def retry_started(pool: Pool, key: str) -> None:
    """A started row whose effect is known not to have happened (reconciled, or approved): try again."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE keel_tool_ledger SET attempts = attempts + 1, updated_at = now() WHERE key = %s", (key,)
        )


async def succeed(conn: Connection, key: str, result: Any) -> None:
    """Mark succeeded; `conn` may be the tool's own transaction (exactly-once for transactional tools)."""
    await conn.execute(
        "UPDATE keel_tool_ledger SET status = 'succeeded', result = %s, error = NULL, "
        "updated_at = now() WHERE key = %s",
        (Jsonb(result), key),
    )


async def fail(pool: Pool, key: str, error: str) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE keel_tool_ledger SET status = 'failed', error = %s, updated_at = now() WHERE key = %s",
            (error, key),
        )


async def effects_to_compensate(pool: Pool, run_id: str) -> list[dict[str, Any]]:
    """Succeeded effects of a run not yet compensated, newest first (sagas undo in reverse order)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT key, tool, args, result FROM keel_tool_ledger WHERE run_id = %s "
            "AND status = 'succeeded' AND coalesce(compensation, '') <> 'done' ORDER BY seq DESC",
            (run_id,),
        )
        return await cur.fetchall()


async def has_compensable(conn: Connection, run_id: str) -> bool:
    """Whether the run has succeeded effects not yet compensated (`conn` may be the caller's transaction)."""
    cur = await conn.execute(
        "SELECT 1 FROM keel_tool_ledger WHERE run_id = %s AND status = 'succeeded' "
        "AND coalesce(compensation, '') <> 'done' LIMIT 1",
        (run_id,),
    )
    return await cur.fetchone() is not None


async def mark_compensated(conn: Connection, key: str) -> None:
    await conn.execute(
        "UPDATE keel_tool_ledger SET compensation = 'done', updated_at = now() WHERE key = %s", (key,)
    )
