"""One attempt at a claimed run: the handle the worker keeps, its user, and where its event log resumes.

Resumption after a crash: when the thread already has a checkpoint written by this run, the next
attempt continues from it; the events the crashed attempt logged after that checkpoint describe work
that is redone, so `prepare` drops them first and the log stays one gap-free sequence with each step
in it once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from langgraph.runtime import RunControl

from server.auth import User
from server.runs import store
from server.runs.events import EventWriter
from server.runs.queue import Claim


@dataclass
class RunHandle:
    """What the worker keeps about a run it is executing.

    `phase` says what may stop the run's task, whatever instant a signal arrives:
    - "queued": the task has not begun; a cancel or a lost lease is only recorded, the executor acts on it first;
    - "running": a cancel or a lost lease cancels the task (the executor records the cancel, or stops silently);
    - "undoing": compensating side effects; a lost lease stops it (another worker resumes the undo), a cancel
      does not: it is recorded, and a rollback then deletes the run once its effects are undone;
    - "settling": the outcome is known and being recorded, then housekeeping (checkpoint trim, temporary
      thread clean-up, reflection); nothing stops it: `finish()` is fenced by itself, and once it commits the
      run is no longer `running`, which a heartbeat must not mistake for a lost lease.
    """

    claim: Claim
    control: RunControl = field(default_factory=RunControl)
    task: asyncio.Task[None] | None = None
    lost: bool = False  # the lease was lost: stop without writing anything
    cancel: str | None = None  # "interrupt" | "rollback" when a cancel was requested
    phase: str = "queued"
    finalize: bool = (
        False  # taken over from a dead worker on its last attempt: only record what its checkpoints say
    )
    writer: EventWriter | None = None


def run_user(c: Claim) -> User:
    """The authenticated user the run was created by (roles and tenant included)."""
    u = (c.run["kwargs"] or {}).get("user") or {}
    return User(c.run["user_id"], tuple(u.get("roles") or ()), u.get("tenant"))


def recorded_modes(c: Claim) -> set[str]:
    """The stream modes the run's events are logged in (requested, plus those recorded for later joins)."""
    kwargs = c.run["kwargs"] or {}
    return set(kwargs.get("stream_mode") or ()) | set((kwargs.get("request") or {}).get("record_modes") or ())


async def prepare(pool: Any, c: Claim) -> tuple[int, bool]:
    """(last durable event seq, resume?) — and trim events of the previous attempt past its last checkpoint."""
    if "logged_seq" in c.run:  # the claim read where the log stands (store.CLAIM)
        ck = c.run["resume_from"]
        mark = ck.get("seq") if ck else 0
        keep = mark if isinstance(mark, int) else int(c.run["logged_seq"])
        # A first attempt has nothing to trim; after an earlier one, drop what it logged past its checkpoint.
        if int(c.run["logged_seq"]) > keep or c.attempt > 1:
            async with pool.connection() as conn:
                await conn.execute(store.DELETE_EVENTS_AFTER, (c.run_id, keep))
        return keep, ck is not None
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT checkpoint_id, metadata FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' "
            "AND metadata->>'run_id' = %s ORDER BY checkpoint_id DESC LIMIT 1",
            (c.thread_id, c.run_id),
        )
        ck = await cur.fetchone()
        # (Where the thread stood before the run, `checkpoint_before`, was recorded by the claim.)
        if ck is None:
            keep = 0
        else:
            mark = (ck["metadata"] or {}).get("keel_event_seq")
            if isinstance(mark, int):
                keep = mark
            else:
                keep = await store.last_seq(conn, c.run_id)
        await conn.execute(store.DELETE_EVENTS_AFTER, (c.run_id, keep))
    return keep, ck is not None


def open_writer(pool: Any, h: RunHandle, start_seq: int) -> EventWriter:
    """This attempt's event writer, appending after `start_seq`; kept on the handle."""
    c = h.claim
    h.writer = EventWriter(pool, c.run_id, c.epoch, c.attempt, start_seq)
    h.writer.pg_epoch = c.run.get("pg_epoch")  # (Postgres's crash epoch, read by the claim)
    return h.writer


async def last_event(pool: Any, c: Claim) -> str | None:
    """The name of the run's last logged event, if any."""
    async with pool.connection() as conn:
        row = await store.fetchone(conn, store.LAST_EVENT, (c.run_id,))
    return row["event"] if row else None
