"""The run queue in SQL: claim, heartbeat, finish, release, reap. Postgres is the only moving part.

Invariants kept by the database, not by any one process:
- a run is claimed by one worker at a time (`FOR UPDATE SKIP LOCKED`, then a lease);
- a thread has at most one running run (unique partial index); pending runs of a thread go in order;
- every claim bumps `lease_epoch`; terminal updates and event appends require the current epoch, so a
  worker that lost its lease (a zombie) cannot overwrite the run it used to hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import orjson
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from server.db.pool import pipelined_transaction
from server.runs import store
from server.runs.fencing import check_crash_epoch
from server.runs.store import ACTIVE, RUN_COLUMNS, RUNS_CHANNEL, RunStatus, set_thread_after_run

__all__ = [
    "ACTIVE",
    "RUN_COLUMNS",
    "RUNS_CHANNEL",
    "Claim",
    "claim",
    "finish",
    "heartbeat_sql",
    "lock_liveness_sql",
    "mark_compensating",
    "reap",
    "release",
    "set_thread_after_run",
]


@dataclass
class Claim:
    """A run this worker now holds, at lease epoch `epoch`."""

    run: dict[str, Any]
    epoch: int

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    @property
    def thread_id(self) -> str:
        return str(self.run["thread_id"])

    @property
    def attempt(self) -> int:
        return int(self.run["attempt"])


async def claim(pool: AsyncConnectionPool, owner: str, lease_s: float, lock: int = 0) -> Claim | None:
    """Take the oldest runnable pending run, or None. `lock`: the key of the caller's liveness lock (see
    store.LIVENESS_CLASS); the lease names it only if some session of the caller holds it right now."""
    for _ in range(5):
        try:
            async with pool.connection() as conn:
                row = await store.fetchone(
                    conn, store.CLAIM, {"owner": owner, "lease": lease_s, "lock": lock}
                )
        except psycopg.errors.UniqueViolation:
            continue  # another worker started a run of the same thread at the same instant; pick again
        return Claim(row, int(row["lease_epoch"])) if row else None
    return None


async def finish(
    pool: AsyncConnectionPool,
    c: Claim,
    status: RunStatus,
    *,
    result: Any = None,
    error: Any = None,
    thread_status: str,
    thread_values: Any,
    interrupts: Any,
    writer: Any = None,
    trim_keep: int = 0,
    pg_epoch: Any = None,
) -> bool:
    """Move the run to a terminal status and update its thread; False if the lease was lost (fenced).

    With `writer` (a closed EventWriter), the events it still holds are appended in the same transaction. With
    `trim_keep`, it also notes (in `c.run["trim_cut"]`) whether the thread has more checkpoints than that, so
    housekeeping trims only when there is something to trim. With `pg_epoch` (Postgres's crash epoch when the
    attempt was claimed), it raises PostgresRestarted instead of committing if Postgres crashed meanwhile: the
    outcome was read from checkpoints and writes that the crash may have cut short."""
    # (serialised once: for the row, and for the notification that hands it to the run's waiters)
    result_text = orjson.dumps(result).decode() if result is not None else None
    # Pipelined: the statements after FINISH_RUN (which says whether the lease still holds) go out with the commit.
    async with pool.connection() as conn, pipelined_transaction(conn):
        server = await conn.execute(store.CRASH_EPOCH) if pg_epoch is not None else None
        # Thread first, then run: the order run creation and cancellation lock them in (no deadlock).
        await conn.execute(store.LOCK_THREAD_NO_KEY, (c.thread_id,))
        finished = await conn.execute(
            store.FINISH_RUN,
            (
                status,
                Jsonb(result, dumps=lambda _: result_text) if result_text is not None else None,
                Jsonb(error) if error else None,
                c.run_id,
                c.epoch,
            ),
        )
        # (read in the same round trip; harmless when the run turns out fenced)
        trim = await conn.execute(store.TRIM_CUT, (c.thread_id, trim_keep - 1)) if trim_keep > 0 else None
        if await finished.fetchone() is None:
            return False
        if server is not None:  # (raised before the commit: the transaction rolls back)
            now = cast("dict[str, Any] | None", await server.fetchone())
            check_crash_epoch(now and now["epoch"], pg_epoch, c.run_id)
        if trim is not None:
            cut = cast("dict[str, Any] | None", await trim.fetchone())  # (the pool's rows are dicts)
            c.run["trim_cut"] = cut["checkpoint_id"] if cut else None
        if writer is not None:
            async with writer.barrier() as (events, _):
                if events:
                    await store.append_events(conn, c.run_id, c.attempt, events, notified=writer.flushed_seq)
        await set_thread_after_run(conn, c.thread_id, thread_status, thread_values, interrupts, error)
        await conn.execute(
            store.NOTIFY_FINISHED,
            (
                store.EVENTS_CHANNEL,
                store.done_payload(c.run_id, status, result_text, error),
                c.thread_id,
                RUNS_CHANNEL,
            ),
        )
    return True


async def release(pool: AsyncConnectionPool, c: Claim, *, count_attempt: bool) -> bool:
    """Give the run back to the queue (drain, transient failure); another worker takes it at once."""
    async with pool.connection() as conn:
        ok = await store.fetchone(conn, store.RELEASE_RUN, (count_attempt, c.run_id, c.epoch)) is not None
        await store.notify_work(conn)
    return ok


def heartbeat_sql() -> str:
    """Renew leases (params: lease seconds, liveness lock key, run ids, owner); run it on the locked session."""
    return store.HEARTBEAT


def lock_liveness_sql() -> str:
    """Take the worker's liveness lock on this session (param: key); returns one row, `ok` false if taken."""
    return store.LOCK_LIVENESS


async def reap(
    pool: AsyncConnectionPool,
    max_attempts: int,
    *,
    owner: str,
    lease_s: float,
    held: list[str],
    lock: int = 0,
) -> list[dict[str, Any]]:
    """Re-queue runs whose lease expired or whose owner died; dead-letter those that used up their attempts.

    An owner died when its liveness lock is gone (store.LIVENESS_CLASS): its run is reaped at once, not when its
    lease runs out.

    `held` are the runs the calling worker is executing right now: it knows they are alive (its heartbeat
    may merely be late). Any other expired run is fair game, the caller's own included: a run it no longer
    holds a task for (a crashed executor, a restarted worker with the same name) must not stay `running`.

    A dead-lettered run that completed side effects is re-queued once more with `compensating` set, so a
    worker undoes those effects (saga) before the run ends in error. A run on its last attempt that had
    written checkpoints is not dead-lettered here: its graph may have completed before the worker died, so
    the caller takes it over (row `finalize`, lease held by `owner`) to record what the checkpoints say.
    That pass happens once: it sets `finished_at` on the still running row (finish() sets it again), so if
    the pass dies too, the next reap dead-letters the run.
    """
    async with pool.connection() as conn, conn.transaction():
        rows = await store.fetchall(
            conn,
            store.REAP,
            {"max": max_attempts, "owner": owner, "lease": lease_s, "held": held, "lock": lock},
        )
        for r in rows:
            if r["status"] == RunStatus.ERROR:
                await store.append_unfenced(conn, str(r["run_id"]), r["attempt"], "error", r["error"])
                await set_thread_after_run(conn, str(r["thread_id"]), "error", None, {}, r["error"])
        if rows:  # re-queued runs, and runs queued behind a dead-lettered one
            await store.notify_work(conn)
    return rows


async def mark_compensating(pool: AsyncConnectionPool, c: Claim, error: Any) -> bool:
    """Record that the run is undoing its effects (so a crash mid-way resumes the undo, not the run)."""
    async with pool.connection() as conn:
        row = await store.fetchone(
            conn, store.MARK_COMPENSATING, (Jsonb(error) if error else None, c.run_id, c.epoch)
        )
        return row is not None
