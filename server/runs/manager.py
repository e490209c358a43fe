"""The API side of runs: validate, enqueue (one transaction), cancel. Workers execute them.

Creating a run writes a `pending` row and NOTIFYs the workers; the HTTP response then follows the run's
persisted event log. No run executes inside a request, so no HTTP timeout can kill one.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langgraph.types import Command, Send
from psycopg.types.json import Jsonb

from server.auth import User
from server.db import retry_transient
from server.errors import ApiError, not_found, parse_uuid
from server.logs import run_id_var, thread_id_var
from server.runs.events import append_unfenced
from server.runs.queue import RUN_COLUMNS, RUNS_CHANNEL
from server.schemas import RunCreate
from server.serde import jsonable
from tools import ledger

if TYPE_CHECKING:
    from server.service import KeelService

log = logging.getLogger("keel.runs")

SUPPORTED_MODES = {"values", "updates", "messages", "messages-tuple", "custom", "tasks", "checkpoints", "debug"}
ACTIVE = ("pending", "running")
BUSY_DETAIL = "Thread is already running a task. Wait for it to finish or choose a different multitask strategy."


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
class Prepared:
    """A validated run request, ready to record and execute."""

    body: RunCreate
    assistant: dict[str, Any]
    context: Any
    modes: list[str]
    graph_input: Any


def _command(body: RunCreate) -> Command | None:
    if body.command is None:
        return None
    goto = body.command.goto

    def one(g: Any) -> Any:
        if isinstance(g, dict):
            if "node" not in g:
                raise ApiError(422, "command.goto: a Send needs a 'node'")
            return Send(g["node"], g.get("input"))
        return g

    if isinstance(goto, list):
        goto = [one(g) for g in goto]
    elif goto is not None:
        goto = one(goto)
    kwargs: dict[str, Any] = {}
    fields = body.command.model_fields_set
    if "resume" in fields:
        kwargs["resume"] = body.command.resume
    if body.command.update is not None:
        update = body.command.update
        kwargs["update"] = [tuple(p) for p in update] if isinstance(update, list) else update
    if goto is not None:
        kwargs["goto"] = goto
    if not kwargs:
        raise ApiError(422, "command must set at least one of resume, update or goto")
    return Command(**kwargs)


class RunManager:
    """Creates and cancels runs; execution happens in queue workers."""

    def __init__(self, svc: KeelService) -> None:
        self.svc = svc

    def prepare(self, user: User, body: RunCreate) -> Prepared:
        """Validate everything that can be validated before touching the database."""
        assistant = self.svc.assistants.resolve(body.assistant_id, for_run=True)
        modes = body.modes()
        bad = [m for m in modes if m not in SUPPORTED_MODES]
        if bad:
            raise ApiError(422, f"Unsupported stream_mode {bad[0]!r}; supported: {', '.join(sorted(SUPPORTED_MODES))}")
        context = self.svc.build_context(user, body.context)
        self.svc.check_config(body.config)
        command = _command(body)
        graph_input = command if command is not None else body.input
        for name, nodes in (("interrupt_before", body.interrupt_before), ("interrupt_after", body.interrupt_after)):
            if isinstance(nodes, list):
                unknown = [n for n in nodes if n not in self.svc.node_names]
                if unknown:
                    raise ApiError(422, f"{name}: unknown node {unknown[0]!r}")
        return Prepared(body=body, assistant=assistant, context=context, modes=modes, graph_input=graph_input)

    async def create(self, user: User, thread_id: str | None, body: RunCreate) -> dict[str, Any]:
        """Record a run (and its thread when needed) atomically, apply the multitask strategy, wake workers."""
        prep = self.prepare(user, body)
        temporary = thread_id is None
        checkpoint = {**(body.checkpoint or {}), **({"checkpoint_id": body.checkpoint_id} if body.checkpoint_id else {})}
        if checkpoint.get("checkpoint_id") and temporary:
            raise ApiError(422, "checkpoint_id: a stateless run has no thread to start from a checkpoint of")
        tid = str(uuid.uuid4()) if temporary else parse_uuid(thread_id, "thread")
        rid = str(uuid.uuid4())
        assistant_id = prep.assistant["assistant_id"]
        request = jsonable(body.model_dump(exclude={"assistant_id"}, exclude_unset=True))
        kwargs = {
            "input": body.input, "command": body.command.model_dump(exclude_unset=True) if body.command else None,
            "config": body.config or {}, "context": body.context or {}, "stream_mode": prep.modes,
            "interrupt_before": body.interrupt_before, "interrupt_after": body.interrupt_after,
            "webhook": body.webhook, "feedback_keys": body.feedback_keys, "temporary": temporary,
            "subgraphs": body.stream_subgraphs, "resumable": body.stream_resumable,
            "durability": body.durability or self.svc.settings.keel_durability,
            "checkpoint_id": body.checkpoint_id or (body.checkpoint or {}).get("checkpoint_id"),
            "on_disconnect": body.on_disconnect, "on_completion": body.on_completion,
            "request": request,
            "user": {"id": user.id, "roles": list(user.roles), "tenant": user.tenant},
        }
        graph_meta = {"graph_id": prep.assistant["graph_id"], "assistant_id": assistant_id}

        async def record(attempt: int) -> dict[str, Any]:
            # The ids were chosen above, so after a lost connection a repeat looks for the row first: the earlier
            # attempt may have committed. The run is recorded at most once.
            if attempt and (found := await self._find(rid)) is not None:
                return found
            async with self.svc.db.pool.connection() as conn, conn.transaction():
                run, cancels = await self._record(conn, user, body, prep, rid=rid, tid=tid, temporary=temporary,
                                                  checkpoint=checkpoint, kwargs=kwargs, graph_meta=graph_meta)
                await conn.execute("SELECT pg_notify(%s, '')", (RUNS_CHANNEL,))
                for crid, action in cancels:
                    await conn.execute("SELECT pg_notify(%s, %s)", (RUNS_CHANNEL, f"cancel:{crid}:{action}"))
            return run

        run = await retry_transient(record)
        thread_id_var.set(tid)
        run_id_var.set(rid)
        log.info("run queued (%s)", body.multitask_strategy)
        return run

    async def _record(self, conn: Any, user: User, body: RunCreate, prep: Prepared, *, rid: str, tid: str,
                      temporary: bool, checkpoint: dict[str, Any], kwargs: dict[str, Any],
                      graph_meta: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """The run's row (and its thread's), in the caller's transaction; returns the row and the cancels to send."""
        cancels: list[tuple[str, str]] = []
        if temporary:
            await conn.execute(
                "INSERT INTO keel_threads (thread_id, user_id, metadata, status) VALUES (%s, %s, %s, 'busy')",
                (tid, user.id, Jsonb(graph_meta)))
            thread_meta: dict[str, Any] = graph_meta
        else:
            cur = await conn.execute("SELECT user_id, metadata FROM keel_threads WHERE thread_id = %s FOR UPDATE",
                                     (tid,))
            row = await cur.fetchone()
            if row is None and body.if_not_exists == "create":
                await conn.execute(
                    "INSERT INTO keel_threads (thread_id, user_id, metadata) VALUES (%s, %s, %s)",
                    (tid, user.id, Jsonb(graph_meta)))
                row = {"user_id": user.id, "metadata": graph_meta}
            if row is None or row["user_id"] != user.id:
                raise ApiError(404, "Thread or assistant not found.")
            if checkpoint.get("checkpoint_id"):
                await self._check_checkpoint(tid, checkpoint)
            cur = await conn.execute(
                "SELECT run_id::text, status, kwargs FROM keel_runs WHERE thread_id = %s AND status = ANY(%s) "
                "ORDER BY created_at", (tid, list(ACTIVE)))
            active = await cur.fetchall()
            if active and body.multitask_strategy == "reject":
                raise ApiError(409, BUSY_DETAIL)
            if body.command is not None and "resume" in body.command.model_fields_set:
                for a in active:
                    if (a["kwargs"] or {}).get("command") and "resume" in a["kwargs"]["command"]:
                        raise ApiError(409, f"This thread's interrupt is already being resumed by run {a['run_id']}")
            if active and body.multitask_strategy in ("interrupt", "rollback"):
                cancels = await self._cancel_active(conn, active, body.multitask_strategy)
            thread_meta = {**(row["metadata"] or {}), **graph_meta}
            await conn.execute(
                "UPDATE keel_threads SET status = 'busy', metadata = %s, updated_at = now() WHERE thread_id = %s",
                (Jsonb(thread_meta), tid))
        # The thread's metadata is copied into each run's metadata, not the other way round.
        run_meta = {**thread_meta, **(body.metadata or {})}
        cur = await conn.execute(
            f"INSERT INTO keel_runs (run_id, thread_id, assistant_id, user_id, status, metadata, kwargs, "
            f"multitask_strategy, temporary) VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s, %s) "
            f"RETURNING {RUN_COLUMNS}",
            (rid, tid, prep.assistant["assistant_id"], user.id, Jsonb(jsonable(run_meta)), Jsonb(jsonable(kwargs)),
             body.multitask_strategy, temporary))
        run = await cur.fetchone()
        return run, cancels

    async def _find(self, run_id: str) -> dict[str, Any] | None:
        async with self.svc.db.pool.connection() as conn:
            cur = await conn.execute(f"SELECT {RUN_COLUMNS} FROM keel_runs WHERE run_id = %s", (run_id,))
            return await cur.fetchone()

    async def _check_checkpoint(self, thread_id: str, checkpoint: dict[str, Any]) -> None:
        """A run from a checkpoint the thread does not have would silently start from an empty state: 404."""
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint.get("checkpoint_ns") or "",
                                   "checkpoint_id": checkpoint["checkpoint_id"]}}
        if await self.svc.db.checkpointer.aget_tuple(config) is None:
            raise not_found("Checkpoint", checkpoint["checkpoint_id"])

    async def _cancel_active(self, conn, active: list[dict[str, Any]], action: str) -> list[tuple[str, str]]:
        """Cancel a thread's queued and running runs (multitask interrupt/rollback). Running ones are told."""
        notify = []
        for a in active:
            notify.extend(await self._cancel_row(conn, a["run_id"], a["status"], action))
        return notify

    async def _cancel_row(self, conn, run_id: str, status: str, action: str) -> list[tuple[str, str]]:
        if status == "pending":
            if action == "rollback":
                if await ledger.has_compensable(conn, run_id):
                    # A re-queued run that already acted: a worker must undo its effects before it goes.
                    await conn.execute("UPDATE keel_runs SET cancel_requested = 'rollback', updated_at = now() "
                                       "WHERE run_id = %s", (run_id,))
                    await conn.execute("SELECT pg_notify(%s, '')", (RUNS_CHANNEL,))
                    return []
                await conn.execute("DELETE FROM keel_run_events WHERE run_id = %s", (run_id,))
                await conn.execute("DELETE FROM keel_runs WHERE run_id = %s AND status = 'pending'", (run_id,))
            else:
                cur = await conn.execute(
                    "UPDATE keel_runs SET status = 'interrupted', cancel_requested = %s, finished_at = now(), "
                    "updated_at = now() WHERE run_id = %s AND status = 'pending' RETURNING attempt", (action, run_id))
                row = await cur.fetchone()
                if row is not None:
                    cur = await conn.execute("SELECT 1 FROM keel_run_events WHERE run_id = %s LIMIT 1", (run_id,))
                    if await cur.fetchone() is None:  # a stream starts with its metadata event, this one too
                        await append_unfenced(conn, run_id, row["attempt"], "metadata",
                                              {"run_id": run_id, "attempt": row["attempt"]})
                    await append_unfenced(conn, run_id, row["attempt"], "error",
                                          {"error": "Cancelled", "message": "the run was cancelled before it started"})
            return []
        await conn.execute("UPDATE keel_runs SET cancel_requested = %s, updated_at = now() WHERE run_id = %s",
                           (action, run_id))
        return [(run_id, action)]

    async def cancel(self, run: dict[str, Any], action: str = "interrupt") -> None:
        """Cancel one run: a pending run ends at once; a running one is stopped by its worker."""
        async with self.svc.db.pool.connection() as conn, conn.transaction():
            # Thread first, then run: the order run creation and finish() lock them in (no deadlock).
            await conn.execute("SELECT 1 FROM keel_threads WHERE thread_id = %s FOR UPDATE", (run["thread_id"],))
            cur = await conn.execute("SELECT status FROM keel_runs WHERE run_id = %s FOR UPDATE", (run["run_id"],))
            row = await cur.fetchone()
            if row is None or row["status"] not in ACTIVE:
                return
            notify = await self._cancel_row(conn, str(run["run_id"]), row["status"], action)
            if row["status"] == "pending":
                cur = await conn.execute("SELECT 1 FROM keel_runs WHERE thread_id = %s AND status = ANY(%s)",
                                         (run["thread_id"], list(ACTIVE)))
                if await cur.fetchone() is None:
                    await conn.execute("UPDATE keel_threads SET status = 'idle', updated_at = now() "
                                       "WHERE thread_id = %s AND status = 'busy'", (run["thread_id"],))
            for crid, act in notify:
                await conn.execute("SELECT pg_notify(%s, %s)", (RUNS_CHANNEL, f"cancel:{crid}:{act}"))
