"""Errors in the LangGraph Server API shape: `{"detail": "..."}` with the right status code."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"detail": str}`."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            msg = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return JSONResponse({"detail": f"Malformed JSON body: {msg}".rstrip(": ")}, status_code=400)
        parts = [f"{_loc(e)}: {e.get('msg', 'invalid')}" for e in errors[:5]]
        return JSONResponse({"detail": "Invalid request: " + "; ".join(parts)}, status_code=422)


class BodyGuard:
    """ASGI middleware: cap request bodies (413) and accept JSON sent as text/plain (LangGraph Studio does)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
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
            scope["headers"] = [(k, b"application/json" if k == b"content-type" else v)
                                for k, v in scope["headers"]]
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
        body = orjson.dumps({"detail": f"Request body too large (limit {self.max_bytes} bytes)"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(StarletteHTTPException):
    """Raised from `receive` when a streamed body passes the limit.

    An HTTPException, so FastAPI's body parsing re-raises it (any other exception becomes a 400
    "error parsing the body") and the handler above answers 413 `{"detail"}`.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body too large (limit {max_bytes} bytes)")
