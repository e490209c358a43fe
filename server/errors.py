"""Errors in the LangGraph Server API shape: `{"detail": "..."}` with the right status code.

Also the edge's input rule (`check_input`) and the last resort for unexpected exceptions (`CatchAll`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.db import is_transient_error
from server.serde import unstorable

log = logging.getLogger("keel")

INTERNAL_ERROR = "Internal server error"
DB_UNAVAILABLE = "The database is unavailable at the moment; retry shortly"
READ_RETRY_S = 10.0  # how long a read-only request keeps trying through a Postgres restart


class ApiError(Exception):
    """Raise from anywhere in the server to answer with `status` and `{"detail": detail}`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def not_found(what: str, ident: Any) -> ApiError:
    return ApiError(404, f"{what} with ID {ident} not found")


def parse_uuid(value: str, what: str) -> str:
    """Canonical UUID text, or 422 the way langgraph-api words it."""
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, AttributeError, TypeError):
        raise ApiError(422, f"Invalid {what} ID: must be a UUID") from None


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "body"


def _safe(detail: Any) -> str:
    """Detail text that always encodes (an echoed lone surrogate would make the error response itself fail)."""
    text = detail if isinstance(detail, str) else str(detail)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": _safe(detail)}, status_code=status, headers=headers)


async def check_input(request: Request) -> None:
    """422 naming the field when a path or query parameter or the JSON body holds what cannot be stored.

    A dependency of every router, solved before the handler runs (and after FastAPI parsed the body, whose
    result Starlette caches), so a NUL, a lone surrogate, a 65-bit integer, NaN or 65 levels of nesting are
    refused before anything is written.
    """
    for where, items in (
        ("path", request.path_params.items()),
        ("query", request.query_params.multi_items()),
    ):
        for name, value in items:
            problem = unstorable({name: value}, where)
            if problem:
                raise ApiError(422, problem)
    if getattr(request.scope.get("route"), "body_field", None) is None:
        return
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # empty or not JSON: FastAPI's validation answers for it
        return
    problem = unstorable(body)
    if problem:
        raise ApiError(422, problem)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"detail": str}`, unexpected ones included (see CatchAll)."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            msg = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return error_response(400, f"Malformed JSON body: {msg}".rstrip(": "))
        parts = [f"{_loc(e)}: {e.get('msg', 'invalid')}" for e in errors[:5]]
        return error_response(422, "Invalid request: " + "; ".join(parts))

    app.add_middleware(CatchAll)


class CatchAll:
    """ASGI middleware: an exception no handler took still gets a complete `{"detail"}` response.

    Starlette's ServerErrorMiddleware answers a plain-text 500 and re-raises, and the server then drops the
    keep-alive connection without `Connection: close`, so a pooled client's next request fails. Here the
    exception is logged once, with its traceback, and answered in full; the connection stays usable. Once a
    response has started (a stream), only closing the connection can tell the client it is incomplete, so
    the exception goes on.

    Postgres restarting (or a connection cut at that instant) is not a bug: a request that only reads is
    tried again for a few seconds, and what still fails answers 503 with Retry-After, never a bare 500.
    Requests that write retry where they know it is safe (run creation) and otherwise get the 503.
    """

    def __init__(self, app: ASGIApp, retry_s: float = READ_RETRY_S) -> None:
        self.app = app
        self.retry_s = retry_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replay: list[Message] | None = None
        if _reads_only(scope):
            replay = []  # the body (bounded by BodyGuard), kept so the request can be tried again
            while True:
                message = await receive()
                replay.append(message)
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
        deadline = time.monotonic() + self.retry_s
        for attempt in itertools.count(1):
            started = False

            async def sending(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                await send(message)

            try:
                await self.app(scope, _replaying(replay, receive) if replay is not None else receive, sending)
                return
            except Exception as exc:
                if started:
                    raise
                if is_transient_error(exc):
                    if replay is not None and time.monotonic() < deadline:
                        log.warning(
                            "database unavailable during %s %s (%s); trying again",
                            scope.get("method"),
                            scope.get("path"),
                            " ".join(str(exc).split())[:200],
                        )
                        await asyncio.sleep(min(0.1 * 2**attempt, 1.0))
                        continue
                    log.warning(
                        "database unavailable during %s %s: %s",
                        scope.get("method"),
                        scope.get("path"),
                        " ".join(str(exc).split())[:200],
                    )
                    response = error_response(503, DB_UNAVAILABLE, {"retry-after": "1"})
                elif isinstance(exc, StarletteHTTPException):
                    response = error_response(exc.status_code, exc.detail, getattr(exc, "headers", None))
                else:
                    log.error(
                        "unhandled error in %s %s", scope.get("method"), scope.get("path"), exc_info=exc
                    )
                    response = error_response(500, INTERNAL_ERROR)
                await response(scope, receive, send)
                return


# Routes that change nothing, whatever their method: safe to run again after a lost connection.
_READ_ONLY_POST = re.compile(r".*/(search|count|history|namespaces|state/checkpoint)")


def _reads_only(scope: Scope) -> bool:
    method = scope.get("method")
    return method in ("GET", "HEAD") or (
        method == "POST" and bool(_READ_ONLY_POST.fullmatch(scope.get("path", "")))
    )


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that hands out the buffered body again, then waits on the real one (for a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


class BodyGuard:
    """ASGI middleware: cap request bodies (413) and accept JSON sent as text/plain (LangGraph Studio does)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # every method: a GET with an endless body must not buy unbounded memory
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        ctype = headers.get(b"content-type", b"")
        if ctype.startswith(b"text/plain"):
            scope = dict(scope)
            scope["headers"] = [
                (k, b"application/json" if k == b"content-type" else v) for k, v in scope["headers"]
            ]
        seen = 0

        async def guarded() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return msg

        try:
            await self.app(scope, guarded, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        await send_error(send, 413, f"Request body too large (limit {self.max_bytes} bytes)")


async def send_error(
    send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """An error response in the `{"detail"}` shape, sent straight from ASGI middleware (before any route)."""
    body = orjson.dumps({"detail": detail})
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(StarletteHTTPException):
    """Raised from `receive` when a streamed body passes the limit.

    An HTTPException, so FastAPI's body parsing re-raises it (any other exception becomes a 400
    "error parsing the body") and the handler above answers 413 `{"detail"}`.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body too large (limit {max_bytes} bytes)")
