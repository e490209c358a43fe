"""Per-run event logs that HTTP responses subscribe to.

This in-process broker is the seam the durable run engine replaces with a Postgres event log: the API
only ever calls `publish`, `close` and `subscribe`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    """One stream part: its sequence number in the run, SSE event name and JSON-able data."""

    seq: int
    event: str
    data: Any


@dataclass
class _Log:
    events: list[Event] = field(default_factory=list)
    closed: bool = False
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)


class Broker:
    """Keeps every event of recent runs; subscribers replay from any point and then follow live."""

    def __init__(self, keep: int = 2000) -> None:
        self._logs: OrderedDict[str, _Log] = OrderedDict()
        self._keep = keep

    def open(self, run_id: str) -> None:
        self._logs[run_id] = _Log()
        while len(self._logs) > self._keep:
            _, old = self._logs.popitem(last=False)
            old.closed = True

    def known(self, run_id: str) -> bool:
        return run_id in self._logs

    async def publish(self, run_id: str, event: str, data: Any) -> int:
        log = self._logs[run_id]
        async with log.cond:
            seq = len(log.events)
            log.events.append(Event(seq, event, data))
            log.cond.notify_all()
        return seq

    async def close(self, run_id: str) -> None:
        log = self._logs.get(run_id)
        if log is None:
            return
        async with log.cond:
            log.closed = True
            log.cond.notify_all()

    async def subscribe(self, run_id: str, after: int = -1) -> AsyncIterator[Event]:
        """Events with seq > after, then live ones until the run closes."""
        log = self._logs.get(run_id)
        if log is None:
            return
        i = after + 1
        while True:
            async with log.cond:
                while i >= len(log.events) and not log.closed:
                    await log.cond.wait()
                batch = log.events[i:]
                closed = log.closed
            for ev in batch:
                yield ev
            i += len(batch)
            if closed and i >= len(log.events):
                return
