"""Execute one claimed run: stream the graph into the event log and record the outcome, fenced.

Resumption after a crash: when the thread already has a checkpoint written by this run, the next
attempt continues from it with `astream(None)`; finished steps are not redone. The events the crashed
attempt logged after its last checkpoint describe work that is redone, so they are dropped first and
the log stays one gap-free sequence with each step in it once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from langgraph.errors import GraphDrained
from langgraph.runtime import RunControl

from server.auth import User
from server.db import is_transient_error
from server.logs import run_id_var, thread_id_var
from server.runs import store
from server.runs.events import EventWriter, Fenced
from server.runs.planner import Planner
from server.runs.queue import Claim, finish, mark_compensating, release
from server.runs.store import Outcome, RunStatus, ThreadStatus
from server.saver import current_event_writer
from server.schemas import RunCreate
from server.serde import jsonable
from server.settings import Settings
from server.threadstate import interrupts_by_task

log = logging.getLogger("keel.runs")


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


def _is_database_error(exc: BaseException) -> bool:
    """Is `exc`, or anything it wraps (cause, context, group), a Postgres driver or pool error?"""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, psycopg.Error) or type(e).__module__.split(".")[0] in ("psycopg", "psycopg_pool"):
            return True
        stack += [e.__cause__, e.__context__, *(e.exceptions if isinstance(e, BaseExceptionGroup) else ())]
    return False


def public_error(exc: BaseException, run_id: str) -> dict[str, Any]:
    """The error a client sees: a graph's own exception keeps its type and message; a database or pool
    error (even wrapped in another exception) says nothing about SQL, tables or connections."""
    if _is_database_error(exc):
        return {
            "error": "InternalError",
            "message": f"the run failed because of an internal error; see the server log for run {run_id}",
        }
    return {"error": type(exc).__name__, "message": str(exc)}


def attempts_exhausted(attempt: int) -> dict[str, Any]:
    """The error of a run whose workers kept dying (the reaper's dead-letter message, same words)."""
    return {
        "error": "RunAttemptsExhausted",
        "message": f"the worker running this run died {attempt} times (lease expired each time); giving up",
    }


class RunExecutor:
    """Runs claimed runs: the graph, its database (pool, checkpointer, store), the planner and the settings."""

    def __init__(self, db: Any, graph: Any, planner: Planner, settings: Settings, toolbox: Any) -> None:
        self.db = db  # server.db.Database: pool, checkpointer, store
        self.pool = db.pool
        self.graph = graph
        self.planner = planner
        self.settings = settings
        self.toolbox = toolbox  # the tools a compensation undoes effects with

    async def _prepare(self, c: Claim) -> tuple[int, bool]:
        """(last durable event seq, resume?) — and trim events of the previous attempt past its last checkpoint."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT checkpoint_id, metadata FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' "
                "AND metadata->>'run_id' = %s ORDER BY checkpoint_id DESC LIMIT 1",
                (c.thread_id, c.run_id),
            )
            ck = await cur.fetchone()
            # Where the thread stood before this run wrote anything (a rollback deletes what comes after). Set by
            # the first attempt that gets this far, whatever its number: an attempt that died before this point
            # wrote no checkpoint.
            await conn.execute(store.SET_CHECKPOINT_BEFORE, (c.thread_id, c.run_id))
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

    def _writer(self, h: RunHandle, start_seq: int) -> EventWriter:
        c = h.claim
        h.writer = EventWriter(self.pool, c.run_id, c.epoch, c.attempt, start_seq)
        return h.writer

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
                return await self._finalize(h)
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
            return await self._cancelled(h)
        except Fenced:
            log.warning("lease lost; stopping without further writes")
            return Outcome.FENCED

    async def _run(self, h: RunHandle) -> Outcome:
        c = h.claim
        try:
            start_seq, resume = await self._prepare(c)
        except Exception as exc:
            if is_transient_error(exc):
                return Outcome.LOST_DB  # the lease expires and the reaper re-queues the run
            raise
        writer = self._writer(h, start_seq)
        token = current_event_writer.set(writer)
        try:
            if c.run.get("compensating"):
                return await self._finish_compensation(h, c.run.get("error"))
            return await self._graph(h, resume)
        finally:
            current_event_writer.reset(token)

    async def _graph(self, h: RunHandle, resume: bool) -> Outcome:
        c, writer = h.claim, h.writer
        assert writer is not None
        try:
            log.info("run started (attempt %d%s)", c.attempt, ", resuming from checkpoint" if resume else "")
            writer.publish("metadata", {"run_id": c.run_id, "attempt": c.attempt})
            last_values = await self._stream(h, writer, resume)
            h.phase = "settling"  # the graph is done: no cancel or late heartbeat may cut the rest short
            return await self._settle(h, last_values)
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
            if h.lost or _is_fence_error(exc):
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
            return await self._failed(h, public_error(exc, c.run_id))

    async def _settle(self, h: RunHandle, last_values: Any) -> Outcome:
        """The graph stopped by itself (end or interrupt): record the outcome, then housekeeping."""
        c, writer = h.claim, h.writer
        assert writer is not None
        snapshot = await self.graph.aget_state({"configurable": {"thread_id": c.thread_id}})
        pending = bool(snapshot.next) or any(t.interrupts for t in snapshot.tasks)
        writer.publish("end", None)
        await writer.close()
        status = RunStatus.INTERRUPTED if pending else RunStatus.SUCCESS
        ok = await finish(
            self.pool,
            c,
            status,
            result=last_values,
            thread_status=_thread_status(pending),
            thread_values=jsonable(snapshot.values),
            interrupts=interrupts_by_task(snapshot),
        )
        log.info("run finished with status %s", status if ok else f"{status} (fenced: lease lost)")
        if not ok:
            return Outcome.FENCED
        await self._housekeeping(c, snapshot.values if status == RunStatus.SUCCESS else None)
        return Outcome(status)

    async def _failed(self, h: RunHandle, error: dict[str, Any]) -> Outcome:
        """End the run in error (undoing its side effects first, if it has any)."""
        c, writer = h.claim, h.writer
        assert writer is not None
        if await self._has_effects(c):
            return await self._finish_compensation(h, error)
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
            await self._housekeeping(c, None)
        return Outcome.ERROR

    async def _finalize(self, h: RunHandle) -> Outcome:
        """A run whose worker died on its last attempt, after it had written checkpoints: no node runs again.

        If its graph had completed (or stopped at an interrupt) before the worker died, only the bookkeeping
        was missing: record the outcome the checkpoint holds. Otherwise it is dead-lettered as a poison run.
        """
        c = h.claim
        h.phase = "settling"
        start_seq, _ = await self._prepare(c)
        writer = self._writer(h, start_seq)
        snapshot = await self.graph.aget_state({"configurable": {"thread_id": c.thread_id}})
        own = (snapshot.metadata or {}).get("run_id") == c.run_id
        at_interrupt = any(t.interrupts for t in snapshot.tasks)
        if own and (not snapshot.next or at_interrupt):
            log.warning(
                "run's worker died after its last checkpoint (attempt %d); finishing it from there", c.attempt
            )
            values = jsonable(snapshot.values)
            if "values" in _recorded_modes(c) and await self._last_event(c) != "values":
                writer.publish("values", values)  # the final values event came after the last checkpoint
            return await self._settle(h, values)
        log.warning("run's worker died %d times; giving up", c.attempt)
        return await self._failed(h, attempts_exhausted(c.attempt))

    async def _last_event(self, c: Claim) -> str | None:
        async with self.pool.connection() as conn:
            row = await store.fetchone(conn, store.LAST_EVENT, (c.run_id,))
        return row["event"] if row else None

    async def _housekeeping(self, c: Claim, values: dict[str, Any] | None) -> None:
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

    async def _has_effects(self, c: Claim) -> bool:
        from tools import ledger

        async with self.pool.connection() as conn:
            return await ledger.has_compensable(conn, c.run_id)

    async def _compensate(self, c: Claim) -> int:
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

    async def _finish_compensation(self, h: RunHandle, error: Any) -> Outcome:
        """Mark the run compensating, undo its effects, then end it in error."""
        c, writer = h.claim, h.writer
        assert writer is not None
        h.phase = "undoing"
        if not await mark_compensating(self.pool, c, error):
            return Outcome.FENCED
        await self._compensate(c)
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
            await self._housekeeping(c, None)
        return Outcome.ERROR

    async def _cancelled(self, h: RunHandle) -> Outcome:
        """Record a cancel, whatever the run had reached: not begun, preparing, streaming or failing."""
        c = h.claim
        pool = self.pool
        if h.cancel == "rollback":
            h.phase = "undoing"
            await self._compensate(c)
            if h.writer is not None:
                await h.writer.close()  # no flush of this attempt may land after the rollback
            h.phase = "settling"
            await rollback(self.pool, self.graph, c.run_id, c.thread_id, epoch=c.epoch)
            log.info("run cancelled and rolled back")
            return Outcome.ROLLED_BACK
        h.phase = "settling"
        writer = h.writer
        if writer is None:  # cancelled before this attempt began its part of the event log
            start_seq, _ = await self._prepare(c)
            writer = self._writer(h, start_seq)
            writer.publish("metadata", {"run_id": c.run_id, "attempt": c.attempt})
        writer.publish("error", {"error": "Cancelled", "message": "the run was cancelled"})
        await writer.close()
        snapshot = await self.graph.aget_state({"configurable": {"thread_id": c.thread_id}})
        await finish(
            pool,
            c,
            RunStatus.INTERRUPTED,
            thread_status=_thread_status(bool(snapshot.next)),
            thread_values=jsonable(snapshot.values),
            interrupts=interrupts_by_task(snapshot),
        )
        log.info("run cancelled (interrupt); its checkpoints stay resumable")
        return Outcome.INTERRUPTED

    async def _stream(self, h: RunHandle, writer: EventWriter, resume: bool) -> Any:
        c = h.claim
        kwargs = c.run["kwargs"] or {}
        # The request as planned (and validated) when the run was created, planned again: the plan holds Python
        # objects (Command, Context) a JSON column cannot, and the pure planner gives the same answer every time.
        body = RunCreate.model_validate(
            {**kwargs.get("request", {}), "assistant_id": str(c.run["assistant_id"])}
        )
        user = run_user(c)
        prep = self.planner.plan(user, body)
        assistant = prep.assistant
        if resume:
            graph_input: Any = None
            body = body.model_copy(update={"checkpoint_id": None, "checkpoint": None})
        else:
            graph_input = prep.graph_input
            if body.command is not None and "resume" in body.command.model_fields_set:
                snap = await self.graph.aget_state({"configurable": {"thread_id": c.thread_id}})
                if not snap.next:
                    raise StaleResume("the thread has no pending interrupt to resume (already resumed?)")
        config = self.planner.run_config(
            body,
            thread_id=c.thread_id,
            run_id=c.run_id,
            user=user,
            assistant=assistant,
            run_metadata={**(c.run["metadata"] or {}), "keel_epoch": c.epoch},
        )
        recorded = set(prep.modes) | set(body.record_modes or ())
        internal = recorded | {"values"}
        lg_modes = sorted({"messages" if m in ("messages", "messages-tuple") else m for m in internal})
        subgraphs = bool(body.stream_subgraphs)
        partial: dict[str, Any] = {}
        last_values: Any = None
        async for item in self.graph.astream(
            graph_input,
            config,
            context=prep.context,
            stream_mode=lg_modes,
            subgraphs=subgraphs,
            interrupt_before=body.interrupt_before,
            interrupt_after=body.interrupt_after,
            durability=kwargs.get("durability") or "sync",
            control=h.control,
        ):
            ns, mode, chunk = item if subgraphs else ((), *item)
            suffix = "".join(f"|{n}" for n in ns)
            if mode == "messages":
                msg, meta = chunk
                if "messages-tuple" in recorded:
                    writer.publish("messages" + suffix, jsonable([msg, meta]))
                if "messages" in recorded:
                    mid = getattr(msg, "id", None) or ""
                    if mid not in partial:
                        partial[mid] = msg
                        writer.publish("messages/metadata" + suffix, {mid: {"metadata": jsonable(meta)}})
                    else:
                        try:
                            partial[mid] = partial[mid] + msg
                        except TypeError:
                            partial[mid] = msg
                    writer.publish("messages/partial" + suffix, [jsonable(partial[mid])])
                continue
            data = jsonable(chunk)
            if mode == "values" and not ns:
                last_values = data
            if mode in recorded:
                writer.publish(mode + suffix, data)
        return last_values


def _recorded_modes(c: Claim) -> set[str]:
    kwargs = c.run["kwargs"] or {}
    return set(kwargs.get("stream_mode") or ()) | set((kwargs.get("request") or {}).get("record_modes") or ())


def _thread_status(pending: bool) -> ThreadStatus:
    """A thread's status once its run stopped: waiting at an interrupt (or a next step), or idle."""
    return ThreadStatus.INTERRUPTED if pending else ThreadStatus.IDLE


def _absorb_cancel() -> None:
    """This task handles the cancel it just caught (records it) rather than ending: forget the request."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def run_user(c: Claim) -> User:
    """The authenticated user the run was created by (roles and tenant included)."""
    u = (c.run["kwargs"] or {}).get("user") or {}
    return User(c.run["user_id"], tuple(u.get("roles") or ()), u.get("tenant"))


class StaleResume(Exception):
    """A resume command for a thread that is not waiting for one."""


def _is_fence_error(exc: BaseException) -> bool:
    return getattr(getattr(exc, "diag", None), "sqlstate", None) == "KL001" or "lost its lease" in str(exc)


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
            _thread_status(bool(snapshot.next)),
            jsonable(snapshot.values) if snapshot.values else None,
            interrupts_by_task(snapshot),
            None,
        )
