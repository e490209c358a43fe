"""Execute one claimed run: stream the graph into the event log and record the outcome, fenced.

The executor orchestrates an attempt and decides which path ends it; the jobs live beside it:
`attempt` (the handle, where the event log resumes), `stream` (the graph into the event log), `outcome`
(recording success, interrupt, error, cancel, rollback), `finalize` (a run whose worker died on its last
attempt), `compensation` (undoing side effects), `housekeeping` (after the outcome) and `errors`.

Resumption after a crash: when the thread already has a checkpoint written by this run, the next
attempt continues from it with `astream(None)`; finished steps are not redone. The events the crashed
attempt logged after its last checkpoint describe work that is redone, so they are dropped first and
the log stays one gap-free sequence with each step in it once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from langgraph.errors import GraphDrained

from server.db import is_transient_error
from server.db.saver import current_event_writer
from server.logs import run_id_var, thread_id_var
from server.runs.attempt import RunHandle, open_writer, prepare
from server.runs.compensation import Compensator
from server.runs.errors import is_fence_error, public_error
from server.runs.fencing import Fenced
from server.runs.finalize import finalize
from server.runs.housekeeping import Housekeeping
from server.runs.outcome import OutcomeRecorder
from server.runs.planner import Planner
from server.runs.queue import release
from server.runs.store import Outcome
from server.runs.stream import stream_graph
from server.settings import Settings

log = logging.getLogger("keel.runs")


class RunExecutor:
    """Runs claimed runs: the graph, its database (pool, checkpointer, store), the planner and the settings."""

    def __init__(self, db: Any, graph: Any, planner: Planner, settings: Settings, toolbox: Any) -> None:
        self.db = db  # server.db.Database: pool, checkpointer, store
        self.pool = db.pool
        self.graph = graph
        self.planner = planner
        self.settings = settings
        self.toolbox = toolbox  # the tools a compensation undoes effects with
        self.outcomes = OutcomeRecorder(
            self.pool, graph, Compensator(db, settings, toolbox), Housekeeping(db, planner, settings)
        )

    async def execute(self, h: RunHandle) -> Outcome:
        """Run to a terminal state, or hand the run back; returns what happened (for logs and tests).

        A cancel (API cancel, multitask interrupt/rollback) may arrive at any instant; every path below ends
        the run in a terminal status or hands it back to the queue, never leaves it `running` unheld.
        """
        c = h.claim
        thread_id_var.set(c.thread_id)
        run_id_var.set(c.run_id)
        h.phase = "running"  # from here on a cancel or a lost lease cancels this task (see RunHandle)
        if h.lost:
            return Outcome.FENCED
        try:
            if h.finalize:
                return await finalize(self.outcomes, h)
            if h.cancel is None and c.run.get("cancel_requested"):
                h.cancel = c.run["cancel_requested"]  # cancelled in an earlier attempt, or while re-queued
            if c.run.get("compensating"):
                h.phase = "undoing"  # a failed run finishes undoing its effects, whatever is asked meanwhile
                return await self._run(h)
            if h.cancel is None:
                try:
                    return await self._run(h)
                except asyncio.CancelledError:
                    if h.lost:
                        log.warning("lease lost; stopped")
                        return Outcome.FENCED
                    if h.cancel is None:
                        raise  # the worker itself is being torn down
                    _absorb_cancel()
            return await self.outcomes.cancelled(h)
        except Fenced:
            log.warning("lease lost; stopping without further writes")
            return Outcome.FENCED

    async def _run(self, h: RunHandle) -> Outcome:
        c = h.claim
        try:
            start_seq, resume = await prepare(self.pool, c)
        except Exception as exc:
            if is_transient_error(exc):
                return Outcome.LOST_DB  # the lease expires and the reaper re-queues the run
            raise
        writer = open_writer(self.pool, h, start_seq)
        token = current_event_writer.set(writer)
        try:
            if c.run.get("compensating"):
                return await self.outcomes.finish_compensation(h, c.run.get("error"))
            return await self._graph(h, resume)
        finally:
            current_event_writer.reset(token)

    async def _graph(self, h: RunHandle, resume: bool) -> Outcome:
        c, writer = h.claim, h.writer
        assert writer is not None
        try:
            log.info("run started (attempt %d%s)", c.attempt, ", resuming from checkpoint" if resume else "")
            # (carried by the run's first checkpoint, or flushed with its first output: see EventWriter.publish)
            writer.publish("metadata", {"run_id": c.run_id, "attempt": c.attempt})
            last_values = await stream_graph(self.graph, self.planner, h, writer, resume)
            h.phase = "settling"  # the graph is done: no cancel or late heartbeat may cut the rest short
            return await self.outcomes.settle(h, last_values)
        except GraphDrained:
            h.phase = "settling"  # a cancel meanwhile stays in the row; the next claim honours it
            await writer.close()
            await release(self.pool, c, count_attempt=False)
            log.info("run drained at a step boundary; handed back to the queue")
            return Outcome.DRAINED
        except Fenced:
            log.warning("lease lost; stopping without further writes")
            return Outcome.FENCED
        except Exception as exc:  # recorded on the run, sent to the client
            h.phase = "settling"
            if h.lost or is_fence_error(exc):
                log.warning("lease lost during the run (%s); stopping", exc)
                return Outcome.FENCED
            if is_transient_error(exc):
                log.warning("database unavailable during the run (%s); handing it back", exc)
                try:
                    await release(self.pool, c, count_attempt=True)
                except Exception:  # the reaper re-queues it when the lease expires
                    pass
                return Outcome.RELEASED
            log.exception("run %s on thread %s failed", c.run_id, c.thread_id)
            return await self.outcomes.failed(h, public_error(exc, c.run_id))


def _absorb_cancel() -> None:
    """This task handles the cancel it just caught (records it) rather than ending: forget the request."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
