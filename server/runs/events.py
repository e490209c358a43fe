"""The persisted event log of runs: workers append, API processes tail it for SSE and wait.

Rows live in `keel_run_events (run_id, seq)`. Appends are fenced by the run's lease epoch, so a worker
that lost its lease cannot add events. They commit without waiting for fsync (one fsync per event would
dominate a run's cost): an appended event survives any crash of the worker at once, and a crash of
Postgres itself only until the next synchronous commit (the next checkpoint) makes it durable. The
writer keeps the events that are not yet known durable and re-appends any that a Postgres crash lost,
so the log has no gaps either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import psycopg
from psycopg_pool import AsyncConnectionPool

from server.db.pool import pipelined_transaction
from server.runs import store
from server.runs.fencing import Fenced, check_crash_epoch, run_to_end
from server.runs.store import EVENTS_CHANNEL, TERMINAL, append_unfenced

__all__ = [
    "EVENTS_CHANNEL",
    "TERMINAL",
    "EndWaiter",
    "Event",
    "EventFeed",
    "EventWriter",
    "append_unfenced",
]

log = logging.getLogger("keel.events")


T = TypeVar("T")


@dataclass
class Event:
    """One stream part: its sequence number in the run (1, 2, ...), SSE event name and data."""

    seq: int
    event: str
    data: Any


# How long a published event may wait for the step's checkpoint to carry it (one transaction for both) before
# a flush of its own appends it: short enough that a streamed token still reaches readers at once.
FLUSH_DELAY_S = 0.005
# Events of a step boundary (the state after a step, its updates, checkpoints, tasks) wait longer: in `sync`
# durability the graph hands them over once the step's checkpoint has committed, so the next checkpoint is a whole
# step away, and a step of a few tens of milliseconds would otherwise cost a transaction for each of them.
STEP_EVENTS = frozenset({"values", "updates", "checkpoints", "tasks", "debug"})
STEP_FLUSH_DELAY_S = 0.05


class EventWriter:
    """Buffers a run's events and appends them in batches, fenced by the lease epoch.

    Most events ride in the transaction of the checkpoint that follows them (see server.db.saver); an event that
    no checkpoint picks up within FLUSH_DELAY_S (a token streamed from a long model call) is appended by a
    background flush of its own."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        run_id: str,
        epoch: int,
        attempt: int,
        start_seq: int,
        flush_delay: float = FLUSH_DELAY_S,
        step_flush_delay: float | None = None,
    ) -> None:
        self.pool, self.run_id, self.epoch, self.attempt = pool, run_id, epoch, attempt
        self.pg_epoch: Any = None  # Postgres's crash epoch when the run was claimed (PostgresRestarted)
        self.flush_delay = flush_delay
        self.step_flush_delay = (
            max(flush_delay, STEP_FLUSH_DELAY_S) if step_flush_delay is None else step_flush_delay
        )
        self._due = 0.0  # when the background flush that is waiting will flush
        self._delaying = False  # the background flush is still waiting for a checkpoint to carry the events
        self._first_output = True  # the next event other than `metadata` is flushed at once (see publish)
        self.last_seq = start_seq  # last seq handed out
        self.flushed_seq = start_seq  # last seq known to be in the table
        self._buffer: list[tuple[int, str, Any]] = []
        self._unconfirmed: list[tuple[int, str, Any]] = []  # appended, not yet known to be durable
        self._lock = asyncio.Lock()
        self._pending: asyncio.Task[None] | None = None
        self.closed = False  # the attempt's log is closed: its outcome is being recorded
        # The id of the run's checkpoint that committed without waiting for the WAL flush (its input checkpoint)
        # while no synchronous commit of the run has confirmed it yet (see server.db.saver).
        self.unconfirmed_checkpoint: str | None = None
        # The graph's pending writes (LangGraph's put_writes: query, rows), held like events for the next
        # checkpoint's transaction, else committed on their own after flush_delay (see server.db.saver).
        self._writes: list[tuple[str, list[Any]]] = []
        self._writes_task: asyncio.Task[None] | None = None
        self._writes_lock = asyncio.Lock()
        self._writes_sleeping = False
        self._writes_inflight = 0
        self._writes_idle = asyncio.Event()
        self._writes_idle.set()

    @property
    def active(self) -> bool:
        """The run's graph is executing (its steps' writes are made durable by the next checkpoint)."""
        return not self.closed

    def publish(self, event: str, data: Any, *, now: bool = False) -> int:
        """Queue an event; a background flush picks it up (batching whatever arrives meanwhile). `now`: flush
        at once rather than wait for a checkpoint to carry it.

        The attempt's first event after its `metadata` (a streamed run's first output, which a client waits
        for) is flushed at once: in `sync` durability the graph hands it over only after the step's checkpoint
        has committed, so the next checkpoint to carry it is a whole step away. The `metadata` event itself
        rides in the run's first checkpoint, a millisecond or two later, instead of a transaction of its own."""
        self.last_seq += 1
        self._buffer.append((self.last_seq, event, data))
        if self._first_output and event != "metadata":
            self._first_output = False
            now = True
        loop = asyncio.get_running_loop()
        if now:
            delay = 0.0
        elif event.split("|", 1)[0] in STEP_EVENTS:
            delay = self.step_flush_delay
        else:
            delay = self.flush_delay
        due = loop.time() + delay
        if self._pending is not None and self._delaying and due < self._due:
            self._pending.cancel()  # waiting longer than this event may: flush sooner instead
            self._pending = None
        if self._pending is None or self._pending.done():
            self._due = due
            self._pending = loop.create_task(self._flush_soon(delay))
        return self.last_seq

    async def _flush_soon(self, delay: float = 0.0) -> None:
        if delay > 0:
            self._delaying = True
            try:
                await asyncio.sleep(delay)
            finally:
                self._delaying = False
        try:
            await self.flush(verify=False)  # (a checkpoint re-appends what a Postgres crash lost)
        except Fenced:
            pass  # the run's owner finds out through its own flush, heartbeat or finish
        except Exception:  # retried by the next flush (barrier before checkpoints, finish)
            log.warning("event flush failed; will retry", exc_info=True)

    async def flush(self, *, verify: bool = True) -> None:
        """Write every queued event (and re-append lost ones); raises Fenced if the lease is gone."""
        async with self._lock:
            if not self._buffer:
                if self._unconfirmed and verify:
                    await self._verify()
                return
            batch, self._buffer = self._buffer, []
            try:
                # Pipelined: one round trip to the fence, one for the rows, their NOTIFY and the commit.
                async with self.pool.connection() as conn, pipelined_transaction(conn):
                    await conn.execute("SET LOCAL synchronous_commit = off")
                    # Fence and log position in one round trip (see store.FENCED_LAST_SEQ).
                    row = await store.fetchone(
                        conn, store.FENCED_LAST_SEQ, (self.run_id, self.run_id, self.epoch)
                    )
                    if row is None:
                        raise Fenced(self.run_id)
                    have = row["s"]
                    # A Postgres crash can lose appends that no synchronous commit has flushed yet: redo them.
                    lost = [e for e in self._unconfirmed if e[0] > have]
                    if lost:
                        log.warning("re-appending %d event(s) lost by a Postgres restart", len(lost))
                    await self._append(conn, lost + [e for e in batch if e[0] > have])
            except BaseException:
                self._buffer = batch + self._buffer  # keep order; nothing was committed
                raise
            self.flushed_seq = batch[-1][0]
            self._unconfirmed.extend(batch)

    async def _verify(self) -> None:
        """Before a checkpoint: are the events appended since the last one still there (Postgres crash)?"""
        async with self.pool.connection() as conn:
            have = await store.last_seq(conn, self.run_id)
        # Read the list after the query: a checkpoint may have confirmed (and dropped) events meanwhile.
        lost = [e for e in self._unconfirmed if e[0] > have]
        if not lost:
            return
        log.warning("re-appending %d event(s) lost by a Postgres restart", len(lost))
        async with self.pool.connection() as conn, conn.transaction():
            if await store.fetchone(conn, store.FENCE, (self.run_id, self.epoch)) is None:
                raise Fenced(self.run_id)
            await self._append(conn, lost)

    async def _append(self, conn: psycopg.AsyncConnection, rows: list[tuple[int, str, Any]]) -> None:
        """Insert events (in the caller's fenced transaction) and wake the run's readers."""
        await store.append_events(conn, self.run_id, self.attempt, rows)

    def add_writes(self, query: str, rows: list[Any]) -> None:
        """Hold pending writes for the next checkpoint's transaction; commit them alone if none comes soon."""
        self._writes.append((query, rows))
        if self._writes_task is None or self._writes_task.done():
            self._writes_task = asyncio.get_running_loop().create_task(self._write_soon())

    @asynccontextmanager
    async def adding_writes(self) -> AsyncIterator[None]:
        """Around the preparation of pending writes (their serialisation), so a checkpoint waits for them."""
        self._writes_inflight += 1
        self._writes_idle.clear()
        try:
            yield
        finally:
            self._writes_inflight -= 1
            if not self._writes_inflight:
                self._writes_idle.set()

    async def writes_settled(self) -> None:
        """Until no pending writes are being prepared (LangGraph hands them over from a task of its own)."""
        await self._writes_idle.wait()

    def take_writes(self) -> list[tuple[str, list[Any]]]:
        """The held pending writes, for the caller's transaction (`restore_writes` if it fails)."""
        batch, self._writes = self._writes, []
        return batch

    def restore_writes(self, batch: list[tuple[str, list[Any]]]) -> None:
        self._writes = batch + self._writes

    async def _write_soon(self) -> None:
        self._writes_sleeping = True
        try:
            await asyncio.sleep(self.flush_delay)
        finally:
            self._writes_sleeping = False
        try:
            await self.flush_writes()
        except Exception:  # retried by the next checkpoint or by close()
            log.warning("pending writes flush failed; will retry", exc_info=True)

    async def flush_writes(self) -> None:
        """Commit the held pending writes now, without waiting for the disk: the next synchronous commit of
        the run (a checkpoint, or finish) makes them durable (see server.db.saver)."""
        async with self._writes_lock:
            batch = self.take_writes()
            if not batch:
                return
            try:
                await run_to_end(self._commit_writes(batch))
            except BaseException:
                self.restore_writes(batch)
                raise

    async def _commit_writes(self, batch: list[tuple[str, list[Any]]]) -> None:
        async with self.pool.connection() as conn, pipelined_transaction(conn):
            # Pending writes tell a resumed attempt that their task finished, so it is not run again: none may
            # commit after a Postgres crash that could have lost what the task did (PostgresRestarted).
            server = await conn.execute(store.CRASH_EPOCH) if self.pg_epoch is not None else None
            await conn.execute("SET LOCAL synchronous_commit = off")
            async with conn.cursor(binary=True) as cur:
                for query, rows in batch:
                    await cur.executemany(query, rows)
            if server is not None:  # (read before the commit goes out: a restart rolls the writes back)
                row = cast("dict[str, Any] | None", await server.fetchone())  # (the pool's rows are dicts)
                check_crash_epoch(row["epoch"] if row else None, self.pg_epoch, self.run_id)

    def mark_durable(self, seq: int) -> None:
        """Events up to `seq` were followed by a synchronous commit (a checkpoint): forget them."""
        self._unconfirmed = [e for e in self._unconfirmed if e[0] > seq]

    @asynccontextmanager
    async def barrier(self, *, durable: bool = True) -> AsyncIterator[tuple[list[tuple[int, str, Any]], int]]:
        """Hold the log while a checkpoint commits: yields (events, seq) — the events to append in the
        checkpoint's own transaction (the queued ones, and those appended earlier that no synchronous commit
        has confirmed yet: re-appending one that is there is a no-op, one a Postgres crash lost comes back) and
        the last seq the log holds once it commits. Nothing is taken off the writer unless the block succeeds.
        `durable=False`: the transaction commits without waiting for the WAL flush (the run's input checkpoint),
        so its events stay unconfirmed until a synchronous commit follows."""
        async with self._lock:
            batch, self._buffer = self._buffer, []
            rows = self._unconfirmed + batch
            mark = batch[-1][0] if batch else self.flushed_seq
            try:
                yield rows, mark
            except BaseException:
                self._buffer = batch + self._buffer  # keep order; nothing was committed
                raise
            self.flushed_seq = mark
            # A synchronous commit made every one of them durable.
            self._unconfirmed = [] if durable else rows

    async def close(self, *, flush: bool = True) -> None:
        """Wait for the background flush and write what is left (or leave it to the caller's transaction,
        through `barrier`, when `flush` is false)."""
        self.closed = True
        if self._writes_task is not None and self._writes_sleeping:
            self._writes_task.cancel()  # still waiting: flush_writes below commits its writes now
        if self._writes_task is not None:
            await asyncio.gather(self._writes_task, return_exceptions=True)
        await self.flush_writes()  # before the outcome is read from the checkpoints and their writes
        if self._pending is not None and self._delaying:
            self._pending.cancel()  # still waiting: what it would write is written below
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)
        if flush:
            await self.flush()


class Follower:
    """One reader following a run: woken by the LISTEN loop, with the rows the notifications carried."""

    def __init__(self, reserved: bool = False) -> None:
        self.wake = asyncio.Event()
        self.inbox: list[Event] = []
        # The log may hold events the inbox lacks: read it before trusting the inbox. Not for a follower
        # registered before its run existed (expect_events): it misses no notification, and the log is empty.
        self.read_log = not reserved
        self.reserved = reserved  # registered by a caller that is yet to follow the run

    def take(self) -> list[Event]:
        batch, self.inbox = self.inbox, []
        return batch


class EndWaiter:
    """One caller waiting for a run's end: woken by the LISTEN loop, with the terminal row when it was carried."""

    def __init__(self, reserved: bool = False) -> None:
        self.wake = asyncio.Event()
        self.row: dict[str, Any] | None = None
        self.reserved = (
            reserved  # registered before its run was created, by a caller yet to wait (expect_end)
        )


class EventFeed:
    """Tails the event log for this API process: one LISTEN connection wakes the readers of each run.

    A notification of new events carries them when they fit (see store.EVENTS_CHANNEL): a reader that follows
    the run live takes them from there, in order, without reading the log again. The log stays the source of
    truth: a reader starts (and resumes after Last-Event-ID) from it, and goes back to it whenever the
    notifications leave a gap (a batch too large to carry, a lost LISTEN connection, a poll timeout)."""

    def __init__(self, url: str, pool: AsyncConnectionPool, poll_s: float = 1.0) -> None:
        self.url, self.pool, self.poll_s = url, pool, poll_s
        self._waiters: defaultdict[str, set[Follower]] = defaultdict(set)
        self._done_waiters: defaultdict[str, set[EndWaiter]] = defaultdict(set)
        self._starts: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.live_events = 0  # events handed to readers from notifications (tests, metrics)
        self.log_reads = 0  # reads of the log by readers
        self.status_reads = 0  # reads of a run's status by readers and waiters

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="keel-event-feed")

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _listen(self) -> None:
        while not self._stopping:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self._wake_all()  # anything missed while (re)connecting
                    async for n in conn.notifies():
                        self._notified(n.payload)
            except asyncio.CancelledError:
                raise
            except Exception:  # Postgres restarts: readers poll meanwhile; reconnect
                log.warning("event feed connection lost; reconnecting", exc_info=True)
                await asyncio.sleep(0.5)

    def _notified(self, payload: str) -> None:
        if payload.startswith("done:"):
            rid, row = store.parse_done(payload)
            self._started(rid)
            for f in list(self._waiters.get(rid, ())):
                f.read_log = True  # the final read: status and whatever the log holds
                f.wake.set()
                if f.reserved:  # (its caller may never follow: a request gone before its stream began)
                    self._forget(self._waiters, rid, f)
            for w in list(self._done_waiters.get(rid, ())):
                w.row = row
                w.wake.set()
                if w.reserved:  # (its caller may never wait: it has what it needs, drop it)
                    self._forget(self._done_waiters, rid, w)
            return
        rid, _, rest = payload.partition(" ")
        self._started(rid)
        followers = self._waiters.get(rid)
        if not followers:
            return
        rows = store.parse_notify(payload)[1] if rest else None
        for f in list(followers):
            if rows is None:
                f.read_log = True
            else:
                f.inbox.extend(Event(seq, event, data) for seq, event, data in rows)
            f.wake.set()

    def _wake_all(self) -> None:
        for followers in self._waiters.values():
            for f in followers:
                f.read_log = True
                f.wake.set()
        for waiters in self._done_waiters.values():
            for w in waiters:
                w.wake.set()

    async def status(self, run_id: str) -> dict[str, Any] | None:
        self.status_reads += 1
        async with self.pool.connection() as conn:
            return await store.run_status(conn, run_id)

    @contextmanager
    def _waiting(self, group: defaultdict[str, set[T]], run_id: str, item: T) -> Iterator[T]:
        """`item` (woken by the LISTEN loop for this run) registered while the block runs."""
        group[run_id].add(item)
        try:
            yield item
        finally:
            self._forget(group, run_id, item)

    @staticmethod
    def _forget(group: defaultdict[str, set[T]], run_id: str, item: T) -> None:
        items = group.get(run_id)
        if items is not None:
            items.discard(item)
            if not items:
                group.pop(run_id, None)

    def expect_end(self, run_id: str) -> EndWaiter:
        """Before creating run `run_id`: a waiter for its end, for `wait_terminal(run_id, expected=...)`. Registered
        before the run exists, it cannot miss the end, so waiting needs no first read of the run's status."""
        w = EndWaiter(reserved=True)
        self._done_waiters[run_id].add(w)
        return w

    def unexpect_end(self, run_id: str, waiter: EndWaiter) -> None:
        """The run was not created after all."""
        self._forget(self._done_waiters, run_id, waiter)

    def expect_start(self, run_id: str) -> asyncio.Event:
        """Before creating run `run_id`: an event set by the first notification about it (an event its attempt
        logged, or its end). Every one is committed after the run's claim or end, both synchronous commits: the
        run's creation, committed before either, is durable by then (see RunManager.create, durable=False)."""
        started = asyncio.Event()
        self._starts[run_id].add(started)
        return started

    def unexpect_start(self, run_id: str, started: asyncio.Event) -> None:
        """The caller no longer waits for the run's start."""
        self._forget(self._starts, run_id, started)

    def _started(self, run_id: str) -> None:
        for started in self._starts.pop(run_id, ()):
            started.set()

    def expect_events(self, run_id: str) -> Follower:
        """Before creating run `run_id`: a follower of its events, for `subscribe(run_id, follower=...)`.
        Registered before the run exists, it cannot miss a notification, so following the new run needs no
        first read of its (empty) log and status: the first event comes straight from its notification."""
        f = Follower(reserved=True)
        self._waiters[run_id].add(f)
        return f

    def unexpect_events(self, run_id: str, follower: Follower) -> None:
        """The run was not created after all."""
        self._forget(self._waiters, run_id, follower)

    async def subscribe(
        self, run_id: str, after: int = 0, follower: Follower | None = None
    ) -> AsyncIterator[Event]:
        """Events with seq > after, then live ones, until the run is terminal (or gone). `follower`: the one
        `expect_events(run_id)` registered before the run was created."""
        last = after
        if follower is not None:
            follower.reserved = False
        with self._waiting(self._waiters, run_id, follower or Follower()) as f:
            while True:
                f.wake.clear()
                # Live: the rows the notifications carried, as long as they continue the sequence.
                for ev in f.take():
                    if ev.seq <= last:
                        continue  # (already read from the log, or re-appended after a Postgres restart)
                    if ev.seq != last + 1:
                        f.read_log = True  # a gap: what is missing is in the log
                        break
                    last = ev.seq
                    self.live_events += 1
                    yield ev
                if f.read_log:
                    f.read_log = False
                    f.take()  # (the read below returns these too)
                    self.log_reads += 1
                    row = await self.status(run_id)
                    async with self.pool.connection() as conn:
                        rows = await store.fetchall(conn, store.EVENTS_AFTER, (run_id, last))
                    for r in rows:
                        last = r["seq"]
                        yield Event(r["seq"], r["event"], r["data"])
                    if len(rows) == store.EVENTS_PAGE:
                        f.read_log = True  # (a full page: read on until the log is exhausted)
                        continue
                    # The status was read first: a run terminal then had every event in the log by this read.
                    if row is None or row["status"] in TERMINAL:
                        return  # (a re-queued run is "pending": the loop keeps following its next attempt)
                if f.inbox:
                    continue
                try:
                    await asyncio.wait_for(f.wake.wait(), self.poll_s)
                except TimeoutError:
                    f.read_log = True

    async def wait_terminal(self, run_id: str, expected: EndWaiter | None = None) -> dict[str, Any] | None:
        """Block until the run is terminal; return its row (status, result, error). Woken only at the end, whose
        notification usually carries the row (see store.EVENTS_CHANNEL): then it is not read back. `expected`:
        the waiter `expect_end` registered before the run was created."""
        w = expected or EndWaiter()
        # Registered since before the run existed and not woken: the run has not ended, no need to read it.
        read = expected is None or w.wake.is_set()
        w.reserved = False
        self._done_waiters[run_id].add(w)  # (again, if its end dropped it)
        try:
            while True:
                w.wake.clear()
                if w.row is not None:
                    return w.row
                if read:
                    row = await self.status(run_id)
                    if row is None or row["status"] in TERMINAL:
                        return row
                read = True
                try:
                    await asyncio.wait_for(w.wake.wait(), max(self.poll_s, 2.0))
                except TimeoutError:
                    pass
        finally:
            self._forget(self._done_waiters, run_id, w)
