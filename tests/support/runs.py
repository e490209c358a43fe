"""Rows for tests that drive the run engine's tables directly: a thread with a run that is `running`."""

from __future__ import annotations

import uuid
from typing import Any


async def insert_running_run(pool: Any, epoch: int = 1) -> tuple[str, str]:
    """(thread_id, run_id) of a new thread and a run of it that is `running` at lease epoch `epoch`."""
    tid, rid = str(uuid.uuid4()), str(uuid.uuid4())
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO keel_threads (thread_id, user_id, metadata) VALUES (%s, 'u', '{}')", (tid,)
        )
        await conn.execute(
            "INSERT INTO keel_runs (run_id, thread_id, assistant_id, user_id, status, metadata, kwargs, "
            "multitask_strategy, temporary, lease_epoch) VALUES (%s, %s, %s, 'u', 'running', '{}', '{}', "
            "'reject', false, %s)",
            (rid, tid, str(uuid.uuid4()), epoch),
        )
    return tid, rid
