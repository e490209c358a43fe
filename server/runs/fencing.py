"""The fences of a run's writes, apart from the event log so the saver can import them: a lost lease (`Fenced`),
a Postgres crash since the claim (`PostgresRestarted`), and a write that must run to its end (`run_to_end`).

(The event log imports the database package, whose start-up imports the saver: kept here, these names import
without it, so `server.runs.events` may be the first module a program imports.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")


async def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Run a database write to its end even when the calling task is cancelled meanwhile (a run's cancel or
    lost lease): a pipeline cut off mid-protocol could go back to the pool half-used. The caller's cancel is
    raised once the write is over, committed or not."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class Fenced(Exception):
    """This worker no longer holds the run's lease; it must stop touching the run."""


class PostgresRestarted(psycopg.OperationalError):
    """Postgres crashed (or failed over) since this attempt claimed its run, so commits of the attempt that did not
    wait for the WAL flush (events, pending writes, the graph's store writes, the input checkpoint) may be lost,
    while the attempt, on its reconnected pool, would go on as if they were not. A database failure (transient):
    raised at the attempt's next synchronous commit (a checkpoint, or the outcome), before it commits, it ends the
    attempt, and the run resumes from its last durable checkpoint on a new one.

    Told by Postgres's crash epoch (`keel_crash_epoch()`, migration 13): a token in an unlogged table, which
    crash recovery empties (so a new token is drawn) and a clean shutdown keeps. It catches what the server's
    start time would miss, a backend crash that makes the postmaster reinitialise without restarting, and it
    lets a clean restart, which loses nothing, go by."""


def check_crash_epoch(now: Any, expected: Any, run_id: str) -> None:
    """Raise PostgresRestarted unless Postgres's crash epoch (`now`, as just read) is the one the attempt was
    claimed in (`expected`; None: not known, nothing to check)."""
    if expected is not None and now is not None and now != expected:
        raise PostgresRestarted(
            f"Postgres crashed during run {run_id}'s attempt (crash epoch {expected}, now {now}); "
            "resuming from the run's last durable checkpoint"
        )
