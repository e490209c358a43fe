"""Retention: delete a thread everywhere (checkpoints, runs, events, thread-scoped store items) and sweep
expired or idle threads. Used by DELETE /threads/{id}, `keel prune` and the workers' periodic sweep."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("keel.retention")

# Store namespaces keyed by thread id whose items die with the thread.
THREAD_SCOPED_PREFIXES = ("effects",)


async def delete_thread_everywhere(db: Any, thread_id: str) -> None:
    """Remove every trace of a thread except the audit trail (kept for accountability)."""
    async with db.pool.connection() as conn, conn.transaction():
        await conn.execute("DELETE FROM keel_run_events WHERE run_id IN (SELECT run_id FROM keel_runs "
                           "WHERE thread_id = %s)", (thread_id,))
        await conn.execute("DELETE FROM keel_runs WHERE thread_id = %s", (thread_id,))
        await conn.execute("DELETE FROM keel_tool_ledger WHERE thread_id = %s", (thread_id,))
        await conn.execute("DELETE FROM keel_threads WHERE thread_id = %s", (thread_id,))
        for prefix in THREAD_SCOPED_PREFIXES:
            await conn.execute("DELETE FROM store WHERE prefix = %s OR prefix LIKE %s",
                               (f"{prefix}.{thread_id}", f"{prefix}.{thread_id}.%"))
    await db.checkpointer.adelete_thread(thread_id)


async def sweep(db: Any, *, idle_days: float | None = None, limit: int = 500) -> list[str]:
    """Delete threads past their TTL (and, with idle_days, threads untouched that long); never busy ones."""
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT thread_id::text AS id FROM keel_threads t WHERE status <> 'busy' AND (expires_at < now() "
            "OR (%s::float IS NOT NULL AND updated_at < now() - %s::float * interval '1 day')) "
            "AND NOT EXISTS (SELECT 1 FROM keel_runs r WHERE r.thread_id = t.thread_id AND r.status IN "
            "('pending', 'running')) ORDER BY updated_at LIMIT %s", (idle_days, idle_days, limit))
        ids = [r["id"] for r in await cur.fetchall()]
    for tid in ids:
        await delete_thread_everywhere(db, tid)
    if ids:
        log.info("pruned %d thread(s)", len(ids))
    return ids


async def trim_checkpoints(db: Any, thread_id: str, keep: int) -> int:
    """Keep a thread's newest `keep` checkpoints (root namespace, with subgraph ones of the same age), drop
    older checkpoints, their pending writes, and every blob no remaining checkpoint refers to.

    The latest state and the recent history stay intact; only time travel to very old steps is given up,
    which is what bounds a long thread's storage (blobs otherwise grow with every step).
    """
    if keep <= 0:
        return 0
    async with db.pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' "
            "ORDER BY checkpoint_id DESC OFFSET %s LIMIT 1", (thread_id, keep - 1))
        row = await cur.fetchone()
        if row is None:
            return 0
        cut = row["checkpoint_id"]
        cur = await conn.execute("DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_id < %s",
                                 (thread_id, cut))
        deleted = cur.rowcount
        await conn.execute("DELETE FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_id < %s",
                           (thread_id, cut))
        await conn.execute(
            "DELETE FROM checkpoint_blobs b WHERE b.thread_id = %s AND NOT EXISTS (SELECT 1 FROM checkpoints c "
            "WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns "
            "AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)", (thread_id,))
    return deleted
