"""Recording how a run ended: success or interrupt, error (after undoing its effects), cancel, rollback.

Every path ends the run in a terminal status through the fenced `finish` (or deletes it, for a rollback),
then hands the thread to housekeeping.
"""

from __future__ import annotations

import logging
from typing import Any

from server.db.saver import confirm_checkpoint
from server.runs import store
from server.runs.attempt import RunHandle, open_writer, prepare
from server.runs.compensation import Compensator
from server.runs.fencing import Fenced
from server.runs.housekeeping import Housekeeping
from server.runs.queue import finish, mark_compensating
from server.runs.store import Outcome, RunStatus, ThreadStatus
from server.serde import jsonable
from server.threadstate import interrupts_by_task

log = logging.getLogger("keel.runs")


def thread_status(pending: bool) -> ThreadStatus:
    """A thread's status once its run stopped: waiting at an interrupt (or a next step), or idle."""
    return ThreadStatus.INTERRUPTED if pending else ThreadStatus.IDLE


class OutcomeRecorder:
    """Records a run's outcome on its row, its thread and its event log, undoing side effects when it fails."""

    def __init__(self, pool: Any, graph: Any, compensator: Compensator, housekeeping: Housekeeping) -> None:
        self.pool = pool
        self.graph = graph
        self.compensator = compensator
        self.housekeeping = housekeeping

    async def settle(self, h: RunHandle, last_values: Any) -> Outcome:
        """The graph stopped by itself (end or interrupt): record the outcome, then housekeeping."""
        c, writer = h.claim, h.writer
        assert writer is not None
        # The outcome is read from the run's checkpoints: its last one must be durable (see server.db.saver).
        await confirm_checkpoint(self.pool, writer, c.thread_id)
        snapshot = await self.graph.aget_state({"configurable": {"thread_id": c.thread_id}})
        pending = bool(snapshot.next) or any(t.interrupts for t in snapshot.tasks)
        writer.publish("end", None)  # the log's end marker; never sent to clients (see routes.runs)
        await writer.close(flush=False)  # the last events commit with the outcome, in finish()
        # A run that stopped at an interrupt succeeded (as in langgraph-api); its thread is "interrupted".
        status = RunStatus.SUCCESS
        ok = await finish(
            self.pool,
            c,
            status,
            result=last_values,
            thread_status=thread_status(pending),
            thread_values=jsonable(snapshot.values),
            interrupts=interrupts_by_task(snapshot),
            writer=writer,
            trim_keep=self.housekeeping.settings.keel_keep_checkpoints,
            pg_epoch=writer.pg_epoch,
        )
        outcome = Outcome.INTERRUPTED if pending else Outcome.SUCCESS
        log.info("run finished: %s", outcome if ok else f"{outcome} (fenced: lease lost)")
        if not ok:
            return Outcome.FENCED
        await self.housekeeping.after(c, None if pending else snapshot.values)
        return outcome

    async def failed(self, h: RunHandle, error: dict[str, Any]) -> Outcome:
        """End the run in error (undoing its side effects first, if it has any)."""
        c, writer = h.claim, h.writer
        assert writer is not None
        if await self.compensator.has_effects(c):
            return await self.finish_compensation(h, error)
        try:
            writer.publish("error", error)
            await writer.close()
            snapshot = await self.graph.aget_state({"configurable": {"thread_id": c.thread_id}})
            values, interrupts = jsonable(snapshot.values), interrupts_by_task(snapshot)
        except Fenced:
            return Outcome.FENCED
        except Exception:
            values, interrupts = None, {}
        if await finish(
            self.pool,
            c,
            RunStatus.ERROR,
            error=error,
            thread_status=ThreadStatus.ERROR,
            thread_values=values,
            interrupts=interrupts,
        ):
            await self.housekeeping.after(c, None)
        return Outcome.ERROR

    async def finish_compensation(self, h: RunHandle, error: Any) -> Outcome:
        """Mark the run compensating, undo its effects, then end it in error."""
        c, writer = h.claim, h.writer
        assert writer is not None
        h.phase = "undoing"
        if not await mark_compensating(self.pool, c, error):
            return Outcome.FENCED
        await self.compensator.compensate(c)
        h.phase = "settling"
        if h.cancel == "rollback":  # asked for while undoing: the effects are undone, now the run goes too
            await writer.close()
            await rollback(self.pool, self.graph, c.run_id, c.thread_id, epoch=c.epoch)
            log.info("failed run rolled back after compensating its effects")
            return Outcome.ROLLED_BACK
        error = error or {"error": "RunFailed", "message": "the run failed"}
        writer.publish("error", {**error, "compensated": True})
        try:
            await writer.close()
        except Fenced:
            return Outcome.FENCED
        snapshot = await self.graph.aget_state({"configurable": {"thread_id": c.thread_id}})
        if await finish(
            self.pool,
            c,
            RunStatus.ERROR,
            error=error,
            thread_status=ThreadStatus.ERROR,
            thread_values=jsonable(snapshot.values),
            interrupts=interrupts_by_task(snapshot),
        ):
            await self.housekeeping.after(c, None)
        return Outcome.ERROR

    async def cancelled(self, h: RunHandle) -> Outcome:
        """Record a cancel, whatever the run had reached: not begun, preparing, streaming or failing."""
        c = h.claim
        pool = self.pool
        if h.cancel == "rollback":
            h.phase = "undoing"
            await self.compensator.compensate(c)
            if h.writer is not None:
                await h.writer.close()  # no flush of this attempt may land after the rollback
            h.phase = "settling"
            await rollback(self.pool, self.graph, c.run_id, c.thread_id, epoch=c.epoch)
            log.info("run cancelled and rolled back")
            return Outcome.ROLLED_BACK
        h.phase = "settling"
        writer = h.writer
        if writer is None:  # cancelled before this attempt began its part of the event log
            start_seq, _ = await prepare(pool, c)
            writer = open_writer(pool, h, start_seq)
            writer.publish("metadata", {"run_id": c.run_id, "attempt": c.attempt}, now=True)
        # No error event: the reference server ends a cancelled run's stream without one (a client would
        # show the cancel as a failure). The end marker stays in the log only.
        writer.publish("end", None)
        await writer.close()
        snapshot = await self.graph.aget_state({"configurable": {"thread_id": c.thread_id}})
        await finish(
            pool,
            c,
            RunStatus.INTERRUPTED,
            thread_status=thread_status(bool(snapshot.next)),
            thread_values=jsonable(snapshot.values),
            interrupts=interrupts_by_task(snapshot),
        )
        log.info("run cancelled (interrupt); its checkpoints stay resumable")
        return Outcome.INTERRUPTED


async def rollback(pool: Any, graph: Any, run_id: str, thread_id: str, epoch: int | None = None) -> None:
    """Undo a run: delete the checkpoints it wrote (those after `checkpoint_before`), its events and its row.

    `checkpoint_before` is unset when the run was cancelled before any attempt began: then only checkpoints
    carrying the run's id (none, normally) go, never the thread's earlier history.
    """
    async with pool.connection() as conn, conn.transaction():
        row = await store.fetchone(conn, store.LOCK_RUN_FOR_ROLLBACK, (run_id,))
        if row is None or (epoch is not None and row["lease_epoch"] != epoch):
            return
        if row["checkpoint_before"] is not None:
            cut, op = row["checkpoint_before"], ">"
        else:
            cur = await conn.execute(
                "SELECT min(checkpoint_id) AS id FROM checkpoints WHERE thread_id = %s "
                "AND metadata->>'run_id' = %s",
                (thread_id, run_id),
            )
            cut, op = (await cur.fetchone())["id"], ">="
        if cut is not None:
            for table in ("checkpoint_writes", "checkpoints"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE thread_id = %s AND checkpoint_id {op} %s", (thread_id, cut)
                )
        await store.delete_run(conn, run_id)
        await store.notify_done(conn, run_id)
    snapshot = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    async with pool.connection() as conn:
        await store.set_thread_after_run(
            conn,
            thread_id,
            thread_status(bool(snapshot.next)),
            jsonable(snapshot.values) if snapshot.values else None,
            interrupts_by_task(snapshot),
            None,
        )
