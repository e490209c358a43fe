"""GET /threads/{thread_id}/stream: the events of a thread's runs, as they happen (a thread-level join).

It follows the runs of the thread one after another, in the order they were created (the order a thread runs
them), by tailing each run's persisted event log (server.runs.events, read only). After each run it sends
`metadata {"status": "run_done", "run_id": ...}`, as the reference does. Without Last-Event-ID only what
happens from now on is sent: the rest of a run in progress, then every later run. Each event's id is
`<run_id>:<seq>` (`<run_id>:done` for run_done); with Last-Event-ID the stream resumes after that event, the
runs created after that one included. The stream stays open until the client leaves (or the thread is deleted).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from server.auth import CurrentUser
from server.deps import Service
from server.errors import ApiError
from server.routes.runs import KEEPALIVE_S, events_with_keepalive
from server.routes.threads import owned_thread
from server.runs import store
from server.runs.store import ACTIVE
from server.schemas import AUTHENTICATED, SSE_EVENTS, ThreadId, errors
from server.serde import dumps
from server.service import KeelService

router = APIRouter(tags=["threads"], dependencies=AUTHENTICATED, responses=errors(401, 422))

THREAD_STREAM_MODES = ("run_modes", "lifecycle", "state_update")
POLL_S = 0.5  # how often an idle stream looks for the thread's next run
LATE_COMMIT = timedelta(minutes=1)  # a run's created_at is its transaction's start, which may commit later
SSE_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}
EVENT_ID = re.compile(r"^([0-9a-fA-F-]{36}):(\d{1,18}|done)$")


class ThreadEventStream(StreamingResponse):
    """Server-sent events (documents the route's 200 as text/event-stream)."""

    media_type = "text/event-stream"


def _modes(stream_modes: str | None, stream_mode: list[str] | None) -> list[str]:
    """`stream_modes` (comma-separated, the reference's parameter) and/or `stream_mode` (the SDK's)."""
    raw = [m.strip() for m in (stream_modes or "").split(",") if m.strip()]
    raw += [m.strip() for m in stream_mode or [] if m.strip()]
    for mode in raw:
        if mode not in THREAD_STREAM_MODES:
            raise ApiError(422, f"Invalid stream mode: {mode}")
    return raw or ["run_modes"]


def _wanted(event: str, data: Any, modes: list[str]) -> bool:
    if event == "end":  # Keel's run log ends with it; a thread stream has no end
        return False
    if "run_modes" in modes:
        return True
    if "lifecycle" in modes and event == "metadata" and isinstance(data, dict):
        return data.get("status") == "run_done" or ("attempt" in data and "run_id" in data)
    return False  # state_update: Keel publishes no state_update events (documented in docs/api.md)


def _sse(event: str, data: Any, event_id: str) -> bytes:
    name = event.replace("\r", "").replace("\n", "")
    return b"event: " + name.encode() + b"\r\ndata: " + dumps(data) + f"\r\nid: {event_id}\r\n\r\n".encode()


async def _runs(svc: KeelService, tid: str, since: datetime | None) -> list[dict[str, Any]] | None:
    """The thread's runs created at or after `since` (all with None), oldest first; None if the thread is gone."""
    async with svc.db.pool.connection() as conn:
        rows = await store.fetchall(conn, store.THREAD_RUNS_SINCE, (since, tid))
    if not rows:
        return None
    return [r for r in rows if r["run_id"] is not None]


async def _follow(svc: KeelService, rid: str, after: int) -> AsyncIterator[tuple[int, str, Any] | None]:
    """(seq, event, data) of the run after `after` until it ends; None every KEEPALIVE_S of silence."""
    async for ev in events_with_keepalive(svc, rid, after):
        yield None if ev is None else (ev.seq, ev.event, ev.data)


async def _start(
    svc: KeelService, runs: list[dict[str, Any]], resume: tuple[str, str] | None
) -> list[tuple[str, int]]:
    """Which of the thread's runs to follow first, from which seq."""
    ids = [str(r["run_id"]) for r in runs]
    if resume is not None and resume[0] in ids:
        at = ids.index(resume[0])
        first = [] if resume[1] == "done" else [(ids[at], int(resume[1]))]
        return first + [(rid, 0) for rid in ids[at + 1 :]]
    plan = []  # live only: the rest of the runs in progress or queued
    for r in runs:
        if r["status"] in ACTIVE:
            async with svc.db.pool.connection() as conn:
                plan.append((str(r["run_id"]), await store.last_seq(conn, str(r["run_id"]))))
    return plan


@router.get(
    "/threads/{thread_id}/stream",
    response_class=ThreadEventStream,
    responses={**SSE_EVENTS, **errors(401, 404, 422, stream=True)},
)
async def join_thread_stream(
    thread_id: ThreadId,
    svc: Service,
    user: CurrentUser,
    stream_modes: str | None = None,
    stream_mode: list[str] | None = Query(None),
    last_event_id: str | None = Header(None),
) -> StreamingResponse:
    """Stream the events of the thread's runs as they happen; with Last-Event-ID, from after that event."""
    row = await owned_thread(svc, user, thread_id)
    tid = str(row["thread_id"])
    modes = _modes(stream_modes, stream_mode)
    resume: tuple[str, str] | None = None
    if last_event_id not in (None, ""):
        m = EVENT_ID.match(last_event_id or "")
        if m is None:
            raise ApiError(422, "Invalid last-event-id: must be an event id of this thread's stream")
        resume = (m.group(1).lower(), m.group(2))

    async def body() -> AsyncIterator[bytes]:
        runs = await _runs(svc, tid, None)
        if runs is None:
            return
        plan = await _start(svc, runs, resume)
        seen = {str(r["run_id"]) for r in runs}
        latest = max((r["created_at"] for r in runs), default=None)
        yield b": joined\r\n\r\n"  # an SSE comment: from here on, no run of the thread goes unseen
        idle = 0.0
        while True:
            for rid, after in plan:
                async for item in _follow(svc, rid, after):
                    if item is None:
                        yield b": heartbeat\r\n\r\n"
                    elif _wanted(item[1], item[2], modes):
                        yield _sse(item[1], item[2], f"{rid}:{item[0]}")
                done = {"status": "run_done", "run_id": rid}
                if _wanted("metadata", done, modes):
                    yield _sse("metadata", done, f"{rid}:done")
                idle = 0.0
            plan = []
            while not plan:
                recent = await _runs(svc, tid, latest - LATE_COMMIT if latest else None)
                if recent is None:
                    return  # the thread was deleted
                for r in recent:
                    if str(r["run_id"]) not in seen:
                        seen.add(str(r["run_id"]))
                        plan.append((str(r["run_id"]), 0))
                        latest = max(latest, r["created_at"]) if latest else r["created_at"]
                if not plan:
                    await asyncio.sleep(POLL_S)
                    idle += POLL_S
                    if idle >= KEEPALIVE_S:
                        idle = 0.0
                        yield b": heartbeat\r\n\r\n"

    return StreamingResponse(body(), media_type="text/event-stream; charset=utf-8", headers=SSE_HEADERS)
