"""The event writer's durability bookkeeping against a real Postgres: a checkpoint that confirms events while a
flush is verifying them must not break the flush."""

from __future__ import annotations

import asyncio
import uuid

from server.runs.events import EventWriter
from tests.support.runs import insert_running_run


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


async def _checkpoint_xmin(db, tid: str) -> dict:
    """The transaction id that wrote the thread's checkpoint (`x`): rows written with it rode in its commit."""
    async with db.pool.connection() as conn:
        return await (
            await conn.execute("SELECT xmin::text AS x FROM checkpoints WHERE thread_id = %s", (tid,))
        ).fetchone()


async def _running_run(db, epoch: int) -> tuple[str, str]:
    """A thread and a run of it that is `running` at lease epoch `epoch`."""
    return await insert_running_run(db.pool, epoch)


async def _checkpoint(db, tid: str, rid: str, epoch: int) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    config = {"configurable": {"thread_id": tid, "checkpoint_ns": ""}}
    await db.checkpointer.aput(config, empty_checkpoint(), {"run_id": rid, "keel_epoch": epoch}, {})


async def test_a_checkpoint_commits_the_events_before_it_in_its_own_transaction(db):
    from server.db.saver import current_event_writer

    tid, rid = await _running_run(db, epoch=3)
    writer = EventWriter(db.pool, rid, epoch=3, attempt=1, start_seq=0, flush_delay=60)  # no flush of its own
    token = current_event_writer.set(writer)
    try:
        writer.publish("metadata", {"run_id": rid})
        writer.publish("values", {"x": 1})
        await _checkpoint(db, tid, rid, 3)
    finally:
        current_event_writer.reset(token)
        await writer.close()
    async with db.pool.connection() as conn:
        events = await (
            await conn.execute(
                "SELECT seq, xmin::text AS x FROM keel_run_events WHERE run_id = %s ORDER BY seq", (rid,)
            )
        ).fetchall()
        ck = await (
            await conn.execute(
                "SELECT xmin::text AS x, metadata->'keel_event_seq' AS mark FROM checkpoints WHERE thread_id = %s",
                (tid,),
            )
        ).fetchone()
    assert [e["seq"] for e in events] == [1, 2]
    assert {e["x"] for e in events} == {ck["x"]}, "events and checkpoint were committed separately"
    assert ck["mark"] == 2


async def test_a_fenced_checkpoint_writes_neither_itself_nor_the_events_before_it(db):
    from server.db.saver import current_event_writer
    from server.runs.fencing import Fenced

    tid, rid = await _running_run(db, epoch=5)  # another worker holds the run now
    writer = EventWriter(db.pool, rid, epoch=4, attempt=1, start_seq=0, flush_delay=60)
    token = current_event_writer.set(writer)
    try:
        writer.publish("values", {"x": 1})
        try:
            await _checkpoint(db, tid, rid, 4)
            raise AssertionError("a zombie's checkpoint was accepted")
        except Fenced:
            pass
    finally:
        current_event_writer.reset(token)
        writer.closed = True
        if writer._pending:
            writer._pending.cancel()
    async with db.pool.connection() as conn:
        n_events = (
            await (
                await conn.execute("SELECT count(*) AS n FROM keel_run_events WHERE run_id = %s", (rid,))
            ).fetchone()
        )["n"]
        n_ck = (
            await (
                await conn.execute("SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s", (tid,))
            ).fetchone()
        )["n"]
    assert (n_events, n_ck) == (0, 0)


async def test_pending_writes_ride_in_the_next_checkpoint_or_are_committed_by_close(db):
    from langgraph.checkpoint.base import empty_checkpoint

    from server.db.saver import current_event_writer

    tid, rid = await _running_run(db, epoch=2)
    writer = EventWriter(db.pool, rid, epoch=2, attempt=1, start_seq=0, flush_delay=60)
    token = current_event_writer.set(writer)
    try:
        first = await db.checkpointer.aput(
            {"configurable": {"thread_id": tid, "checkpoint_ns": ""}},
            empty_checkpoint(),
            {"run_id": rid, "keel_epoch": 2},
            {},
        )
        await db.checkpointer.aput_writes(first, [("x", 1)], "task-1")
        await _checkpoint(db, tid, rid, 2)  # carries task-1's write
        await db.checkpointer.aput_writes(first, [("y", 2)], "task-2")  # no checkpoint after it
    finally:
        current_event_writer.reset(token)
        await writer.close()  # commits task-2's write
    async with db.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT w.task_id, w.xmin::text AS x, (SELECT c.xmin::text FROM checkpoints c WHERE c.thread_id = "
                "w.thread_id ORDER BY c.checkpoint_id DESC LIMIT 1) AS ck FROM checkpoint_writes w "
                "WHERE w.thread_id = %s ORDER BY w.task_id",
                (tid,),
            )
        ).fetchall()
    assert [r["task_id"] for r in rows] == ["task-1", "task-2"]
    assert rows[0]["x"] == rows[0]["ck"], "the write did not commit with the checkpoint after it"
    assert rows[1]["x"] != rows[1]["ck"]


async def test_the_first_output_is_flushed_at_once_and_the_metadata_before_it_waits_for_it(db):
    from server.db.saver import current_event_writer

    tid, rid = await _running_run(db, epoch=6)
    writer = EventWriter(db.pool, rid, epoch=6, attempt=1, start_seq=0, flush_delay=60)  # no timed flush

    async def logged() -> list[dict]:
        async with db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT seq, xmin::text AS x FROM keel_run_events WHERE run_id = %s ORDER BY seq", (rid,)
            )
            return await cur.fetchall()

    token = current_event_writer.set(writer)
    try:
        writer.publish("metadata", {"run_id": rid})
        await asyncio.sleep(0)  # (a flush task, had one been started at once, would run now)
        assert writer._buffer, "the metadata was flushed on its own"
        writer.publish("values", {"x": 1})  # the first output: no checkpoint will carry it for a whole step
        deadline = asyncio.get_running_loop().time() + 10
        while len(rows := await logged()) < 2:
            assert asyncio.get_running_loop().time() < deadline, "the first output was not flushed at once"
            await asyncio.sleep(0.01)
        assert rows[0]["x"] == rows[1]["x"], "metadata and first output were committed separately"
        writer.publish("values", {"x": 2})  # later outputs wait for the next checkpoint again
        await _checkpoint(db, tid, rid, 6)
    finally:
        current_event_writer.reset(token)
        await writer.close()
    ck = await _checkpoint_xmin(db, tid)
    rows = await logged()
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert rows[2]["x"] == ck["x"], "the second output did not ride in the checkpoint"


async def test_step_events_wait_for_a_checkpoint_and_a_token_after_them_flushes_them_sooner(db):
    from server.db.saver import current_event_writer

    tid, rid = await _running_run(db, epoch=7)
    # A token may wait 10 ms for a checkpoint, a step's events a minute (longer than this test lasts).
    writer = EventWriter(db.pool, rid, epoch=7, attempt=1, start_seq=0, flush_delay=0.01, step_flush_delay=60)

    async def logged() -> list[dict]:
        async with db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT seq, event, xmin::text AS x FROM keel_run_events WHERE run_id = %s ORDER BY seq",
                (rid,),
            )
            return await cur.fetchall()

    async def until_logged(n: int) -> list[dict]:
        deadline = asyncio.get_running_loop().time() + 10
        while len(rows := await logged()) < n:
            assert asyncio.get_running_loop().time() < deadline, f"{n} events were not logged"
            await asyncio.sleep(0.01)
        return rows

    token = current_event_writer.set(writer)
    try:
        writer.publish("metadata", {"run_id": rid})
        writer.publish("values", {"x": 1})  # the first output: at once
        await until_logged(2)
        writer.publish("values", {"x": 2})  # a step's state: waits for the next checkpoint ...
        await _checkpoint(db, tid, rid, 7)
        writer.publish("updates|sub:1", {"n": {"x": 3}})  # ... as does this one, until a token comes after it
        writer.publish("messages/partial", [{"content": "t"}])
        rows = await until_logged(5)
    finally:
        current_event_writer.reset(token)
        await writer.close()
    ck = await _checkpoint_xmin(db, tid)
    assert rows[2]["x"] == ck["x"], "the step's values did not ride in the checkpoint"
    assert rows[3]["x"] == rows[4]["x"] != ck["x"], "the token's flush did not take the step event with it"
