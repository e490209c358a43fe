"""Compensating a run's side effects: undo the effects its tools completed, newest first (saga)."""

from __future__ import annotations

import logging
from typing import Any

from server.runs.attempt import run_user
from server.runs.queue import Claim
from server.settings import Settings

log = logging.getLogger("keel.runs")


class Compensator:
    """Finds and undoes a run's compensable effects with the toolbox's tools."""

    def __init__(self, db: Any, settings: Settings, toolbox: Any) -> None:
        self.db = db  # server.db.Database: pool, store
        self.pool = db.pool
        self.settings = settings
        self.toolbox = toolbox  # the tools a compensation undoes effects with

    async def has_effects(self, c: Claim) -> bool:
        """Did the run complete a side effect that can be undone?"""
        from tools import ledger

        async with self.pool.connection() as conn:
            return await ledger.has_compensable(conn, c.run_id)

    async def compensate(self, c: Claim) -> int:
        """Undo the run's completed side effects, newest first (saga); resumable after a crash."""
        from tools.policy import UserAttrs
        from tools.registry import ToolContext
        from tools.saga import compensate_run

        user = run_user(c)
        ctx = ToolContext(
            user=UserAttrs(user.id, frozenset(user.roles), user.tenant),
            namespace=self.settings.keel_namespace,
            store=self.db.store,
            thread_id=c.thread_id,
            run_id=c.run_id,
            pool=self.pool,
            settings=self.toolbox.settings,
        )
        n = await compensate_run(self.toolbox.registry, ctx, c.run_id)
        log.info("compensated %d effect(s) of the run", n)
        return n
