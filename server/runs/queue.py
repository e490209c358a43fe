"""The run queue in SQL: claim, heartbeat, finish, release, reap. Postgres is the only moving part.

Invariants kept by the database, not by any one process:
- a run is claimed by one worker at a time (`FOR UPDATE SKIP LOCKED`, then a lease);
- a thread has at most one running run (unique partial index); pending runs of a thread go in order;
- every claim bumps `lease_epoch`; terminal updates and event appends require the current epoch, so a
  worker that lost its lease (a zombie) cannot overwrite the run it used to hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from server.runs.events import EVENTS_CHANNEL, append_unfenced

RUNS_CHANNEL = "keel_runs"  # payload "" = new work; "cancel:<run_id>" = cancellation requested
ACTIVE = ("pending", "running")

RUN_COLUMNS = ("run_id, thread_id, assistant_id, status, metadata, kwargs, multitask_strategy, created_at, "
               "updated_at, error, user_id, temporary, attempt, lease_owner, lease_epoch, cancel_requested, "
               "result, checkpoint_before, compensating")


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


_CLAIM = f"""
WITH next AS (
    SELECT r.run_id FROM keel_runs r
    WHERE r.status = 'pending'
      AND NOT EXISTS (SELECT 1 FROM keel_runs x WHERE x.thread_id = r.thread_id AND x.status = 'running')
      AND NOT EXISTS (SELECT 1 FROM keel_runs y WHERE y.thread_id = r.thread_id AND y.status = 'pending'
                      AND (y.created_at, y.run_id) < (r.created_at, r.run_id))
    ORDER BY r.created_at, r.run_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE keel_runs r SET status = 'running', attempt = r.attempt + 1, lease_owner = %(owner)s,
       lease_expires_at = now() + make_interval(secs => %(lease)s), lease_epoch = r.lease_epoch + 1,
       started_at = coalesce(r.started_at, now()), updated_at = now()
FROM next WHERE r.run_id = next.run_id
RETURNING {", ".join("r." + c.strip() for c in RUN_COLUMNS.split(","))}
"""


async def claim(pool: AsyncConnectionPool, owner: str, lease_s: float) -> Claim | None:
    """Take the oldest runnable pending run, or None."""
    for _ in range(5):
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(_CLAIM, {"owner": owner, "lease": lease_s})
                row = await cur.fetchone()
        except psycopg.errors.UniqueViolation:
            continue  # another worker started a run of the same thread at the same instant; pick again
        return Claim(row, int(row["lease_epoch"])) if row else None
    return None


async def finish(pool: AsyncConnectionPool, c: Claim, status: str, *, result: Any = None, error: Any = None,
                 thread_status: str, thread_values: Any, interrupts: Any) -> bool:
    """Move the run to a terminal status and update its thread; False if the lease was lost (fenced)."""
    async with pool.connection() as conn, conn.transaction():
        # Thread first, then run: the order run creation and cancellation lock them in (no deadlock).
        await conn.execute("SELECT 1 FROM keel_threads WHERE thread_id = %s FOR NO KEY UPDATE", (c.thread_id,))
        cur = await conn.execute(
            "UPDATE keel_runs SET status = %s, result = %s, error = %s, lease_owner = NULL, lease_expires_at = NULL, "
            "finished_at = now(), updated_at = now() "
            "WHERE run_id = %s AND lease_epoch = %s AND status = 'running' RETURNING temporary, kwargs",
            (status, Jsonb(result) if result is not None else None, Jsonb(error) if error else None,
             c.run_id, c.epoch))
        row = await cur.fetchone()
        if row is None:
            return False
        await set_thread_after_run(conn, c.thread_id, thread_status, thread_values, interrupts, error)
        # Wake the run's waiters; wake workers only if this thread has queued runs (others need no claim).
        await conn.execute(
            "SELECT pg_notify(%s, %s), CASE WHEN EXISTS (SELECT 1 FROM keel_runs WHERE thread_id = %s AND "
            "status = 'pending') THEN pg_notify(%s, '') END",
            (EVENTS_CHANNEL, f"done:{c.run_id}", c.thread_id, RUNS_CHANNEL))
    return True


async def set_thread_after_run(conn: psycopg.AsyncConnection, thread_id: str, status: str, values: Any,
                               interrupts: Any, error: Any) -> None:
    """Thread status after a run: busy while other runs are queued, else the run's outcome."""
    await conn.execute(
        "UPDATE keel_threads SET status = CASE WHEN EXISTS (SELECT 1 FROM keel_runs WHERE thread_id = %s "
        "AND status = ANY(%s)) THEN 'busy' ELSE %s END, \"values\" = coalesce(%s, \"values\"), "
        "interrupts = %s, error = %s, updated_at = now(), state_updated_at = now() WHERE thread_id = %s",
        (thread_id, list(ACTIVE), status, Jsonb(values) if values is not None else None, Jsonb(interrupts or {}),
         Jsonb(error) if error else None, thread_id))


async def release(pool: AsyncConnectionPool, c: Claim, *, count_attempt: bool) -> bool:
    """Give the run back to the queue (drain, transient failure); another worker takes it at once."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE keel_runs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, "
            "attempt = CASE WHEN %s THEN attempt ELSE greatest(attempt - 1, 0) END, updated_at = now() "
            "WHERE run_id = %s AND lease_epoch = %s AND status = 'running' RETURNING run_id",
            (count_attempt, c.run_id, c.epoch))
        ok = await cur.fetchone() is not None
        await conn.execute("SELECT pg_notify(%s, '')", (RUNS_CHANNEL,))
    return ok


def heartbeat_sql() -> str:
    # clock_timestamp(), not now(): an UPDATE that waited on a row lock (held by a transaction of the
    # same worker whose event loop is blocked) must extend the lease from when it runs, not when it began.
    return ("UPDATE keel_runs SET lease_expires_at = clock_timestamp() + make_interval(secs => %s) "
            "WHERE run_id = ANY(%s::uuid[]) AND lease_owner = %s AND status = 'running' "
            "RETURNING run_id::text, lease_epoch, cancel_requested")


async def reap(pool: AsyncConnectionPool, max_attempts: int, *, owner: str, lease_s: float,
               held: list[str]) -> list[dict[str, Any]]:
    """Re-queue runs whose lease expired; dead-letter those that used up their attempts (poison runs).

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
    exhausted = ("jsonb_build_object('error', 'RunAttemptsExhausted', 'message', format('the worker running this "
                 "run died %%s times (lease expired each time); giving up', k.attempt))")
    comp_failed = ("jsonb_build_object('error', 'CompensationFailed', 'message', format('undoing this run''s side "
                   "effects failed %%s times; they need a human (see keel_tool_ledger)', k.attempt))")
    dead = "(e.give_up OR (e.exhausted AND NOT e.compensating AND NOT e.has_effects))"
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            # Threads first, then runs: the order run creation and finish() lock them in (no deadlock). A thread
            # some request holds right now is skipped, with its runs, until the next reap.
            "WITH threads AS (SELECT t.thread_id FROM keel_threads t WHERE t.thread_id IN (SELECT x.thread_id "
            "FROM keel_runs x WHERE x.status = 'running' AND x.lease_expires_at < now() "
            "AND x.run_id <> ALL(%(held)s::uuid[])) FOR UPDATE OF t SKIP LOCKED), "
            "expired AS (SELECT run_id, attempt >= %(max)s AS exhausted, "
            # A run stuck undoing its effects gets a few more attempts, then stops looping.
            "compensating AND attempt >= %(max)s + 3 AS give_up, compensating, "
            "EXISTS (SELECT 1 FROM keel_tool_ledger l WHERE l.run_id = r.run_id::text AND l.status = 'succeeded' "
            "AND coalesce(l.compensation, '') <> 'done') AS has_effects, "
            "attempt >= %(max)s AND NOT compensating AND finished_at IS NULL AND EXISTS (SELECT 1 FROM checkpoints c "
            "WHERE c.thread_id = r.thread_id::text AND c.checkpoint_ns = '' "
            "AND c.metadata->>'run_id' = r.run_id::text) AS finalize "
            "FROM keel_runs r WHERE status = 'running' AND lease_expires_at < now() "
            "AND run_id <> ALL(%(held)s::uuid[]) AND (r.thread_id IN (SELECT thread_id FROM threads) "
            "OR NOT EXISTS (SELECT 1 FROM keel_threads t2 WHERE t2.thread_id = r.thread_id)) "
            "FOR UPDATE OF r SKIP LOCKED) "
            "UPDATE keel_runs k SET "
            f"status = CASE WHEN e.finalize THEN 'running' WHEN {dead} THEN 'error' ELSE 'pending' END, "
            f"error = CASE WHEN e.finalize THEN k.error WHEN e.give_up THEN {comp_failed} "
            f"WHEN e.exhausted AND NOT e.compensating THEN {exhausted} ELSE k.error END, "
            "compensating = k.compensating OR (e.exhausted AND e.has_effects AND NOT e.finalize), "
            f"finished_at = CASE WHEN e.finalize OR {dead} THEN now() END, "
            "lease_owner = CASE WHEN e.finalize THEN %(owner)s END, "
            "lease_expires_at = CASE WHEN e.finalize THEN now() + make_interval(secs => %(lease)s) END, "
            "lease_epoch = k.lease_epoch + CASE WHEN e.finalize THEN 1 ELSE 0 END, updated_at = now() "
            "FROM expired e WHERE k.run_id = e.run_id "
            f"RETURNING {', '.join('k.' + c.strip() for c in RUN_COLUMNS.split(','))}, e.finalize",
            {"max": max_attempts, "owner": owner, "lease": lease_s, "held": held})
        rows = await cur.fetchall()
        for r in rows:
            if r["status"] == "error":
                await append_unfenced(conn, str(r["run_id"]), r["attempt"], "error", r["error"])
                await set_thread_after_run(conn, str(r["thread_id"]), "error", None, {}, r["error"])
        if rows:  # re-queued runs, and runs queued behind a dead-lettered one
            await conn.execute("SELECT pg_notify(%s, '')", (RUNS_CHANNEL,))
    return rows


async def mark_compensating(pool: AsyncConnectionPool, c: Claim, error: Any) -> bool:
    """Record that the run is undoing its effects (so a crash mid-way resumes the undo, not the run)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE keel_runs SET compensating = true, error = %s, updated_at = now() "
            "WHERE run_id = %s AND lease_epoch = %s AND status = 'running' RETURNING run_id",
            (Jsonb(error) if error else None, c.run_id, c.epoch))
        return await cur.fetchone() is not None
