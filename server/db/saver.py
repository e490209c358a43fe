"""The Postgres checkpointer and store with Keel's run-engine hooks: one synchronous commit per super-step.

A run's checkpoint and the stream events that precede it commit in ONE transaction: the checkpoint's
metadata records how far the event log had got (`keel_event_seq`), so an event that precedes a durable
checkpoint is itself durable, and after a crash the next attempt knows exactly which logged events describe
work that will be redone (those after `keel_event_seq`). The transaction first takes the run's fence (its
lease epoch, FOR KEY SHARE), and the `keel_fence` trigger refuses a checkpoint of a lost lease, so a zombie
worker writes neither.

The pending writes of finished tasks (`aput_writes`) are held by the run's event writer like events: the
next checkpoint's transaction carries them, or, when no checkpoint comes within a few milliseconds (a
sibling task still running), they commit on their own; closing the writer commits what is left before the
run's outcome is read back. These, and the graph's own store writes, commit without waiting for the WAL
flush (`synchronous_commit = off`). That is safe because WAL is flushed in order: the step's checkpoint,
or the run's terminal `finish()` for its last step, is a synchronous commit that comes after them and makes
them durable with it. Only a crash (of the worker, for writes still held; of Postgres, for the others)
within those milliseconds can lose them, and then the step's checkpoint is lost with them and the step is
redone from the previous checkpoint, exactly as after a worker crash mid-step. (After a Postgres crash the
attempt's pool reconnects, so the step's checkpoint could still commit, on top of what the crash lost: every
synchronous run transaction therefore checks that Postgres has not crashed since the attempt was claimed (its
crash epoch), and ends the attempt with PostgresRestarted if it has; see server.runs.fencing.) Side effects of tools are
not among these writes: the tool ledger commits synchronously on its own, so they stay at most once per key.

A run's input checkpoint (LangGraph's first, metadata source "input") commits without waiting for the flush too,
and so does the next one, step 0, which only applies the input's writes (committed with the input checkpoint)
before any node has run: in `sync` durability the graph runs its first node, and hands out its first output,
only once both have committed, so their flushes would sit on every run's time to first event. A Postgres crash
that loses step 0 but not the input checkpoint leaves a run that resumes from its input checkpoint and derives
step 0 again, the same way. The input itself is durable already (the run's row holds the request), and a
Postgres crash that loses the checkpoint leaves the thread where it stood before the run, with no checkpoint of
this run: the re-claimed run starts over from its input, as it would after a worker crash before that
checkpoint, and applies it once (when the checkpoint survives, the run resumes from it and does not apply its
input again). What must not happen is this attempt going on after such a crash (its pool reconnects) on top of
the lost checkpoint, whose rows (blobs) later checkpoints reference. So the checkpoint (the later of the two)
stays "unconfirmed" on the run's writer until a synchronous commit confirms it: the next synchronous
checkpoint's transaction reads it back (one more statement in the same round trip) and, when it is gone, fails
with CheckpointLost, which ends the attempt like any database failure (the run goes back to the queue); a run
whose last checkpoint it is confirms it before its outcome is recorded (confirm_checkpoint).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, cast

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from langgraph.store.base import (
    NOT_PROVIDED,
    NotProvided,
    PutOp,
    _ensure_ttl,
    _validate_namespace,
    _validate_namespace_labels,
)
from langgraph.store.postgres.aio import AsyncPostgresStore
from psycopg import AsyncCursor
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from server.db.pool import pipelined_transaction
from server.runs import store
from server.runs.fencing import Fenced, check_crash_epoch, run_to_end

# The event writer of the run executing in the current task (None outside runs).
current_event_writer: contextvars.ContextVar[Any] = contextvars.ContextVar("keel_event_writer", default=None)

# Set while a write that the step's checkpoint will make durable is being committed.
_deferred_flush: contextvars.ContextVar[bool] = contextvars.ContextVar("keel_deferred_flush", default=False)


class CheckpointLost(psycopg.OperationalError):
    """A run's checkpoint that committed without waiting for the WAL flush is gone: Postgres restarted before
    it reached the disk. A database failure (transient): the attempt ends and the run goes back to the queue."""


async def confirm_checkpoint(pool: Any, writer: Any, thread_id: str) -> None:
    """Make the run's unconfirmed checkpoint (see the module docstring) durable before the run's outcome is read
    from its checkpoints and recorded; CheckpointLost when a Postgres crash lost it. (Usually a later checkpoint
    of the run has confirmed it already, and this costs nothing.)"""
    checkpoint_id = writer.unconfirmed_checkpoint
    if checkpoint_id is None:
        return
    async with pool.connection() as conn:
        # (autocommit: one synchronous commit; it returns once the row, and all WAL before it, is on disk)
        row = await store.fetchone(conn, store.CONFIRM_CHECKPOINT, (thread_id, checkpoint_id))
    if row is None:
        raise CheckpointLost(
            f"checkpoint {checkpoint_id} of run {writer.run_id} was lost by a Postgres restart"
        )
    writer.unconfirmed_checkpoint = None


def _active_writer() -> Any:
    """The current run's event writer while its graph executes, else None."""
    writer = current_event_writer.get()
    return writer if writer is not None and writer.active else None


@asynccontextmanager
async def _deferred_cursor(pool: Any) -> AsyncIterator[AsyncCursor[DictRow]]:
    """A cursor in a transaction that commits without waiting for the WAL flush (see the module docstring), in
    two round trips (server.db.pool.pipelined_transaction)."""
    async with pool.connection() as conn, pipelined_transaction(conn):
        await conn.execute("SET LOCAL synchronous_commit = off")
        async with conn.cursor(binary=True, row_factory=dict_row) as cur:
            yield cur


def _applies_input(metadata: CheckpointMetadata, conf: Mapping[str, Any], unconfirmed: str | None) -> bool:
    """Is this checkpoint the run's input checkpoint (LangGraph's first, source "input"), or the one that follows
    it, step 0, which applies the input's writes (stored with it) before any node has run? Neither records work
    a crash could not redo exactly from the run's request, so neither waits for the WAL flush."""
    if metadata.get("source") == "input":
        return unconfirmed is None
    return (
        metadata.get("source") == "loop"
        and metadata.get("step") == 0
        and unconfirmed is not None
        and conf.get("checkpoint_id") == unconfirmed  # (its parent: the input checkpoint, still unconfirmed)
    )


class KeelSaver(AsyncPostgresSaver):
    """AsyncPostgresSaver whose run checkpoints commit with the events before them, in one transaction."""

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config.get("configurable") or {}
        if (thread_id := conf.get("thread_id")) is not None:
            # langgraph leaves thread_id out of checkpoint metadata; langgraph-api's metadata has it.
            metadata = cast(CheckpointMetadata, {**metadata, "thread_id": str(thread_id)})
        writer = current_event_writer.get()
        if writer is None or conf.get("checkpoint_ns"):
            return await super().aput(config, checkpoint, metadata, new_versions)
        # The run's input checkpoint, and the one that applies the input, commit without waiting for the WAL flush
        # (see the module docstring).
        deferred = _applies_input(metadata, conf, writer.unconfirmed_checkpoint)
        # The event log's writer is held until the checkpoint commits: events published meanwhile wait.
        async with writer.barrier(durable=not deferred) as (events, mark):
            # Checkpoint metadata is open-ended (a run's config metadata lands there too); the TypedDict is not.
            marked = cast(CheckpointMetadata, {**metadata, "keel_event_seq": mark})
            return await run_to_end(
                self._put_with_events(writer, events, config, checkpoint, marked, new_versions, deferred)
            )

    async def _put_with_events(
        self,
        writer: Any,
        events: list[tuple[int, str, Any]],
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
        deferred: bool = False,
    ) -> RunnableConfig:
        """The run's fence, its pending events and writes, and the checkpoint, in one transaction.
        `deferred`: it commits without waiting for the WAL flush, and stays unconfirmed on the writer; otherwise
        it also confirms the checkpoint that is (it fails with CheckpointLost if that one is gone).

        The rows are prepared (serialised, in a thread as the stock saver does) before a connection is taken, so
        a busy worker never holds pool connections while it serialises. The checkpoint's rows are the stock
        `aput`'s (langgraph-checkpoint-postgres, pinned): primitive channel values inline, the others as blobs.
        """
        conf = config["configurable"]
        thread_id, checkpoint_ns = conf["thread_id"], conf["checkpoint_ns"]
        copy = checkpoint.copy()
        copy["channel_values"] = copy["channel_values"].copy()
        blob_values = {}
        for k, v in checkpoint["channel_values"].items():
            if isinstance(v, _DeltaSnapshot):
                blob_values[k] = copy["channel_values"].pop(k)
                copy["channel_values"][k] = True
            elif v is None or isinstance(v, (str, int, float, bool)):
                pass
            else:
                blob_values[k] = copy["channel_values"].pop(k)
        blob_versions = {k: v for k, v in new_versions.items() if k in blob_values}
        blob_rows = (
            await asyncio.to_thread(self._dump_blobs, thread_id, checkpoint_ns, blob_values, blob_versions)
            if blob_versions
            else []
        )
        row = (
            thread_id,
            checkpoint_ns,
            checkpoint["id"],
            conf.get("checkpoint_id"),
            Jsonb(copy),
            Jsonb(get_serializable_checkpoint_metadata(config, metadata)),
        )
        await writer.writes_settled()  # the step's tasks' writes, still being serialised, come along
        writes = writer.take_writes()
        pool: Any = self.conn  # (Keel always builds the saver on its pool)
        try:
            # (A deferred step 0 checks its input checkpoint too: each unconfirmed checkpoint vouches for the one
            # before it, so the synchronous commit after them confirms both.)
            unconfirmed = writer.unconfirmed_checkpoint
            async with pool.connection() as conn, pipelined_transaction(conn):
                if deferred:
                    await conn.execute("SET LOCAL synchronous_commit = off")
                cur = await conn.execute(store.FENCE_EPOCH, (writer.run_id, writer.epoch))
                held = (
                    await conn.execute(store.CHECKPOINT_HELD, (thread_id, unconfirmed))
                    if unconfirmed is not None
                    else None
                )
                fence = await cur.fetchone()
                if fence is None:
                    raise Fenced(writer.run_id)
                # (before this commit: it must not build on what a restart may have lost)
                check_crash_epoch(fence["epoch"], writer.pg_epoch, writer.run_id)
                if held is not None and await held.fetchone() is None:
                    raise CheckpointLost(
                        f"checkpoint {unconfirmed} of run {writer.run_id} was lost by a Postgres restart"
                    )
                if events:
                    await store.append_events(
                        conn, writer.run_id, writer.attempt, events, notified=writer.flushed_seq
                    )
                async with conn.cursor(binary=True) as wcur:
                    for query, rows in writes:
                        await wcur.executemany(query, rows)
                    if blob_rows:
                        await wcur.executemany(self.UPSERT_CHECKPOINT_BLOBS_SQL, blob_rows)
                    await wcur.execute(self.UPSERT_CHECKPOINTS_SQL, row)
        except BaseException:
            writer.restore_writes(writes)  # (a write already committed is not written twice: ON CONFLICT)
            raise
        # This synchronous commit made the unconfirmed checkpoint durable with it (WAL is flushed in order).
        writer.unconfirmed_checkpoint = checkpoint["id"] if deferred else None
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": checkpoint_ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        conf = config["configurable"]
        writer = _active_writer()
        if writer is None or conf.get("checkpoint_ns"):
            return await super().aput_writes(config, writes, task_id, task_path)
        # Held for the next checkpoint's transaction (or committed alone shortly): see the module docstring.
        query = (
            self.UPSERT_CHECKPOINT_WRITES_SQL
            if all(w[0] in WRITES_IDX_MAP for w in writes)
            else self.INSERT_CHECKPOINT_WRITES_SQL
        )
        async with writer.adding_writes():
            rows = await asyncio.to_thread(
                self._dump_writes, conf["thread_id"], "", conf["checkpoint_id"], task_id, task_path, writes
            )
            writer.add_writes(query, rows)


class KeelStore(AsyncPostgresStore):
    """AsyncPostgresStore whose writes during a run's steps commit with the step's checkpoint (see above).

    The stock store hands writes to a batching task of its own; a run's writes are executed in the run's task
    instead, so they can be told apart from every other write (API, housekeeping, ingestion), which stays
    synchronous."""

    async def aput(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | None | NotProvided = NOT_PROVIDED,
    ) -> None:
        if _active_writer() is None:
            return await super().aput(namespace, key, value, index, ttl=ttl)
        _validate_namespace(namespace)
        await run_to_end(
            self._deferred([PutOp(namespace, key, value, index, ttl=_ensure_ttl(self.ttl_config, ttl))])
        )

    async def adelete(self, namespace: tuple[str, ...], key: str) -> None:
        if _active_writer() is None:
            return await super().adelete(namespace, key)
        _validate_namespace_labels(namespace)
        await run_to_end(self._deferred([PutOp(namespace, key, None)]))

    async def _deferred(self, ops: list[PutOp]) -> None:
        _deferred_flush.set(True)  # (in this task's own context)
        await self.abatch(ops)

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        if _deferred_flush.get():
            async with _deferred_cursor(self.conn) as cur:
                yield cur
        else:
            async with super()._cursor(pipeline=pipeline) as cur:
                yield cur


__all__ = ["CheckpointLost", "KeelSaver", "KeelStore", "confirm_checkpoint", "current_event_writer"]
