"""The event writer's durability bookkeeping against a real Postgres: a checkpoint that confirms events while a
flush is verifying them must not break the flush."""

from __future__ import annotations

import asyncio
import uuid

from server.runs.events import EventWriter


async def test_checkpoint_confirming_events_during_a_verify_does_not_break_the_flush(db):
    # No events are stored for this run: the verify finds them "lost" only while they are still unconfirmed.
    run_id = str(uuid.uuid4())
    writer = EventWriter(db.pool, run_id, epoch=1, attempt=1, start_seq=0)
    writer._unconfirmed = [(1, "values", {}), (2, "values", {})]  # appended, awaiting a synchronous commit
    flush = asyncio.create_task(writer.flush())  # nothing buffered: it verifies the unconfirmed events
    await asyncio.sleep(0)  # let the flush start its query (yields on I/O), then a checkpoint lands
    writer.mark_durable(2)
    await flush  # raised IndexError: the verify read the unconfirmed list after it emptied
    assert writer._unconfirmed == []
