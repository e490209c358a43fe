"""The cron scheduler: one loop in every worker process; each due tick becomes exactly one run.

A tick is one transaction: claim due crons (`FOR UPDATE SKIP LOCKED`), record each one's run through the run
manager (the path `POST /runs` takes), advance its `next_run_at`, commit. Any number of schedulers may poll at
once: a claimed cron is invisible to the others until the commit, after which it is no longer due. A crash before
the commit rolls back both the run and the advance (the next poll fires it); after the commit both exist. So a
tick is neither fired twice nor skipped without a trace: a run the manager refuses (say the thread is busy and
the cron asks for `reject`) is logged, and the schedule moves on as langgraph-api's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from server.auth import User
from server.crons import store
from server.crons.schedule import next_fire, run_request
from server.db import is_transient_error
from server.errors import ApiError
from server.runs.manager import RunManager
from server.schemas import RunCreate, StreamMode

log = logging.getLogger("keel.crons")

BATCH = 20  # crons per transaction; a full batch polls again at once
# A cron's run is a background run: the event log records these modes, as POST /runs has it record them
# (server.routes.runs.BACKGROUND_MODES; tests/integration/test_crons.py checks the two agree).
BACKGROUND_MODES: tuple[StreamMode, ...] = ("values", "updates", "messages-tuple", "custom")
MIN_WAIT_S = 0.05


class CronScheduler:
    """Fires due crons from this process until stopped."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        runs: RunManager,
        *,
        poll_s: float,
        record_modes: Sequence[StreamMode] = BACKGROUND_MODES,
        name: str = "cron",
    ) -> None:
        self.pool = pool
        self.runs = runs
        self.poll_s = poll_s
        self.record_modes = list(record_modes)
        self.name = name
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._loop(), name=f"{self.name}-scheduler")

    async def stop(self) -> None:
        """Stop polling; a tick in progress finishes (or rolls back) first."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        log.info("cron scheduler polling every %gs", self.poll_s)
        while not self._stop.is_set():
            wait = self.poll_s
            try:
                if await self.tick() >= BATCH:
                    continue
                wait = await self._wait()
            except Exception:
                log.exception("cron scheduler tick failed; retrying in %gs", self.poll_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def _wait(self) -> float:
        """Until the earliest cron is due, but no longer than the poll interval (a new cron may appear)."""
        async with self.pool.connection() as conn:
            due_in = await store.seconds_to_next_due(conn)
        if due_in is None:
            return self.poll_s
        return max(MIN_WAIT_S, min(self.poll_s, due_in))

    async def tick(self) -> int:
        """Fire the crons due now (at most one batch), in one transaction; return how many were claimed."""
        async with self.pool.connection() as conn, conn.transaction():
            rows = await store.claim_due(conn, BATCH)
            for row in rows:
                await self._fire(conn, row)
        return len(rows)

    async def _fire(self, conn: AsyncConnection[Any], row: dict[str, Any]) -> None:
        cron_id = str(row["cron_id"])
        run_id: str | None = None
        try:
            async with (
                conn.transaction()
            ):  # a savepoint: a refused run leaves the claim and the advance intact
                run = await self.runs.create_in(conn, _owner(row), _thread(row), self._request(row))
            run_id = str(run["run_id"])
            log.info("cron %s fired run %s", cron_id, run_id)
        except ApiError as exc:
            log.warning("cron %s: its run was not created (%s: %s)", cron_id, exc.status, exc.detail)
        except Exception as exc:
            if is_transient_error(exc):
                raise  # the whole tick rolls back; the next poll fires these crons
            log.exception("cron %s: its run could not be created", cron_id)
        await store.advance(conn, cron_id, next_fire(row["schedule"], row["timezone"], row["db_now"]), run_id)

    def _request(self, row: dict[str, Any]) -> RunCreate:
        """The cron's run request; a background run's, so a later join may ask for any recorded mode."""
        body = run_request(row["payload"], on_completion=row["on_run_completed"])
        body.metadata = {**(row["metadata"] or {}), **(body.metadata or {})}
        body.record_modes = list(self.record_modes) or None
        return body


def _owner(row: dict[str, Any]) -> User:
    """The cron's creator, as the run's user (its roles and tenant as they were when the cron was made)."""
    owner = row["owner"] or {}
    return User(str(row["user_id"]), tuple(owner.get("roles") or ()), owner.get("tenant"))


def _thread(row: dict[str, Any]) -> str | None:
    return str(row["thread_id"]) if row["thread_id"] is not None else None
