"""The API side of runs: validate, enqueue (one transaction), cancel. Workers execute them.

Creating a run writes a `pending` row and NOTIFYs the workers; the HTTP response then follows the run's
persisted event log. No run executes inside a request, so no HTTP timeout can kill one.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, cast

from psycopg import AsyncConnection, AsyncCursor
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from server.auth import User
from server.db import pipelined_transaction, retry_transient
from server.errors import ApiError, not_found, parse_uuid
from server.logs import run_id_var, thread_id_var
from server.runs import store
from server.runs.planner import Plan, Planner
from server.runs.store import ACTIVE, RunStatus
from server.schemas import RunCreate
from server.serde import jsonable
from tools import ledger

log = logging.getLogger("keel.runs")

BUSY_DETAIL = (
    "Thread is already running a task. Wait for it to finish or choose a different multitask strategy."
)


def run_json(row: dict[str, Any]) -> dict[str, Any]:
    """A keel_runs row as the API's Run object."""
    return {
        "run_id": str(row["run_id"]),
        "thread_id": str(row["thread_id"]),
        "assistant_id": str(row["assistant_id"]),
        "status": row["status"],
        "metadata": row["metadata"] or {},
        "kwargs": row["kwargs"] or {},
        "multitask_strategy": row["multitask_strategy"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "error": row.get("error"),
        "attempt": row.get("attempt"),
    }


@dataclass
class _ThreadReads:
    """The cursors of a run's reads of its thread (see RunManager._ask_thread)."""

    row: AsyncCursor[Any]
    active: AsyncCursor[Any]


async def _row(inserted: AsyncCursor[Any]) -> dict[str, Any]:
    """The run's row, from its INSERT ... RETURNING (the pool's rows are dicts)."""
    run = cast("dict[str, Any] | None", await inserted.fetchone())
    assert run is not None
    return run


def thread_config(
    assistant: dict[str, Any], current: dict[str, Any] | None, request: dict[str, Any] | None
) -> dict[str, Any]:
    """A thread's `config` once a run starts on it, as langgraph-api keeps it: the assistant's config, the
    thread's, the run request's on top, and `configurable` from the assistant's and the thread's only."""
    current = current or {}
    configurable = {
        **((assistant.get("config") or {}).get("configurable") or {}),
        **(current.get("configurable") or {}),
    }
    return {**(assistant.get("config") or {}), **current, **(request or {}), "configurable": configurable}


class RunManager:
    """Creates and cancels runs; execution happens in queue workers."""

    def __init__(self, pool: AsyncConnectionPool, checkpointer: Any, planner: Planner) -> None:
        self.pool = pool
        self.checkpointer = checkpointer  # to refuse a run from a checkpoint the thread does not have
        self.planner = planner

    async def create(
        self,
        user: User,
        thread_id: str | None,
        body: RunCreate,
        *,
        run_id: str | None = None,
        durable: bool = True,
    ) -> dict[str, Any]:
        """Record a run (and its thread when needed) atomically, apply the multitask strategy, wake workers.
        `run_id`: the new run's id, when the caller chose it (a fresh UUID: it waits for the run's end).

        `durable` False: the creation commits without waiting for the WAL flush (unless it cancels other runs).
        A Postgres crash can then lose it, so the caller tells its client nothing about the run until a
        synchronous commit has followed: the run's claim or end (any notification about the run proves one),
        else `confirm`."""
        rid = run_id or str(uuid.uuid4())
        tid = str(uuid.uuid4()) if thread_id is None else parse_uuid(thread_id, "thread")

        async def record(attempt: int) -> dict[str, Any]:
            # The ids were chosen above, so after a lost connection a repeat looks for the row first: the earlier
            # attempt may have committed. The run is recorded at most once.
            if attempt and (found := await self._find(rid)) is not None:
                return found
            try:
                # Two round trips, pipelined: BEGIN, the thread's row (locked) and its active runs go out first, so
                # they come back with the run's assistant, which the plan reads in the same transaction; the writes
                # then go out with the COMMIT, and the new row (its INSERT's RETURNING) is read once that is back.
                async with self.pool.connection() as conn:
                    async with pipelined_transaction(conn):
                        reads = None if thread_id is None else await self._ask_thread(conn, tid)
                        rec = await self._prepare(user, thread_id, body, rid, conn=conn, tid=tid)
                        inserted = await self._record_and_notify(conn, user, body, rec, reads, durable)
                    run = await _row(inserted)
            except pg_errors.UniqueViolation:
                # The earlier attempt's commit became visible only after the look above: it is our run.
                if attempt and (found := await self._find(rid)) is not None:
                    return found
                raise
            return run

        run: dict[str, Any] = await retry_transient(record)
        thread_id_var.set(tid)
        run_id_var.set(rid)
        log.info("run queued (%s)", body.multitask_strategy)
        return run

    async def create_in(
        self, conn: AsyncConnection[Any], user: User, thread_id: str | None, body: RunCreate
    ) -> dict[str, Any]:
        """Record a run in the caller's transaction (the cron scheduler commits it with the schedule's advance)."""
        rec = await self._prepare(user, thread_id, body)
        return await _row(await self._record_and_notify(conn, user, body, rec))

    async def _record_and_notify(
        self,
        conn: AsyncConnection[Any],
        user: User,
        body: RunCreate,
        rec: dict[str, Any],
        reads: _ThreadReads | None = None,
        durable: bool = True,
    ) -> AsyncCursor[Any]:
        """Record the run and wake the workers; returns the cursor of the run's INSERT ... RETURNING (on a
        pipelined connection its row arrives with the results of the statements after it: read it when needed).
        `durable` False: commit without waiting for the WAL flush, unless other runs are cancelled (a worker
        stops them at once: that must not be undone by a crash)."""
        inserted, cancels = await self._record(conn, user, body, reads=reads, **rec)
        await store.notify_work(conn)
        for crid, action in cancels:
            await store.notify_cancel(conn, crid, action)
        if not durable and not cancels:
            await conn.execute("SET LOCAL synchronous_commit = off")
        return inserted

    async def confirm(self, run_id: str) -> bool:
        """Make a run's creation durable (see `create`): a no-op when a synchronous commit has followed it.
        False: the run is gone (a Postgres crash lost its creation, or it has ended on a temporary thread)."""

        async def attempt(_: int) -> bool:
            async with self.pool.connection() as conn:
                row = await store.fetchone(
                    conn, store.CONFIRM_PENDING, {"run": run_id, "channel": store.RUNS_CHANNEL}
                )
            return bool(row and row["known"])

        known: bool = await retry_transient(attempt)
        return known

    @staticmethod
    async def _ask_thread(conn: AsyncConnection[Any], tid: str) -> _ThreadReads:
        """Send the reads of a run on an existing thread: its row, locked, then its active runs (in that order,
        so the runs are read under the lock). On a pipelined connection nothing waits for them yet."""
        row = await conn.execute(store.LOCK_THREAD_OWNER, (tid,))
        active = await conn.execute(store.THREAD_ACTIVE_RUNS, (tid, list(ACTIVE)))
        return _ThreadReads(row, active)

    async def _prepare(
        self,
        user: User,
        thread_id: str | None,
        body: RunCreate,
        run_id: str | None = None,
        *,
        conn: AsyncConnection[Any] | None = None,
        tid: str | None = None,
    ) -> dict[str, Any]:
        """Plan the request and choose the ids (unless given): everything `_record` needs, before any writes."""
        prep = await self.planner.aplan(user, body, conn)
        body = prep.body  # with its assistant's config and context merged in: what the run records
        temporary = thread_id is None
        checkpoint = {
            **(body.checkpoint or {}),
            **({"checkpoint_id": body.checkpoint_id} if body.checkpoint_id else {}),
        }
        if checkpoint.get("checkpoint_id") and temporary:
            raise ApiError(422, "checkpoint_id: a stateless run has no thread to start from a checkpoint of")
        tid = tid or (str(uuid.uuid4()) if thread_id is None else parse_uuid(thread_id, "thread"))
        rid = run_id or str(uuid.uuid4())
        assistant_id = prep.assistant["assistant_id"]
        request = jsonable(body.model_dump(exclude={"assistant_id"}, exclude_unset=True))
        kwargs = {
            "input": body.input,
            "command": body.command.model_dump(exclude_unset=True) if body.command else None,
            "config": body.config or {},
            "context": body.context or {},
            "stream_mode": prep.modes,
            "interrupt_before": body.interrupt_before,
            "interrupt_after": body.interrupt_after,
            "webhook": body.webhook,
            "feedback_keys": body.feedback_keys,
            "temporary": temporary,
            "subgraphs": body.stream_subgraphs,
            "resumable": body.stream_resumable,
            "durability": body.durability or self.planner.default_durability,
            "checkpoint_id": body.checkpoint_id or (body.checkpoint or {}).get("checkpoint_id"),
            "on_disconnect": body.on_disconnect,
            "on_completion": body.on_completion,
            "request": request,
            "user": {"id": user.id, "roles": list(user.roles), "tenant": user.tenant},
        }
        graph_meta = {"graph_id": prep.assistant["graph_id"], "assistant_id": assistant_id}
        return {
            "prep": prep,
            "rid": rid,
            "tid": tid,
            "temporary": temporary,
            "checkpoint": checkpoint,
            "kwargs": kwargs,
            "graph_meta": graph_meta,
        }

    async def _record(
        self,
        conn: Any,
        user: User,
        body: RunCreate,
        prep: Plan,
        *,
        rid: str,
        tid: str,
        temporary: bool,
        checkpoint: dict[str, Any],
        kwargs: dict[str, Any],
        graph_meta: dict[str, Any],
        reads: _ThreadReads | None = None,
    ) -> tuple[AsyncCursor[Any], list[tuple[str, str]]]:
        """The run's row (and its thread's), in the caller's transaction; returns the cursor of the run's
        INSERT ... RETURNING and the cancels to send. `reads`: the thread's reads, when already sent."""
        cancels: list[tuple[str, str]] = []
        if temporary:
            await conn.execute(store.INSERT_TEMPORARY_THREAD, (tid, user.id, Jsonb(graph_meta)))
            thread_meta: dict[str, Any] = graph_meta
        else:
            reads = reads or await self._ask_thread(conn, tid)
            row = cast("dict[str, Any] | None", await reads.row.fetchone())
            if row is None and body.if_not_exists == "create":
                await conn.execute(store.INSERT_THREAD, (tid, user.id, Jsonb(graph_meta)))
                row = {"user_id": user.id, "metadata": graph_meta}
            if row is None or row["user_id"] != user.id:
                raise ApiError(404, "Thread or assistant not found.")
            if checkpoint.get("checkpoint_id"):
                await self._check_checkpoint(tid, checkpoint)
            active = cast("list[dict[str, Any]]", await reads.active.fetchall())
            if active and body.multitask_strategy == "reject":
                raise ApiError(409, BUSY_DETAIL)
            if body.command is not None and "resume" in body.command.model_fields_set:
                for a in active:
                    if (a["kwargs"] or {}).get("command") and "resume" in a["kwargs"]["command"]:
                        raise ApiError(
                            409, f"This thread's interrupt is already being resumed by run {a['run_id']}"
                        )
            if active and body.multitask_strategy in ("interrupt", "rollback"):
                cancels = await self._cancel_active(conn, active, body.multitask_strategy)
            thread_meta = {**(row["metadata"] or {}), **graph_meta}
            config = thread_config(prep.assistant, row.get("config"), body.config)
            await conn.execute(store.MARK_THREAD_BUSY, (Jsonb(thread_meta), Jsonb(jsonable(config)), tid))
        # The thread's metadata is copied into each run's metadata, not the other way round; the assistant's
        # (created_by ...) lies under both, as langgraph-api merges them.
        run_meta = {**(prep.assistant.get("metadata") or {}), **thread_meta, **(body.metadata or {})}
        inserted = await conn.execute(
            store.INSERT_RUN,
            (
                rid,
                tid,
                prep.assistant["assistant_id"],
                user.id,
                Jsonb(jsonable(run_meta)),
                Jsonb(jsonable(kwargs)),
                body.multitask_strategy,
                temporary,
            ),
        )
        return inserted, cancels

    async def _find(self, run_id: str) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            return await store.get_run(conn, run_id)

    async def _check_checkpoint(self, thread_id: str, checkpoint: dict[str, Any]) -> None:
        """A run from a checkpoint the thread does not have would silently start from an empty state: 404."""
        config = {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": checkpoint.get("checkpoint_ns") or "",
                "checkpoint_id": checkpoint["checkpoint_id"],
            }
        }
        if await self.checkpointer.aget_tuple(config) is None:
            raise not_found("Checkpoint", checkpoint["checkpoint_id"])

    async def _cancel_active(
        self, conn: AsyncConnection[Any], active: list[dict[str, Any]], action: str
    ) -> list[tuple[str, str]]:
        """Cancel a thread's queued and running runs (multitask interrupt/rollback). Running ones are told."""
        notify = []
        for a in active:
            notify.extend(await self._cancel_row(conn, a["run_id"], a["status"], action))
        return notify

    async def _cancel_row(
        self, conn: AsyncConnection[Any], run_id: str, status: str, action: str
    ) -> list[tuple[str, str]]:
        if status == RunStatus.PENDING:
            if action == "rollback":
                if await ledger.has_compensable(conn, run_id):
                    # A re-queued run that already acted: a worker must undo its effects before it goes.
                    await conn.execute(store.REQUEST_ROLLBACK, (run_id,))
                    await store.notify_work(conn)
                    return []
                await conn.execute(store.DELETE_RUN_EVENTS, (run_id,))
                await conn.execute(store.DELETE_PENDING_RUN, (run_id,))
            else:
                row = await store.fetchone(conn, store.CANCEL_PENDING, (action, run_id))
                if row is not None:
                    if await store.fetchone(conn, store.HAS_EVENTS, (run_id,)) is None:
                        # a stream starts with its metadata event, this one too
                        await store.append_unfenced(
                            conn,
                            run_id,
                            row["attempt"],
                            "metadata",
                            {"run_id": run_id, "attempt": row["attempt"]},
                        )
                    await store.append_unfenced(
                        conn,
                        run_id,
                        row["attempt"],
                        "error",
                        {"error": "Cancelled", "message": "the run was cancelled before it started"},
                    )
            return []
        await conn.execute(store.REQUEST_CANCEL, (action, run_id))
        return [(run_id, action)]

    async def cancel(self, run: dict[str, Any], action: str = "interrupt") -> None:
        """Cancel one run: a pending run ends at once; a running one is stopped by its worker."""
        async with self.pool.connection() as conn, conn.transaction():
            # Thread first, then run: the order run creation and finish() lock them in (no deadlock).
            await conn.execute(store.LOCK_THREAD, (run["thread_id"],))
            row = await store.fetchone(conn, store.LOCK_RUN_STATUS, (run["run_id"],))
            if row is None or row["status"] not in ACTIVE:
                return
            notify = await self._cancel_row(conn, str(run["run_id"]), row["status"], action)
            if row["status"] == RunStatus.PENDING:
                if (
                    await store.fetchone(conn, store.THREAD_HAS_ACTIVE_RUN, (run["thread_id"], list(ACTIVE)))
                    is None
                ):
                    await conn.execute(store.MARK_THREAD_IDLE, (run["thread_id"],))
            for crid, act in notify:
                await store.notify_cancel(conn, crid, act)
