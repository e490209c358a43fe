"""The event feed against a real Postgres: a reader following a run live takes the events from the notifications
that carry them, and the log stays the source of truth (a resuming reader, an event too large to carry, a gap)."""

from __future__ import annotations

import asyncio
import uuid

from server.runs import store
from server.runs.events import EndWaiter, Event, EventFeed, EventWriter, Follower
from server.runs.queue import Claim, finish
from server.runs.store import RunStatus
from tests.support.runs import insert_running_run


async def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _running_run(db) -> str:
    return (await _running_run_row(db))["run_id"]


async def _running_run_row(db) -> dict:
    tid, rid = await insert_running_run(db.pool)
    return {"run_id": rid, "thread_id": tid}


async def _finish(db, rid: str) -> None:
    async with db.pool.connection() as conn, conn.transaction():
        await conn.execute("UPDATE keel_runs SET status = 'success' WHERE run_id = %s", (rid,))
        await store.notify_done(conn, rid)


class Reader:
    """A subscriber running in a task, collecting what it is given."""

    def __init__(self, feed: EventFeed, rid: str, after: int = 0, follower: Follower | None = None) -> None:
        self.got: list[Event] = []
        self.task = asyncio.create_task(self._run(feed, rid, after, follower))

    async def _run(self, feed: EventFeed, rid: str, after: int, follower: Follower | None) -> None:
        async for ev in feed.subscribe(rid, after, follower):
            self.got.append(ev)

    def seqs(self) -> list[int]:
        return [e.seq for e in self.got]


async def _feed(db):
    """A started feed whose LISTEN connection is up (a notification sent now reaches it)."""
    feed = EventFeed(db.url, db.pool, poll_s=60)  # no poll timeout sends a reader to the log meanwhile
    await feed.start()
    probe, seen = str(uuid.uuid4()), EndWaiter()
    feed._done_waiters[probe].add(seen)
    while not seen.wake.is_set():  # (sent again until the connection is listening)
        async with db.pool.connection() as conn:
            await store.notify_done(conn, probe)
        try:
            await asyncio.wait_for(seen.wake.wait(), 0.1)
        except TimeoutError:
            pass
    feed._done_waiters.pop(probe, None)
    return feed


async def _listening(feed: EventFeed, rid: str, reads: int) -> None:
    """Until the reader follows `rid` and has read the log `reads` times."""
    await wait_for(lambda: bool(feed._waiters.get(rid)) and feed.log_reads >= reads, "the reader to follow")


async def test_a_live_reader_takes_the_events_from_the_notifications_and_a_resuming_one_reads_the_log(db):
    rid = await _running_run(db)
    feed = await _feed(db)
    try:
        reader = Reader(feed, rid)
        await _listening(feed, rid, reads=1)  # its first read of the log found nothing yet
        writer = EventWriter(db.pool, rid, epoch=1, attempt=1, start_seq=0, flush_delay=0)
        writer.publish("metadata", {"run_id": rid})
        writer.publish("values", {"step": 1})
        await writer.flush()
        await wait_for(lambda: reader.seqs() == [1, 2], "events 1 and 2")
        writer.publish("values", {"step": 2})
        await writer.flush()
        await wait_for(lambda: reader.seqs() == [1, 2, 3], "event 3")
        assert (feed.live_events, feed.log_reads) == (3, 1), "the live reader read the log again"
        assert [e.data for e in reader.got] == [{"run_id": rid}, {"step": 1}, {"step": 2}]
        assert reader.got[1].event == "values"

        await _finish(db, rid)
        await asyncio.wait_for(reader.task, 10)  # ended by the run's end (one last read of the log)
        assert reader.seqs() == [1, 2, 3]

        # Reconnecting after event 1 (Last-Event-ID): the rest comes from the log, the run being over.
        live = feed.live_events
        again = Reader(feed, rid, after=1)
        await asyncio.wait_for(again.task, 10)
        assert again.seqs() == [2, 3]
        assert [e.data for e in again.got] == [{"step": 1}, {"step": 2}]
        assert feed.live_events == live
    finally:
        await feed.stop()


async def test_an_event_too_large_to_notify_is_read_from_the_log_then_the_reader_goes_on_live(db):
    rid = await _running_run(db)
    feed = await _feed(db)
    try:
        reader = Reader(feed, rid)
        await _listening(feed, rid, reads=1)
        writer = EventWriter(db.pool, rid, epoch=1, attempt=1, start_seq=0, flush_delay=0)
        big = {"text": "é" * 5000}  # 10,000 bytes of UTF-8: over the limit of a NOTIFY payload
        writer.publish("values", big)
        await writer.flush()
        await wait_for(lambda: reader.seqs() == [1], "the large event")
        assert reader.got[0].data == big
        assert (feed.live_events, feed.log_reads) == (0, 2)
        writer.publish("values", {"small": True})
        await writer.flush()
        await wait_for(lambda: reader.seqs() == [1, 2], "the small event")
        assert (feed.live_events, feed.log_reads) == (1, 2)
        await _finish(db, rid)
        await asyncio.wait_for(reader.task, 10)
    finally:
        await feed.stop()


async def test_a_gap_in_the_notified_sequence_sends_the_reader_to_the_log(db):
    rid = await _running_run(db)
    feed = await _feed(db)
    try:
        reader = Reader(feed, rid)
        await _listening(feed, rid, reads=1)
        async with db.pool.connection() as conn:
            await store.append_events(conn, rid, 1, [(1, "values", {"n": 1})])
        await wait_for(lambda: reader.seqs() == [1], "event 1")
        async with db.pool.connection() as conn, conn.transaction():
            # Event 2 lands without a notification (as if its NOTIFY were lost): event 3's shows the gap.
            await conn.execute(store.INSERT_EVENT, (rid, 2, 1, "values", '{"n": 2}'))
        async with db.pool.connection() as conn:
            await store.append_events(conn, rid, 1, [(3, "values", {"n": 3})])
        await wait_for(lambda: reader.seqs() == [1, 2, 3], "events 2 and 3, in order")
        assert [e.data for e in reader.got] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert (feed.live_events, feed.log_reads) == (1, 2)
        await _finish(db, rid)
        await asyncio.wait_for(reader.task, 10)
    finally:
        await feed.stop()


def test_a_notification_payload_carries_the_rows_or_only_the_run_id():
    rid = str(uuid.uuid4())
    rows = [(4, "values", {"a": [1, "x"]}), (5, "messages/partial|sub:1", None)]
    texts = ['{"a":[1,"x"]}', "null"]
    payload = store.notify_payload(rid, rows, texts)
    assert store.parse_notify(payload) == (rid, rows)
    big = [(6, "values", "x" * store.NOTIFY_MAX)]
    assert store.notify_payload(rid, big, ['"' + "x" * store.NOTIFY_MAX + '"']) == rid
    assert store.parse_notify(rid) == (rid, None)


async def test_a_waiter_gets_the_finished_run_from_the_notification_or_else_reads_it(db):
    feed = await _feed(db)
    try:
        run = await _running_run_row(db)
        rid = run["run_id"]
        waiting = asyncio.create_task(feed.wait_terminal(rid))
        await wait_for(lambda: bool(feed._done_waiters.get(rid)) and feed.status_reads == 1, "the waiter")
        result = {"log": ["a", "b"], "text": "ü"}
        ok = await finish(
            db.pool,
            Claim(run, 1),
            RunStatus.SUCCESS,
            result=result,
            thread_status="idle",
            thread_values=result,
            interrupts=None,
        )
        assert ok
        row = await asyncio.wait_for(waiting, 10)
        assert row == {"status": "success", "result": result, "error": None}
        assert feed.status_reads == 1, "the waiter read the row back"
        async with db.pool.connection() as conn:  # the row the notification carried is the one recorded
            stored = await store.run_status(conn, rid)
        assert stored == row

        # A run whose end notification carries no row (a deleted run, a result too large): read it.
        other = await _running_run(db)
        waiting = asyncio.create_task(feed.wait_terminal(other))
        await wait_for(lambda: feed.status_reads == 2, "the second waiter")
        await _finish(db, other)  # "done:<run id>" alone
        row = await asyncio.wait_for(waiting, 10)
        assert row is not None and row["status"] == "success"
        assert feed.status_reads == 3
    finally:
        await feed.stop()


def test_a_done_payload_carries_the_row_or_only_the_run_id():
    rid = str(uuid.uuid4())
    payload = store.done_payload(rid, RunStatus.ERROR, None, {"error": "X", "message": "m"})
    assert store.parse_done(payload) == (
        rid,
        {"status": "error", "result": None, "error": {"error": "X", "message": "m"}},
    )
    assert (
        store.done_payload(rid, RunStatus.SUCCESS, '"' + "x" * store.NOTIFY_MAX + '"', None) == f"done:{rid}"
    )
    assert store.parse_done(f"done:{rid}") == (rid, None)


async def test_a_waiter_registered_before_the_run_exists_reads_nothing_and_an_unclaimed_one_is_dropped(db):
    feed = await _feed(db)
    try:
        run = await _running_run_row(db)  # (created after expect_end in the routes; the order is the point)
        rid = run["run_id"]
        expected = feed.expect_end(rid)
        waiting = asyncio.create_task(feed.wait_terminal(rid, expected))
        await wait_for(lambda: not expected.reserved, "the waiter to wait")
        assert await finish(
            db.pool,
            Claim(run, 1),
            RunStatus.SUCCESS,
            result={"x": 1},
            thread_status="idle",
            thread_values={"x": 1},
            interrupts=None,
        )
        assert (await asyncio.wait_for(waiting, 10))["result"] == {"x": 1}
        assert feed.status_reads == 0, "a waiter registered before the run read its status"
        assert rid not in feed._done_waiters

        # A request that created its run but never waited (its client left): its waiter goes with the run's end.
        other = await _running_run_row(db)
        feed.expect_end(other["run_id"])
        await _finish(db, other["run_id"])
        await wait_for(
            lambda: other["run_id"] not in feed._done_waiters, "the unclaimed waiter to be dropped"
        )

        # One that starts waiting only after the end (no row carried): it reads the status, once.
        late = await _running_run_row(db)
        expected = feed.expect_end(late["run_id"])
        await _finish(db, late["run_id"])
        await wait_for(lambda: expected.wake.is_set(), "the end")
        row = await asyncio.wait_for(feed.wait_terminal(late["run_id"], expected), 10)
        assert row is not None and row["status"] == "success"
        assert feed.status_reads == 1
    finally:
        await feed.stop()


async def test_a_follower_registered_before_the_run_exists_reads_no_log_until_the_end(db):
    feed = await _feed(db)
    try:
        rid = await _running_run(db)  # (created after expect_events in the routes; the order is the point)
        follower = feed.expect_events(rid)
        writer = EventWriter(db.pool, rid, epoch=1, attempt=1, start_seq=0, flush_delay=0)
        writer.publish("metadata", {"run_id": rid})
        writer.publish("values", {"step": 1})
        await writer.flush()  # (before the request follows: the notification waits in its inbox)
        await wait_for(lambda: len(follower.inbox) == 2, "the notification")
        reader = Reader(feed, rid, follower=follower)
        await wait_for(lambda: reader.seqs() == [1, 2], "events 1 and 2")
        writer.publish("values", {"step": 2})
        await writer.flush()
        await wait_for(lambda: reader.seqs() == [1, 2, 3], "event 3")
        assert (feed.live_events, feed.log_reads, feed.status_reads) == (3, 0, 0), "the follower read the log"
        await _finish(db, rid)
        await asyncio.wait_for(reader.task, 10)  # ended by the run's end: its only read of the log
        assert reader.seqs() == [1, 2, 3]
        assert feed.log_reads == 1
        assert rid not in feed._waiters

        # A request that created its run but never streamed it (its client left): its follower goes with the end.
        other = await _running_run(db)
        feed.expect_events(other)
        await _finish(db, other)
        await wait_for(lambda: other not in feed._waiters, "the unfollowed follower to be dropped")

        # One whose run ended before it began to follow: the end sent it to the log, which has every event.
        late = await _running_run(db)
        follower = feed.expect_events(late)
        writer = EventWriter(db.pool, late, epoch=1, attempt=1, start_seq=0, flush_delay=0)
        writer.publish("values", {"step": 1})
        await writer.flush()
        await _finish(db, late)
        await wait_for(lambda: late not in feed._waiters, "the end")
        reader = Reader(feed, late, follower=follower)
        await asyncio.wait_for(reader.task, 10)
        assert reader.seqs() == [1]
        assert late not in feed._waiters

        # A run that was not created after all (a multitask reject, a bad request): nothing stays registered.
        gone = str(uuid.uuid4())
        feed.unexpect_events(gone, feed.expect_events(gone))
        assert gone not in feed._waiters
    finally:
        await feed.stop()


async def test_the_first_notification_about_a_run_tells_a_request_its_creation_is_durable(db):
    """`expect_start`: set by the run's first event or by its end (both committed after a synchronous commit of the
    run: its claim or its end), not by a reconnect of the LISTEN connection, which proves nothing."""
    feed = await _feed(db)
    try:
        by_event, by_end, unproven = [await _running_run(db) for _ in range(3)]
        started = {rid: feed.expect_start(rid) for rid in (by_event, by_end, unproven)}
        writer = EventWriter(db.pool, by_event, epoch=1, attempt=1, start_seq=0, flush_delay=0)
        writer.publish("metadata", {"run_id": by_event})
        await writer.flush()
        await asyncio.wait_for(started[by_event].wait(), 10)
        await _finish(db, by_end)
        await asyncio.wait_for(started[by_end].wait(), 10)
        assert by_event not in feed._starts and by_end not in feed._starts
        feed._wake_all()  # (what a reconnect of the LISTEN connection does)
        assert not started[unproven].is_set()
        feed.unexpect_start(unproven, started[unproven])
        assert unproven not in feed._starts
    finally:
        await feed.stop()


async def test_a_checkpoint_notifies_only_the_events_it_appends_first(db):
    import psycopg

    from server.db.saver import current_event_writer

    run = await _running_run_row(db)
    rid, tid = run["run_id"], run["thread_id"]
    payloads: list[str] = []
    async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {store.EVENTS_CHANNEL}")

        async def next_payload() -> str:
            gen = listener.notifies(timeout=10, stop_after=1)
            async for n in gen:
                return n.payload
            raise AssertionError("no notification")

        writer = EventWriter(db.pool, rid, epoch=1, attempt=1, start_seq=0, flush_delay=60)
        token = current_event_writer.set(writer)
        try:
            writer.publish("metadata", {"run_id": rid})
            await writer.flush()
            payloads.append(await next_payload())
            writer.publish("values", {"x": 1})  # queued: the checkpoint carries it, and appends event 1 again
            config = {"configurable": {"thread_id": tid, "checkpoint_ns": ""}}
            from langgraph.checkpoint.base import empty_checkpoint

            await db.checkpointer.aput(config, empty_checkpoint(), {"run_id": rid, "keel_epoch": 1}, {})
            payloads.append(await next_payload())
            writer.publish("values", {"x": 2})
            await writer.flush()
            payloads.append(await next_payload())
            # Only event 3 to confirm, nothing new: no notification (the next one is the sentinel).
            await db.checkpointer.aput(config, empty_checkpoint(), {"run_id": rid, "keel_epoch": 1}, {})
            async with db.pool.connection() as conn:
                await conn.execute(store.NOTIFY, (store.EVENTS_CHANNEL, "sentinel"))
            payloads.append(await next_payload())
        finally:
            current_event_writer.reset(token)
            await writer.close()
    seqs = [[row[0] for row in (store.parse_notify(p)[1] or [])] for p in payloads[:3]]
    assert seqs == [[1], [2], [3]]
    assert payloads[3] == "sentinel"
