"""MCP endpoints: the tool registry over streamable HTTP at /mcp (in `keel serve`) and over stdio (`keel mcp`).

HTTP callers authenticate like API callers (Bearer or x-api-key from KEEL_API_KEYS): with keys configured,
every /mcp request without a valid one is refused with 401. stdio runs as the local user of the machine
that started it. Both go through the same policies, ledger and audit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.auth import LOCAL_USER, User, user_for
from server.errors import ApiError
from server.settings import Settings
from tools.policy import UserAttrs
from tools.registry import ToolContext

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from server.service import KeelService

# JSON-RPC "Invalid Request" (mcp_types.INVALID_REQUEST), here so the MCP SDK is not imported to refuse a key.
INVALID_REQUEST = -32600


def _context(svc: KeelService, user: User) -> ToolContext:
    return ToolContext(
        user=UserAttrs(user.id, frozenset(user.roles), user.tenant),
        namespace=svc.settings.keel_namespace,
        store=svc.db.store,
        thread_id=f"mcp-{user.id}",
        pool=svc.toolbox.pool,
        settings=svc.toolbox.settings,
    )


def mount_mcp(app: FastAPI, settings: Settings) -> LazyMcp:
    """Add POST/GET/DELETE /mcp to the app; returns what the lifespan must run (`async with x.run()`).

    The MCP SDK (its ~1,000 pydantic models: about a second of `keel serve` start-up and tens of MB) is
    imported and the endpoint built at the first /mcp request, not at start."""
    mcp = LazyMcp(app, settings)
    app.router.routes.append(Route("/mcp", endpoint=KeyRequired(mcp, app)))
    return mcp


class LazyMcp:
    """The streamable-HTTP MCP endpoint, built at its first request, and its session manager, run from then
    until the app's lifespan ends in a task of its own (the SDK's task group must be entered and left by
    one task)."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._endpoint: Any = None
        self._lock = asyncio.Lock()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def build(self) -> tuple[Any, StreamableHTTPSessionManager]:
        """(the SDK's /mcp ASGI endpoint, its session manager)."""
        from mcp.server.transport_security import TransportSecuritySettings

        from tools.mcp_server import build_mcp_server

        app = self.app

        def context_for(request: Any) -> ToolContext:
            svc = app.state.keel
            headers = getattr(request, "headers", {}) or {}
            try:
                user = user_for(
                    svc.settings.api_users, headers.get("authorization"), headers.get("x-api-key")
                )
            except ApiError as exc:
                raise PermissionError(exc.detail) from None
            return _context(svc, user)

        # The service (and its toolbox) starts with the app's lifespan: look the registry up per request.
        server = build_mcp_server(
            lambda: app.state.keel.toolbox.registry,
            context_for,
            allow_approval=self.settings.keel_mcp_approval,
        )
        # With API keys, every call is authenticated; without them (local mode) keep DNS-rebinding protection,
        # so a web page in the user's browser cannot drive the local server through a rebound host name.
        security = (
            TransportSecuritySettings(enable_dns_rebinding_protection=False)
            if self.settings.api_users
            else None
        )
        mcp_app = server.streamable_http_app(
            streamable_http_path="/mcp", stateless_http=True, json_response=True, transport_security=security
        )
        routes = [r for r in mcp_app.routes if isinstance(r, Route) and r.path == "/mcp"]
        if len(routes) != len(mcp_app.routes) or len(routes) != 1:
            # the SDK serves /mcp as one plain Route; anything else would skip the gate
            raise TypeError(f"unexpected routes from the MCP SDK: {mcp_app.routes!r}")
        return routes[0].endpoint, server.session_manager

    async def _endpoint_ready(self) -> Any:
        async with self._lock:
            if self._endpoint is None:
                if self._stop is None or self._stop.is_set():
                    raise RuntimeError(
                        "the MCP endpoint is not running (the app is not started or is stopping)"
                    )
                endpoint, sessions = self.build()
                ready = asyncio.Event()
                self._task = asyncio.create_task(self._serve(sessions, ready, self._stop))
                waiter = asyncio.create_task(ready.wait())
                await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if not ready.is_set():
                    self._task.result()  # the session manager failed to start: raise its error
                self._endpoint = endpoint
            return self._endpoint

    @staticmethod
    async def _serve(
        sessions: StreamableHTTPSessionManager, ready: asyncio.Event, stop: asyncio.Event
    ) -> None:
        async with sessions.run():
            ready.set()
            await stop.wait()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint = await self._endpoint_ready()
        await endpoint(scope, receive, send)

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """While the app runs: /mcp may be built; at the end its session manager (if started) stops."""
        self._stop = asyncio.Event()
        try:
            yield
        finally:
            self._stop.set()
            task, self._task, self._endpoint = self._task, None, None
            if task is not None:
                await task


class KeyRequired:
    """ASGI gate in front of /mcp: with API keys configured, every request (initialize, tools/list, tools/call,
    GET, DELETE) needs a valid one, or gets 401 before the MCP server sees it.

    The body is a JSON-RPC error, the shape the MCP SDK answers its own HTTP errors with (its client surfaces
    the message), and carries `detail` like every other Keel error.
    """

    def __init__(self, inner: Any, app: FastAPI) -> None:
        self.inner = inner
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        keys = self.app.state.keel.settings.api_users
        if keys and scope["type"] == "http":
            headers = Headers(scope=scope)
            try:
                user_for(keys, headers.get("authorization"), headers.get("x-api-key"))
            except ApiError as exc:
                body = {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": INVALID_REQUEST, "message": exc.detail},
                    "detail": exc.detail,
                }
                await JSONResponse(
                    body, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="keel"'}
                )(scope, receive, send)
                return
        await self.inner(scope, receive, send)


async def serve_stdio(svc: KeelService) -> None:
    """`keel mcp`: the registry over stdin/stdout, as the local user."""
    from mcp.server.stdio import stdio_server

    from tools.mcp_server import build_mcp_server

    server = build_mcp_server(
        svc.toolbox.registry,
        lambda request: _context(svc, User(LOCAL_USER)),
        allow_approval=svc.settings.keel_mcp_approval,
    )
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
