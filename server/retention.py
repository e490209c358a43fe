"""Retention: delete a thread everywhere (checkpoints, runs, events, thread-scoped store items), sweep
expired or idle threads, and drop the stream events of long-finished runs. Used by DELETE /threads/{id},
`keel prune` and the workers' periodic sweep."""

from __future__ import annotations

import logging
from typing import Any

from server.runs import store

log = logging.getLogger("keel.retention")

# Store namespaces keyed by thread id whose items die with the thread.
THREAD_SCOPED_PREFIXES = ("effects",)


async def delete_thread_everywhere(db: Any, thread_id: str) -> None:
    """Remove every trace of a thread except the audit trail (kept for accountability)."""
    async with db.pool.connection() as conn, conn.transaction():
        await conn.execute(store.DELETE_THREAD_RUN_EVENTS, (thread_id,))
        await conn.execute(store.DELETE_THREAD_RUNS, (thread_id,))
        await conn.execute("DELETE FROM keel_tool_ledger WHERE thread_id = %s", (thread_id,))
        await conn.execute(store.DELETE_THREAD, (thread_id,))
        for prefix in THREAD_SCOPED_PREFIXES:
            await conn.execute(
                "DELETE FROM store WHERE prefix = %s OR prefix LIKE %s",
                (f"{prefix}.{thread_id}", f"{prefix}.{thread_id}.%"),
            )
    await db.checkpointer.adelete_thread(thread_id)


async def sweep(db: Any, *, idle_days: float | None = None, limit: int = 500) -> list[str]:
    """Delete threads past their TTL (and, with idle_days, threads untouched that long); never busy ones."""
    async with db.pool.connection() as conn:
        ids = [
            r["id"] for r in await store.fetchall(conn, store.EXPIRED_THREADS, (idle_days, idle_days, limit))
        ]
    for tid in ids:
        await delete_thread_everywhere(db, tid)
    if ids:
        log.info("pruned %d thread(s)", len(ids))
    return ids


async def sweep_all(db: Any, *, idle_days: float | None = None, batch: int = 500) -> int:
    """`sweep` batch after batch until none is left (`keel prune`); the number of threads deleted."""
    total = 0
    while True:
        ids = await sweep(db, idle_days=idle_days, limit=batch)
        total += len(ids)
        if len(ids) < batch:
            return total


EVENTS_BATCH = 5000

# The statements live in the run store; these names stay for readers (and tests) of this module.
_EXPIRED_RUNS = store.EXPIRED_RUNS
_DELETE_EVENTS = store.DELETE_EXPIRED_EVENTS
_MARK_PRUNED = store.MARK_EVENTS_PRUNED


async def prune_run_events(
    db: Any, ttl_seconds: float, *, batch: int = EVENTS_BATCH, max_batches: int | None = None
) -> int:
    """Delete the stream events of runs that ended (success, error, interrupted, timeout) more than
    `ttl_seconds` ago; return how many rows went. 0 keeps events forever.

    One short transaction per `batch` rows, so no lock is held for long; `max_batches` bounds one call
    (the workers' periodic sweep), None loops until nothing is left. Pending and running runs are never
    touched. The run row stays: GET and join still answer (the result is on the row or in the checkpoint);
    a join stream of such a run has nothing to replay and ends at once.
    """
    if ttl_seconds <= 0:
        return 0
    params = {"ttl": float(ttl_seconds), "batch": int(batch), "upto": None}
    total, rounds = 0, 0
    while max_batches is None or rounds < max_batches:
        rounds += 1
        async with db.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(_DELETE_EVENTS, params)).fetchone()
            deleted = row["deleted"]
            marked = (await conn.execute(_MARK_PRUNED, {**params, "upto": row["upto"]})).rowcount
        total += deleted
        if not deleted and not marked:
            break
    if total:
        log.info("pruned %d event row(s) of runs finished over %gs ago", total, ttl_seconds)
    return total


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
            "ORDER BY checkpoint_id DESC OFFSET %s LIMIT 1",
            (thread_id, keep - 1),
        )
        row = await cur.fetchone()
        if row is None:
            return 0
        cut = row["checkpoint_id"]
        cur = await conn.execute(
            "DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_id < %s", (thread_id, cut)
        )
        deleted = cur.rowcount
        if not deleted:  # nothing older than the cut: every blob is still referenced
            return 0
        await conn.execute(
            "DELETE FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_id < %s", (thread_id, cut)
        )
        await conn.execute(
            "DELETE FROM checkpoint_blobs b WHERE b.thread_id = %s AND NOT EXISTS (SELECT 1 FROM checkpoints c "
            "WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns "
            "AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)",
            (thread_id,),
        )
    return deleted
