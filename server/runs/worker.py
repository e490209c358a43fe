"""Queue workers: claim runs, keep their leases alive from a thread, execute, drain on SIGTERM.

A worker is woken by NOTIFY (no busy polling; a slow poll only backs up missed notifications), claims
with `FOR UPDATE SKIP LOCKED`, and heartbeats its leases from a plain thread with its own connection,
so a node that blocks the event loop cannot starve the heartbeat and get its run stolen. Every worker
also reaps: runs whose lease expired, or whose owner died (its liveness lock is gone: see Heartbeat), are
re-queued (or dead-lettered after too many attempts).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from server.retention import prune_run_events, sweep
from server.runs import queue
from server.runs.attempt import RunHandle
from server.runs.executor import RunExecutor
from server.runs.store import Outcome
from server.settings import Settings

log = logging.getLogger("keel.worker")


class Heartbeat(threading.Thread):
    """Renews the leases of this worker's runs every `interval` seconds, independent of the event loop.

    Its connection also holds the worker's liveness lock (store.LIVENESS_CLASS) for as long as the process lives:
    taken when it connects, before any lease names it, and dropped by Postgres when the process dies, so other
    workers can tell a dead owner from a slow one at once."""

    def __init__(self, worker: Worker, interval: float) -> None:
        super().__init__(name=f"keel-heartbeat-{worker.owner}", daemon=True)
        self.worker, self.interval = worker, interval
        self.stop_event = threading.Event()
        self.locked = asyncio.Event()  # the liveness lock was taken at least once (set on the worker's loop)
        self.beats = 0

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.worker.db.url, autocommit=True, connect_timeout=5, prepare_threshold=None)
        try:
            # Keys are random: another live worker holding the same one is unlikely, but then pick again.
            while True:
                row = conn.execute(queue.lock_liveness_sql(), (self.worker.lock_key,)).fetchone()
                if row is not None and row[0]:
                    break
                self.worker.lock_key = secrets.randbits(31)
        except BaseException:
            conn.close()
            raise
        if not self.locked.is_set():
            self.worker.call_soon(self.locked.set)
        return conn

    def _beat(self, conn: psycopg.Connection, ids: list[str]) -> list[Any]:
        w = self.worker
        rows = conn.execute(queue.heartbeat_sql(), (w.lease_s, w.lock_key, ids, w.owner)).fetchall()
        self.beats += 1
        return rows

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while True:
                ids = list(self.worker.handles)
                rows: list[Any] | None = None
                for retry in (False, True):  # a connection that died while idle is found at the next beat
                    try:
                        if conn is None or conn.closed:
                            conn = self._connect()
                        rows = self._beat(conn, ids) if ids else []
                        break
                    except Exception:  # Postgres may be restarting; keep trying until the lease runs out
                        if retry:
                            log.warning("heartbeat failed", exc_info=True)
                        if conn is not None:
                            conn.close()
                        conn = None
                if rows is not None and ids:
                    self._check(ids, rows)
                if self.stop_event.wait(self.interval):
                    return
        finally:
            if conn is not None:
                conn.close()

    def _check(self, ids: list[str], rows: list[Any]) -> None:
        held = {r[0]: r for r in rows}
        for rid in ids:
            h = self.worker.handles.get(rid)
            if h is None:
                continue
            row = held.get(rid)
            if row is None or row[1] != h.claim.epoch:
                self.worker.call_soon(self.worker.lost, rid)
            elif row[2] and not h.cancel:
                self.worker.call_soon(self.worker.cancel_local, rid, row[2])


class Worker:
    """Executes up to `concurrency` runs at a time from the shared queue."""

    def __init__(
        self,
        db: Any,
        executor: RunExecutor,
        settings: Settings,
        *,
        concurrency: int,
        lease_s: float,
        poll_s: float = 2.0,
        max_attempts: int = 3,
        name: str | None = None,
    ) -> None:
        self.db = db  # server.db.Database: its pool, URL (LISTEN, heartbeat) and checkpointer (retention)
        self.pool = db.pool
        self.settings = settings  # webhook outbox, event retention
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.owner = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lock_key = secrets.randbits(31)  # this process's liveness lock (see Heartbeat); not the name's
        self.executor = executor
        self.handles: dict[str, RunHandle] = {}
        self._wake = asyncio.Event()
        self._saturated = False  # the last claim pass stopped at `concurrency`
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self.heartbeat = Heartbeat(self, interval=max(0.2, lease_s / 4))
        self.sweep_s = 60.0

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.heartbeat.start()
        self._listener = asyncio.create_task(self._listen(), name="keel-worker-listen")
        self._main = asyncio.create_task(self._run(), name="keel-worker")
        self._dispatcher = None
        if self.settings.keel_webhook_url:
            from tools.webhook import dispatcher

            self._dispatcher = asyncio.create_task(dispatcher(self.pool), name="keel-outbox")
        log.info("worker %s started (%d slots, lease %.1fs)", self.owner, self.concurrency, self.lease_s)

    async def drain(self, grace_s: float = 30.0) -> None:
        """Stop claiming; ask running runs to stop at their next step boundary and hand them back."""
        self._stopping = True
        self._wake.set()
        for h in list(self.handles.values()):
            h.control.request_drain("worker shutting down")
        tasks = [h.task for h in self.handles.values() if h.task]
        if tasks:
            log.info("draining %d run(s)", len(tasks))
            done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for t in pending:  # stuck in a long step: leave the lease to expire, the reaper re-queues it
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.stop()

    async def stop(self) -> None:
        self._stopping = True
        self.heartbeat.stop_event.set()
        loops = [t for t in (self._main, self._listener, getattr(self, "_dispatcher", None)) if t]
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for h in list(self.handles.values()):
            if h.task:
                h.task.cancel()
        await asyncio.gather(*(h.task for h in self.handles.values() if h.task), return_exceptions=True)

    # ---------------------------------------------------------------- signals from other threads

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def lost(self, run_id: str) -> None:
        h = self.handles.get(run_id)
        # A settling run is recording its outcome or tidying up after it: its finish() is fenced by itself,
        # and once that commits the run is no longer `running`, which the heartbeat must not take for a loss.
        if h is None or h.lost or h.phase == "settling":
            return
        log.warning("lease of run %s lost; stopping it", run_id)
        h.lost = True
        if h.phase != "queued" and h.task:  # a task that has not begun checks `lost` first
            h.task.cancel()

    def cancel_local(self, run_id: str, action: str) -> None:
        h = self.handles.get(run_id)
        if h is None or h.cancel or h.phase == "settling":
            return  # the outcome is being recorded: the run ends by itself (see RunHandle)
        h.cancel = action  # queued: checked when the task begins; undoing: a rollback follows the undo
        if h.phase == "running" and h.task:
            h.task.cancel()

    # ---------------------------------------------------------------- loops

    async def _listen(self) -> None:
        while not self._stopping:
            try:
                async with await psycopg.AsyncConnection.connect(self.db.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {queue.RUNS_CHANNEL}")
                    self._wake.set()
                    async for n in conn.notifies():
                        if n.payload.startswith("cancel:"):
                            rid, _, action = n.payload[7:].partition(":")
                            self.cancel_local(rid, action or "interrupt")
                        else:
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # reconnect after a Postgres restart; the poll covers the gap
                log.warning("worker listen connection lost; reconnecting", exc_info=True)
                await asyncio.sleep(0.5)

    async def _run(self) -> None:
        # Claims name the liveness lock only once it is held: the first claim waits for it briefly (a few ms,
        # off the start-up path; a Postgres that is not up yet only delays fast failover of the first runs).
        try:
            await asyncio.wait_for(self.heartbeat.locked.wait(), 2.0)
        except TimeoutError:
            pass
        last_reap = 0.0
        last_sweep = time.monotonic()
        while not self._stopping:
            self._wake.clear()
            try:
                if time.monotonic() - last_reap >= min(1.0, self.lease_s / 2):
                    last_reap = time.monotonic()
                    for r in await queue.reap(
                        self.pool,
                        self.max_attempts,
                        owner=self.owner,
                        lease_s=self.lease_s,
                        held=list(self.handles),
                        lock=self.lock_key,
                    ):
                        if r["finalize"]:
                            log.warning(
                                "run %s: lease expired on its last attempt (%s); finishing it from its "
                                "checkpoints",
                                r["run_id"],
                                r["attempt"],
                            )
                            self._start(queue.Claim(r, int(r["lease_epoch"])), finalize=True)
                            continue
                        log.warning(
                            "run %s: lease expired, %s (attempt %s)",
                            r["run_id"],
                            "dead-lettered" if r["status"] == "error" else "re-queued",
                            r["attempt"],
                        )
                if time.monotonic() - last_sweep >= self.sweep_s:
                    last_sweep = time.monotonic()
                    await sweep(self.db)  # expired thread TTLs
                    # Bounded per tick (10 x 5,000 rows) so claims and reaping never wait long; a backlog
                    # drains over the following minutes, or at once with `keel prune`.
                    await prune_run_events(self.db, self.settings.keel_events_ttl_seconds, max_batches=10)
                while len(self.handles) < self.concurrency and not self._stopping:
                    c = await queue.claim(self.pool, self.owner, self.lease_s, self.lock_key)
                    if c is None:
                        break
                    self._start(c)
                    if not c.run.get("more_pending", True):
                        break
                # Full: runs may be waiting, so a slot that frees up wakes the loop (else NOTIFY does).
                self._saturated = len(self.handles) >= self.concurrency
            except asyncio.CancelledError:
                raise
            except Exception:  # Postgres unavailable: back off, the pool reconnects
                log.warning("queue poll failed", exc_info=True)
            try:
                # Wake at least every quarter lease: expired leases of dead workers are found quickly.
                await asyncio.wait_for(self._wake.wait(), min(self.poll_s, max(0.25, self.lease_s / 4)))
            except TimeoutError:
                pass

    def _start(self, c: queue.Claim, *, finalize: bool = False) -> None:
        h = RunHandle(c, finalize=finalize)
        self.handles[c.run_id] = h
        h.task = asyncio.create_task(self._execute(h), name=f"run-{c.run_id}")
        # A done callback, not a `finally`: it runs even for a task cancelled before its first step.
        h.task.add_done_callback(lambda _t: self._release_handle(h))

    def _release_handle(self, h: RunHandle) -> None:
        if self.handles.get(h.claim.run_id) is h:  # not a later claim of the same run
            del self.handles[h.claim.run_id]
        if self._saturated or self._stopping:
            self._wake.set()

    async def _execute(self, h: RunHandle) -> None:
        try:
            outcome = await self.executor.execute(h)
        except asyncio.CancelledError:
            outcome = Outcome.CANCELLED
        except Exception:  # its lease expires and the reaper (any worker, this one too) re-queues it
            log.exception("executor crashed")
            outcome = Outcome.CRASHED
        log.debug("run %s: %s", h.claim.run_id, outcome)
