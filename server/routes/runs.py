"""Runs: background, wait and stream, on a thread or stateless; join, cancel, list, delete."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Header, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from server.auth import CurrentUser, User
from server.deps import Service
from server.errors import ApiError, not_found, parse_uuid
from server.routes.threads import owned_thread
from server.runs import store
from server.runs.events import EndWaiter, Event, Follower
from server.runs.manager import run_json
from server.runs.store import ACTIVE, RunStatus
from server.schemas import (
    AUTHENTICATED,
    MAX_OFFSET,
    SSE_EVENTS,
    RunCreate,
    RunId,
    StreamMode,
    ThreadId,
    _Body,
    errors,
)
from server.serde import dumps, jsonable
from server.service import KeelService

router = APIRouter(tags=["runs"], dependencies=AUTHENTICATED, responses=errors(401, 422))

log = logging.getLogger("keel")

KEEPALIVE_S = 5.0
# How long a request that created a run to stream or wait for waits for a sign that the creation is durable
# before it makes it durable itself (see _create_foreground).
DURABLE_WAIT_S = 0.1
LOST_CREATION = "The run was lost to a database restart before it started; create it again."
DELETE_WAIT_S = 30.0  # how long DELETE of a running run waits for its rollback
MAX_BATCH = 100  # runs per POST /runs/batch
NOTHING_TO_CANCEL = (
    "No matching runs to cancel. Please verify the thread ID and run IDs are correct, and the runs haven't "
    "been deleted or completed."
)
SSE_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}
ALWAYS = {"metadata", "error"}
# Logged but never sent: the log's end-of-run marker (the reference server ends a stream by closing it).
HIDDEN = {"end"}
RUN_NOT_FOUND = {"error": "HTTPException", "message": "404: Run not found"}
CURRENT_METADATA = (
    "SELECT seq, event, data FROM keel_run_events WHERE run_id = %s AND event = 'metadata' "
    "ORDER BY seq DESC LIMIT 1"
)


class EventStream(StreamingResponse):
    """Server-sent events (documents the routes' 200 as text/event-stream)."""

    media_type = "text/event-stream"


def sse(event: Event, with_id: bool) -> bytes:
    """One SSE event: event, data and (for resumable runs) id lines, CRLF-terminated."""
    name = event.event.replace("\r", "").replace("\n", "")
    out = b"event: " + name.encode() + b"\r\ndata: " + dumps(event.data) + b"\r\n"
    if with_id:
        out += f"id: {event.seq}\r\n".encode()
    return out + b"\r\n"


def _wanted(event: str, modes: list[str]) -> bool:
    base = event.split("|", 1)[0]
    if base in HIDDEN:
        return False
    if base in ALWAYS:
        return True
    if base == "messages":
        return "messages-tuple" in modes
    if base.startswith("messages/"):
        return "messages" in modes
    return base in modes


def _wait_links(base: str) -> dict[str, str]:
    """Headers of a wait or join answer, as the reference sends them: Location (the join), Content-Location (the run)."""
    return {"location": base + "/join", "content-location": base}


async def events_with_keepalive(
    svc: KeelService, run_id: str, after: int, follower: Follower | None = None
) -> AsyncIterator[Event | None]:
    """The run's events from the persisted log; None every KEEPALIVE_S seconds of silence. `follower`: the
    one registered before the run was created (see `_create_foreground`)."""
    queue: asyncio.Queue[Event | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for ev in svc.feed.subscribe(run_id, after, follower):
                await queue.put(ev)
        finally:
            await queue.put(None)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                ev = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield None
                continue
            if ev is None:
                failure = task.exception() if task.done() else None
                if failure is not None:
                    raise failure
                return
            yield ev
    finally:
        task.cancel()


def _stream_response(
    svc: KeelService,
    run: dict[str, Any],
    *,
    modes: list[str] | None = None,
    after: int = 0,
    first: Event | None = None,
    follower: Follower | None = None,
    cancel_on_disconnect: bool = False,
    location: str | None,
    content_location: str,
) -> StreamingResponse:
    kwargs = run["kwargs"] or {}
    modes = modes or kwargs.get("stream_mode") or ["values"]
    with_id = bool(kwargs.get("resumable"))

    async def body() -> AsyncIterator[bytes]:
        finished = False
        try:
            try:
                if first is not None:
                    yield sse(first, with_id)
                async for ev in events_with_keepalive(svc, str(run["run_id"]), after, follower):
                    if ev is None:
                        yield b": heartbeat\r\n\r\n"
                    elif _wanted(ev.event, modes):
                        yield sse(ev, with_id)
            except Exception:  # the 200 is sent: end the stream with an error event, not a cut
                log.exception("streaming run %s failed", run["run_id"])
                yield sse(
                    Event(
                        0,
                        "error",
                        {
                            "error": "InternalError",
                            "message": "the stream failed; join the run again to continue",
                        },
                    ),
                    False,
                )
            finished = True
        finally:
            if not finished and cancel_on_disconnect:
                await _cancel_shielded(svc, run)

    headers = {**SSE_HEADERS, "content-location": content_location}
    if location:
        headers["location"] = location
    return StreamingResponse(body(), media_type="text/event-stream; charset=utf-8", headers=headers)


def _not_found_stream(base: str) -> StreamingResponse:
    """The reference server's answer to joining the stream of an unknown run: 200, one error event."""

    async def body() -> AsyncIterator[bytes]:
        yield sse(Event(0, "error", RUN_NOT_FOUND), False)

    headers = {**SSE_HEADERS, "location": base + "/stream", "content-location": base}
    return StreamingResponse(body(), media_type="text/event-stream; charset=utf-8", headers=headers)


async def _cancel_shielded(svc: KeelService, run: dict[str, Any]) -> None:
    """Cancel the run although the response task itself is being cancelled (client went away)."""
    with anyio.CancelScope(shield=True):
        await svc.runs.cancel(run)


async def _result(svc: KeelService, run: dict[str, Any], expected: EndWaiter | None = None) -> Any:
    """What wait/join return: the last values (with __interrupt__), or {"__error__": ...}."""
    row = await svc.feed.wait_terminal(str(run["run_id"]), expected)
    if row is None:
        return {"__error__": {"error": "RunDeleted", "message": "the run was cancelled and rolled back"}}
    if row["status"] == RunStatus.ERROR:
        return {"__error__": row["error"] or {"error": "RunError", "message": "the run failed"}}
    if row["result"] is not None:
        return row["result"]
    async with svc.db.pool.connection() as conn:
        thread = await store.get_thread(conn, str(run["thread_id"]))
    graph = svc.graph_for(((thread or {}).get("metadata") or {}).get("graph_id"))
    snap = await graph.aget_state({"configurable": {"thread_id": str(run["thread_id"])}})
    return jsonable(snap.values or {})


async def _thread_result(svc: KeelService, thread_id: str) -> Any:
    """What joining a run that already ended returns (as the reference server does): the thread's error,
    its pending interrupts, or its values (every channel), from the thread as it stands now."""
    async with svc.db.pool.connection() as conn:
        row = await store.get_thread(conn, thread_id)
    if row is None:
        return {}
    if row["status"] == "error":
        return {"__error__": row["error"] or {"error": "RunError", "message": "the run failed"}}
    if row["status"] == "interrupted":
        groups = (row["interrupts"] or {}).values()
        pending = [i for group in groups if isinstance(group, list) for i in group]
        if pending:
            return {"__interrupt__": pending}
    return row["values"] or {}


def _wait_response(
    svc: KeelService,
    run: dict[str, Any] | None,
    *,
    cancel_on_disconnect: bool,
    headers: dict[str, str],
    ended: bool = False,
    expected: EndWaiter | None = None,
) -> StreamingResponse:
    """JSON result, preceded by a newline every few seconds so proxies and clients keep the connection.

    `run` None: the run is unknown (200 with an `__error__`, as the reference answers a join); `ended`: it
    had already ended when joined, so the answer is the thread's (see `_thread_result`).
    """

    async def outcome() -> Any:
        if run is None:
            return {"__error__": RUN_NOT_FOUND}
        if ended:
            return await _thread_result(svc, str(run["thread_id"]))
        return await _result(svc, run, expected)

    async def body() -> AsyncIterator[bytes]:
        finished = False
        task = asyncio.create_task(outcome())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_S)
                if done:
                    break
                yield b"\n"
            finished = True
            if task.exception() is not None:  # the 200 is sent: answer in the body, as a failed run would
                rid = run["run_id"] if run is not None else None
                log.error("waiting for run %s failed", rid, exc_info=task.exception())
                yield dumps(
                    {
                        "__error__": {
                            "error": "InternalError",
                            "message": "waiting for the run failed; join it again",
                        }
                    }
                )
            else:
                yield dumps(task.result())
        finally:
            if not task.done():
                task.cancel()
            if not finished and cancel_on_disconnect and run is not None:
                await _cancel_shielded(svc, run)

    return StreamingResponse(body(), media_type="application/json", headers=headers)


# -------------------------------------------------------------------------------------------- thread runs


# Background runs also record these, so a later join may ask for any of them (the SDK's runs.create always
# sends stream_mode="values", yet its join_stream documents that background runs keep the union of modes).
BACKGROUND_MODES: list[StreamMode] = ["values", "updates", "messages-tuple", "custom"]


def _background(body: RunCreate) -> RunCreate:
    body.record_modes = list(BACKGROUND_MODES)
    return body


async def _create_foreground(
    svc: KeelService, user: User, thread_id: str | None, body: RunCreate, *, stream: bool
) -> tuple[dict[str, Any], Follower | None, EndWaiter | None]:
    """Create a run this request streams (`stream`: with its follower) or waits for (with its end waiter), and
    return once the creation is durable, before the client learns anything about the run.

    The follower or waiter is registered before the run exists, so it misses no notification: a streamed run's
    first event comes straight from one, with no read of its (empty) log. The creation commits without waiting
    for the WAL flush, one disk wait less before the first event and the result: WAL is flushed in order, so
    the run's claim or end (synchronous commits) make it durable too, and the first notification about the run
    proves one of them. When none comes within DURABLE_WAIT_S (the queue is backed up, or no worker runs),
    `confirm` makes the creation durable with a synchronous commit of its own."""
    rid = str(uuid.uuid4())
    follower = svc.feed.expect_events(rid) if stream else None
    expected = None if stream else svc.feed.expect_end(rid)
    started = svc.feed.expect_start(rid)
    try:
        run = await svc.runs.create(user, thread_id, body, run_id=rid, durable=False)
        try:
            await asyncio.wait_for(started.wait(), DURABLE_WAIT_S)
        except TimeoutError:
            if not await svc.runs.confirm(rid) and not started.is_set():
                # Its creation was lost to a Postgres crash (or, with the feed's connection down meanwhile, it
                # ran on a temporary thread that is gone): the client has been told nothing, it may ask again.
                raise ApiError(503, LOST_CREATION) from None
    except BaseException:
        if follower is not None:
            svc.feed.unexpect_events(rid, follower)
        if expected is not None:
            svc.feed.unexpect_end(rid, expected)
        raise
    finally:
        svc.feed.unexpect_start(rid, started)
    return run, follower, expected


def _foreground(body: RunCreate) -> RunCreate:
    body.record_modes = None  # server-set only; a client cannot widen what the log records
    return body


@router.post("/threads/{thread_id}/runs", responses=errors(400, 404, 409, 413))
async def create_run(
    thread_id: ThreadId, body: RunCreate, svc: Service, user: CurrentUser, response: Response
) -> dict[str, Any]:
    """Start a run in the background."""
    run = await svc.runs.create(user, parse_uuid(thread_id, "thread"), _background(body))
    response.headers["content-location"] = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
    return run_json(run)


@router.post("/threads/{thread_id}/runs/wait", responses=errors(400, 404, 409, 413))
async def wait_run(
    thread_id: ThreadId, body: RunCreate, svc: Service, user: CurrentUser
) -> StreamingResponse:
    """Start a run and answer with its final values."""
    run, _, expected = await _create_foreground(
        svc, user, parse_uuid(thread_id, "thread"), _foreground(body), stream=False
    )
    base = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
    return _wait_response(
        svc,
        run,
        cancel_on_disconnect=body.on_disconnect == "cancel",
        headers=_wait_links(base),
        expected=expected,
    )


@router.post(
    "/threads/{thread_id}/runs/stream",
    response_class=EventStream,
    responses={**SSE_EVENTS, **errors(401, 400, 404, 409, 413, 422, stream=True)},
)
async def stream_run(
    thread_id: ThreadId, body: RunCreate, svc: Service, user: CurrentUser
) -> StreamingResponse:
    """Start a run and stream its events as SSE."""
    run, follower, _ = await _create_foreground(
        svc, user, parse_uuid(thread_id, "thread"), _foreground(body), stream=True
    )
    base = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
    return _stream_response(
        svc,
        run,
        follower=follower,
        cancel_on_disconnect=body.on_disconnect == "cancel",
        location=base + "/stream",
        content_location=base,
    )


async def owned_run(svc: KeelService, user: User, thread_id: str, run_id: str) -> dict[str, Any]:
    await owned_thread(svc, user, thread_id)
    rid = parse_uuid(run_id, "run")
    async with svc.db.pool.connection() as conn:
        row = await store.get_run(conn, rid, parse_uuid(thread_id, "thread"))
    if row is None:
        raise not_found("Run", rid)
    return row


@router.get("/threads/{thread_id}/runs", responses=errors(404))
async def list_runs(
    thread_id: ThreadId,
    svc: Service,
    user: CurrentUser,
    limit: int = Query(10, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    status: str | None = None,
) -> list[dict[str, Any]]:
    """The thread's runs, newest first."""
    row = await owned_thread(svc, user, thread_id)
    params = [row["thread_id"], *([status] if status else []), limit, offset]
    async with svc.db.pool.connection() as conn:
        return [run_json(r) for r in await store.fetchall(conn, store.list_runs_sql(bool(status)), params)]


@router.get("/threads/{thread_id}/runs/{run_id}", responses=errors(404))
async def get_run(thread_id: ThreadId, run_id: RunId, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """One run."""
    return run_json(await owned_run(svc, user, thread_id, run_id))


async def joined_run(svc: KeelService, user: User, thread_id: str, run_id: str) -> dict[str, Any] | None:
    """The caller's run to join; None when its (owned) thread has no such run: the reference answers that
    with 200 and an error in the body, not a 404."""
    try:
        return await owned_run(svc, user, thread_id, run_id)
    except ApiError as exc:
        if exc.status == 404 and exc.detail.startswith("Run "):
            return None
        raise


@router.get("/threads/{thread_id}/runs/{run_id}/join", responses=errors(404))
async def join_run(
    thread_id: ThreadId, run_id: RunId, svc: Service, user: CurrentUser, cancel_on_disconnect: bool = False
) -> StreamingResponse:
    """Wait for a run and answer with its final values (the thread's, if it had already ended)."""
    run = await joined_run(svc, user, thread_id, run_id)
    base = f"/threads/{thread_id}/runs/{run_id}"
    return _wait_response(
        svc,
        run,
        cancel_on_disconnect=cancel_on_disconnect,
        headers=_wait_links(base),
        ended=run is not None and run["status"] not in ACTIVE,
    )


@router.get(
    "/threads/{thread_id}/runs/{run_id}/stream",
    response_class=EventStream,
    responses={**SSE_EVENTS, **errors(401, 404, 422, stream=True)},
)
async def join_stream(
    thread_id: ThreadId,
    run_id: RunId,
    svc: Service,
    user: CurrentUser,
    stream_mode: list[str] | None = Query(None),
    cancel_on_disconnect: bool = False,
    last_event_id: str | None = Header(None),
) -> StreamingResponse:
    """Stream a run's events from now on; with Last-Event-ID, the logged events after it first."""
    run = await joined_run(svc, user, thread_id, run_id)
    modes = [m for m in (stream_mode or []) if m] or None
    after: int | None = None
    if last_event_id not in (None, ""):
        try:
            after = max(0, int(last_event_id))
            if after > MAX_OFFSET:
                raise ValueError(last_event_id)
        except ValueError:
            raise ApiError(422, "Last-Event-ID must be an event id from this run's stream") from None
    base = f"/threads/{thread_id}/runs/{run_id}"
    if run is None:
        return _not_found_stream(base)
    first = None
    if after is None:  # live events only, as the reference server sends (a finished run: none) ...
        async with svc.db.pool.connection() as conn:
            after = await store.last_seq(conn, str(run["run_id"]))
            if run["status"] in ACTIVE:  # ... after the current attempt's metadata (run id, attempt)
                cur = await conn.execute(CURRENT_METADATA, (str(run["run_id"]),))
                row = await cur.fetchone()
                first = Event(row["seq"], row["event"], row["data"]) if row else None
    return _stream_response(
        svc,
        run,
        modes=modes,
        after=after,
        first=first,
        cancel_on_disconnect=cancel_on_disconnect,
        location=base + "/stream",
        content_location=base,
    )


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", responses=errors(404, 409))
async def cancel_run(
    thread_id: ThreadId,
    run_id: RunId,
    svc: Service,
    user: CurrentUser,
    wait: bool = False,
    action: str = "interrupt",
) -> dict[str, Any]:
    """Cancel a pending or running run."""
    if action not in ("interrupt", "rollback"):
        raise ApiError(422, "action must be 'interrupt' or 'rollback'")
    run = await owned_run(svc, user, thread_id, run_id)
    if run["status"] not in ACTIVE:
        raise ApiError(404, NOTHING_TO_CANCEL)
    await svc.runs.cancel(run, action=action)
    if wait:
        await svc.feed.wait_terminal(str(run["run_id"]))
    return {}


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204, responses=errors(404, 409))
async def delete_run(thread_id: ThreadId, run_id: RunId, svc: Service, user: CurrentUser) -> Response:
    """Delete a run's record; a pending or running run is first cancelled with rollback (its checkpoints go)."""
    run = await owned_run(svc, user, thread_id, run_id)
    if run["status"] in ACTIVE:
        await svc.runs.cancel(run, action="rollback")
        try:
            row = await asyncio.wait_for(svc.feed.wait_terminal(str(run["run_id"])), DELETE_WAIT_S)
        except TimeoutError:
            raise ApiError(409, f"The run did not stop within {DELETE_WAIT_S:.0f} s; try again") from None
        if row is None:  # rolled back: the run is gone already
            return Response(status_code=204)
    async with svc.db.pool.connection() as conn, conn.transaction():
        await store.delete_run(conn, run["run_id"])
    return Response(status_code=204)


# -------------------------------------------------------------------------------------------- stateless


@router.post("/runs", responses=errors(400, 413))
async def create_stateless(
    body: RunCreate, svc: Service, user: CurrentUser, response: Response
) -> dict[str, Any]:
    """Start a run on a temporary thread, in the background."""
    run = await svc.runs.create(user, None, _background(body))
    response.headers["content-location"] = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
    return run_json(run)


@router.post("/runs/wait", responses=errors(400, 413))
async def wait_stateless(body: RunCreate, svc: Service, user: CurrentUser) -> StreamingResponse:
    """Run on a temporary thread and answer with its final values."""
    run, _, expected = await _create_foreground(svc, user, None, _foreground(body), stream=False)
    base = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
    return _wait_response(
        svc,
        run,
        cancel_on_disconnect=body.on_disconnect == "cancel",
        headers=_wait_links(base),
        expected=expected,
    )


@router.post(
    "/runs/stream",
    response_class=EventStream,
    responses={**SSE_EVENTS, **errors(401, 400, 413, 422, stream=True)},
)
async def stream_stateless(body: RunCreate, svc: Service, user: CurrentUser) -> StreamingResponse:
    """Run on a temporary thread and stream its events."""
    run, follower, _ = await _create_foreground(svc, user, None, _foreground(body), stream=True)
    base = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
    # No Location: the temporary thread may be gone when a reconnect arrives.
    return _stream_response(
        svc,
        run,
        follower=follower,
        cancel_on_disconnect=body.on_disconnect == "cancel",
        location=None,
        content_location=base,
    )


@router.post("/runs/batch", responses=errors(400, 413))
async def create_batch(
    body: Annotated[list[RunCreate], Body(min_length=1, max_length=MAX_BATCH)],
    svc: Service,
    user: CurrentUser,
) -> list[dict[str, Any]]:
    """Start several runs, each on its own temporary thread, in the background: all of them or none."""
    async with svc.db.pool.connection() as conn, conn.transaction():
        runs = [await svc.runs.create_in(conn, user, None, _background(b)) for b in body]
    return [run_json(r) for r in runs]


class RunsCancel(_Body):
    status: str | None = None
    thread_id: str | None = None
    run_ids: list[str] | None = Field(None, max_length=1000)


@router.post("/runs/cancel", status_code=204, responses=errors(400, 404, 413))
async def cancel_many(
    body: RunsCancel, svc: Service, user: CurrentUser, action: str = "interrupt"
) -> Response:
    """Cancel the caller's runs: `thread_id` + `run_ids`, or every run of a `status` (pending, running, all)."""
    if action not in ("interrupt", "rollback"):
        raise ApiError(422, "action must be 'interrupt' or 'rollback'")
    if body.status is not None:
        status = body.status.lower()
        if status not in ("pending", "running", "all"):
            raise ApiError(422, "Invalid status: must be 'pending', 'running', or 'all'")
        if body.thread_id or body.run_ids:
            raise ApiError(422, "When providing a 'status', 'thread_id' and 'run_ids' must be omitted.")
        statuses = list(ACTIVE) if status == "all" else [status]
        async with svc.db.pool.connection() as conn:
            runs = await store.fetchall(conn, store.USER_RUNS_WITH_STATUS, (user.id, statuses))
    else:
        if body.thread_id is None or body.run_ids is None:
            raise ApiError(422, "Must provide either a status or both 'thread_id' and 'run_ids'")
        row = await owned_thread(svc, user, body.thread_id)
        rids = [parse_uuid(r, "run") for r in body.run_ids]
        async with svc.db.pool.connection() as conn:
            runs = await store.fetchall(conn, store.THREAD_RUNS_BY_ID, (row["thread_id"], rids))
    if not runs:
        raise ApiError(404, "No runs found to cancel.")
    active = [r for r in runs if r["status"] in ACTIVE]
    if not active:
        raise ApiError(404, NOTHING_TO_CANCEL)
    for run in active:
        await svc.runs.cancel(run, action=action)
    return Response(status_code=204)
