"""After a run's outcome is recorded: clean up a temporary thread, trim checkpoints, reflect. Best effort."""

from __future__ import annotations

import logging
from typing import Any

from server.runs import store
from server.runs.attempt import run_user
from server.runs.planner import Planner
from server.runs.queue import Claim
from server.settings import Settings

log = logging.getLogger("keel.runs")


class Housekeeping:
    """The steps after a run ended; each is best effort, none can undo the outcome."""

    def __init__(self, db: Any, planner: Planner, settings: Settings) -> None:
        self.db = db  # server.db.Database: pool, checkpointer, store
        self.pool = db.pool
        self.planner = planner
        self.settings = settings

    async def after(self, c: Claim, values: dict[str, Any] | None) -> None:
        """After the run's outcome is recorded: each step best effort, none can undo the outcome."""
        try:
            await self._cleanup_temporary(c)
        except Exception:
            log.warning("deleting the temporary thread failed", exc_info=True)
        await self._trim(c)
        if values is not None and self.settings.keel_reflection:
            await self._reflect(c, values)

    async def _cleanup_temporary(self, c: Claim) -> None:
        """Stateless runs (on_completion=delete) leave no thread behind; the run row keeps the result."""
        kwargs = c.run["kwargs"] or {}
        if kwargs.get("temporary") and kwargs.get("on_completion", "delete") == "delete":
            async with self.pool.connection() as conn:
                await conn.execute(store.DELETE_THREAD, (c.thread_id,))
            await self.db.checkpointer.adelete_thread(c.thread_id)

    async def _trim(self, c: Claim) -> None:
        """Bound the thread's checkpoint storage (best effort)."""
        from server.retention import trim_checkpoints

        if "trim_cut" in c.run and c.run["trim_cut"] is None:
            return  # finish() found no more checkpoints than are kept
        try:
            await trim_checkpoints(self.db, c.thread_id, self.settings.keel_keep_checkpoints)
        except Exception:
            log.warning("checkpoint trimming failed", exc_info=True)

    async def _reflect(self, c: Claim, values: dict[str, Any]) -> None:
        """Keep durable facts from the conversation (best effort: a failure never fails the run)."""
        from agent.reflection import reflect

        try:
            user = run_user(c)
            facts = await reflect(
                self.db.store,
                list(values.get("messages", [])),
                self.planner.default_context(user.id, user.roles, user.tenant),
            )
            if facts:
                log.info("reflection stored %d memory(ies)", len(facts))
        except Exception:
            log.warning("reflection failed", exc_info=True)
