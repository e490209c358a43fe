"""The Postgres checkpointer with Keel's run-engine hooks.

Before a checkpoint is written, every stream event the run produced so far is flushed to the run's
event log, and the checkpoint's metadata records how far the log had got (`keel_event_seq`). So an
event that precedes a durable checkpoint is itself durable, and after a crash the next attempt knows
exactly which logged events describe work that will be redone (those after `keel_event_seq`).
"""

from __future__ import annotations

import contextvars
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

# The event writer of the run executing in the current task (None outside runs).
current_event_writer: contextvars.ContextVar[Any] = contextvars.ContextVar("keel_event_writer", default=None)


class KeelSaver(AsyncPostgresSaver):
    """AsyncPostgresSaver + a flush barrier between a run's events and its checkpoints."""

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        writer = current_event_writer.get()
        if (thread_id := (config.get("configurable") or {}).get("thread_id")) is not None:
            # langgraph leaves thread_id out of checkpoint metadata; langgraph-api's metadata has it.
            metadata = cast(CheckpointMetadata, {**metadata, "thread_id": str(thread_id)})
        if writer is None or (config.get("configurable") or {}).get("checkpoint_ns"):
            return await super().aput(config, checkpoint, metadata, new_versions)
        await writer.flush()
        mark = writer.last_seq
        # Checkpoint metadata is open-ended (a run's config metadata lands there too); the TypedDict is not.
        marked = cast(CheckpointMetadata, {**metadata, "keel_event_seq": mark})
        result = await super().aput(config, checkpoint, marked, new_versions)
        writer.mark_durable(mark)  # the checkpoint's synchronous commit also flushed the events before it
        return result
