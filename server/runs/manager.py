"""Run lifecycle: validate, record, execute the graph, publish stream parts, keep thread status right.

Runs execute as asyncio tasks in the API process here. Everything outside `_execute` talks to runs
through rows in Postgres and the broker, so moving execution to queue workers changes only this module.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langgraph.types import Command, Send
from psycopg.types.json import Jsonb

from server.auth import User
from server.errors import ApiError, parse_uuid
from server.logs import run_id_var, thread_id_var
from server.runs.broker import Broker
from server.schemas import RunCreate
from server.serde import jsonable
from server.threadstate import interrupts_by_task

if TYPE_CHECKING:
    from server.service import KeelService

log = logging.getLogger("keel.runs")

SUPPORTED_MODES = {"values", "updates", "messages", "messages-tuple", "custom", "tasks", "checkpoints", "debug"}
ACTIVE = ("pending", "running")
BUSY_DETAIL = "Thread is already running a task. Wait for it to finish or choose a different multitask strategy."

RUN_COLUMNS = ("run_id, thread_id, assistant_id, status, metadata, kwargs, multitask_strategy, created_at, "
               "updated_at, error, user_id, temporary")


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
    }


@dataclass
class Prepared:
    """A validated run request, ready to record and execute."""

    body: RunCreate
    assistant: dict[str, Any]
    context: Any
    modes: list[str]
    graph_input: Any
    extra: dict[str, Any] = field(default_factory=dict)


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
    """Creates runs and executes them; the only place that calls the graph for the API."""

    def __init__(self, svc: KeelService) -> None:
        self.svc = svc
        self.broker = Broker()
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancel_action: dict[str, str] = {}
        self._thread_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # ------------------------------------------------------------------ creation

    def prepare(self, user: User, body: RunCreate) -> Prepared:
        """Validate everything that can be validated before touching the database."""
        assistant = self.svc.assistants.resolve(body.assistant_id, for_run=True)
        modes = body.modes()
        bad = [m for m in modes if m not in SUPPORTED_MODES]
        if bad:
            raise ApiError(422, f"Unsupported stream_mode {bad[0]!r}; supported: {', '.join(sorted(SUPPORTED_MODES))}")
        context = self.svc.build_context(user, body.context)
        command = _command(body)
        graph_input = command if command is not None else body.input
        for name, nodes in (("interrupt_before", body.interrupt_before), ("interrupt_after", body.interrupt_after)):
            if isinstance(nodes, list):
                unknown = [n for n in nodes if n not in self.svc.node_names]
                if unknown:
                    raise ApiError(422, f"{name}: unknown node {unknown[0]!r}")
        if body.checkpoint_id is not None or (body.checkpoint or {}).get("checkpoint_id") is not None:
            pass  # checkpoint ids are opaque strings; an unknown one is reported when the run reads it
        return Prepared(body=body, assistant=assistant, context=context, modes=modes, graph_input=graph_input)

    async def create(self, user: User, thread_id: str | None, body: RunCreate) -> dict[str, Any]:
        """Record a run (and its thread when needed) atomically, then start it."""
        prep = self.prepare(user, body)
        temporary = thread_id is None
        tid = str(uuid.uuid4()) if temporary else parse_uuid(thread_id, "thread")
        rid = str(uuid.uuid4())
        assistant_id = prep.assistant["assistant_id"]
        kwargs = {
            "input": body.input, "command": body.command.model_dump(exclude_unset=True) if body.command else None,
            "config": body.config or {}, "context": body.context or {}, "stream_mode": prep.modes,
            "interrupt_before": body.interrupt_before, "interrupt_after": body.interrupt_after,
            "webhook": body.webhook, "feedback_keys": body.feedback_keys, "temporary": temporary,
            "subgraphs": body.stream_subgraphs, "resumable": body.stream_resumable,
            "durability": body.durability or self.svc.settings.keel_durability,
            "checkpoint_id": body.checkpoint_id or (body.checkpoint or {}).get("checkpoint_id"),
            "on_disconnect": body.on_disconnect, "on_completion": body.on_completion,
        }
        graph_meta = {"graph_id": prep.assistant["graph_id"], "assistant_id": assistant_id}
        async with self.svc.db.pool.connection() as conn, conn.transaction():
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
                if body.multitask_strategy == "reject":
                    cur = await conn.execute(
                        "SELECT 1 FROM keel_runs WHERE thread_id = %s AND status = ANY(%s) LIMIT 1", (tid, list(ACTIVE)))
                    if await cur.fetchone():
                        raise ApiError(409, BUSY_DETAIL)
                thread_meta = {**(row["metadata"] or {}), **graph_meta}
                await conn.execute(
                    "UPDATE keel_threads SET status = 'busy', metadata = %s, updated_at = now() WHERE thread_id = %s",
                    (Jsonb(thread_meta), tid))
            # The thread's metadata is copied into each run's metadata, not the other way round.
            run_meta = {**{k: v for k, v in thread_meta.items()}, **(body.metadata or {})}
            cur = await conn.execute(
                f"INSERT INTO keel_runs (run_id, thread_id, assistant_id, user_id, status, metadata, kwargs, "
                f"multitask_strategy, temporary) VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s, %s) "
                f"RETURNING {RUN_COLUMNS}",
                (rid, tid, assistant_id, user.id, Jsonb(jsonable(run_meta)), Jsonb(jsonable(kwargs)),
                 body.multitask_strategy, temporary))
            run = await cur.fetchone()
        self.broker.open(rid)
        self._tasks[rid] = asyncio.create_task(self._execute(run, prep, user), name=f"run-{rid}")
        return run

    # ------------------------------------------------------------------ execution

    async def _execute(self, run: dict[str, Any], prep: Prepared, user: User) -> None:
        rid, tid = str(run["run_id"]), str(run["thread_id"])
        thread_id_var.set(tid)
        run_id_var.set(rid)
        body = prep.body
        kwargs = run["kwargs"]
        pool = self.svc.db.pool
        status, error = "error", None
        async with self._thread_locks[tid]:
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(
                        "UPDATE keel_runs SET status = 'running', updated_at = now() "
                        "WHERE run_id = %s AND status = 'pending' RETURNING run_id", (rid,))
                    if await cur.fetchone() is None:
                        log.info("run no longer pending; not starting")
                        return
                log.info("run started")
                await self.broker.publish(rid, "metadata", {"run_id": rid, "attempt": 1})
                status, error = await self._stream_graph(run, prep, user)
            except asyncio.CancelledError:
                status = "interrupted"
                log.info("run cancelled (%s)", self._cancel_action.get(rid, "interrupt"))
            except Exception as exc:  # noqa: BLE001 - recorded on the run and sent to the client
                log.exception("run failed")
                status, error = "error", {"error": type(exc).__name__, "message": str(exc)}
                await self.broker.publish(rid, "error", error)
            finally:
                await asyncio.shield(self._finish(rid, tid, status, error, kwargs, body))
        log.info("run finished with status %s", status)

    async def _stream_graph(self, run: dict[str, Any], prep: Prepared, user: User) -> tuple[str, Any]:
        rid, tid = str(run["run_id"]), str(run["thread_id"])
        body, kwargs = prep.body, run["kwargs"]
        graph = self.svc.graph
        config = self.svc.run_config(body, thread_id=tid, run_id=rid, user=user, assistant=prep.assistant,
                                     run_metadata=run["metadata"])
        internal = set(prep.modes) | {"values", "updates"}
        lg_modes = sorted({"messages" if m in ("messages", "messages-tuple") else m for m in internal})
        subgraphs = bool(body.stream_subgraphs)
        partial: dict[str, Any] = {}  # message id -> the message so far ("messages" mode sends it whole)
        async for item in graph.astream(
            prep.graph_input, config, context=prep.context, stream_mode=lg_modes, subgraphs=subgraphs,
            interrupt_before=body.interrupt_before, interrupt_after=body.interrupt_after,
            durability=kwargs.get("durability") or "sync",
        ):
            ns, mode, chunk = item if subgraphs else ((), *item)
            suffix = "".join(f"|{n}" for n in ns)
            if mode == "messages":
                msg, meta = chunk
                if "messages-tuple" in prep.modes or "messages" not in prep.modes:
                    await self.broker.publish(rid, "messages" + suffix, jsonable([msg, meta]))
                if "messages" in prep.modes:
                    mid = getattr(msg, "id", None) or ""
                    if mid not in partial:
                        partial[mid] = msg
                        await self.broker.publish(rid, "messages/metadata" + suffix, {mid: {"metadata": jsonable(meta)}})
                    else:
                        try:
                            partial[mid] = partial[mid] + msg
                        except TypeError:  # not a chunk (a whole message): it replaces what we had
                            partial[mid] = msg
                    await self.broker.publish(rid, "messages/partial" + suffix, [jsonable(partial[mid])])
            else:
                await self.broker.publish(rid, mode + suffix, jsonable(chunk))
        snapshot = await graph.aget_state({"configurable": {"thread_id": tid}})
        pending = bool(snapshot.next) or any(t.interrupts for t in snapshot.tasks)
        await self.broker.publish(rid, "end", None)
        return ("interrupted" if pending else "success"), None

    async def _finish(self, rid: str, tid: str, status: str, error: Any, kwargs: dict[str, Any],
                      body: RunCreate) -> None:
        """Record the outcome on the run and the thread, then close the run's stream."""
        try:
            thread_status, values, interrupts = "idle", None, {}
            try:
                snapshot = await self.svc.graph.aget_state({"configurable": {"thread_id": tid}})
                values = jsonable(snapshot.values) if snapshot.values is not None else None
                interrupts = interrupts_by_task(snapshot)
                if snapshot.next or interrupts:
                    thread_status = "interrupted"
            except Exception:  # noqa: BLE001 - the database may be gone; the run row says what happened
                log.exception("could not read the final state")
            if status == "error":
                thread_status = "error"
            async with self.svc.db.pool.connection() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE keel_runs SET status = %s, error = %s, updated_at = now() WHERE run_id = %s",
                    (status, Jsonb(error) if error else None, rid))
                if kwargs.get("temporary") and body.on_completion == "delete":
                    await conn.execute("DELETE FROM keel_threads WHERE thread_id = %s", (tid,))
                else:
                    await conn.execute(
                        "UPDATE keel_threads SET status = CASE WHEN EXISTS (SELECT 1 FROM keel_runs WHERE "
                        "thread_id = %s AND status = ANY(%s)) THEN 'busy' ELSE %s END, \"values\" = %s, "
                        "interrupts = %s, error = %s, updated_at = now(), state_updated_at = now() "
                        "WHERE thread_id = %s",
                        (tid, list(ACTIVE), thread_status, Jsonb(values) if values is not None else None,
                         Jsonb(interrupts), Jsonb(error) if error else None, tid))
            if kwargs.get("temporary") and body.on_completion == "delete":
                await self.svc.db.checkpointer.adelete_thread(tid)
        finally:
            await self.broker.close(rid)
            self._tasks.pop(rid, None)
            self._cancel_action.pop(rid, None)

    # ------------------------------------------------------------------ control

    def is_local(self, run_id: str) -> bool:
        return run_id in self._tasks

    async def cancel(self, run_id: str, action: str = "interrupt", wait: bool = False) -> bool:
        """Cancel a run executing in this process; returns False if it is not running here."""
        task = self._tasks.get(run_id)
        if task is None:
            return False
        self._cancel_action[run_id] = action
        task.cancel()
        if wait:
            await asyncio.gather(task, return_exceptions=True)
        return True

    async def shutdown(self) -> None:
        """Cancel in-flight runs; their last checkpoints stay resumable (send `input: null`)."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
