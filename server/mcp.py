"""MCP endpoints: the tool registry over streamable HTTP at /mcp (in `keel serve`) and over stdio (`keel mcp`).

HTTP callers authenticate like API callers (Bearer or x-api-key from KEEL_API_KEYS): with keys configured,
every /mcp request without a valid one is refused with 401. stdio runs as the local user of the machine
that started it. Both go through the same policies, ledger and audit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from mcp_types import INVALID_REQUEST
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.auth import LOCAL_USER, User, user_for
from server.errors import ApiError
from server.settings import Settings
from tools.mcp_server import build_mcp_server
from tools.policy import UserAttrs
from tools.registry import ToolContext

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from server.service import KeelService


def _context(svc: KeelService, user: User) -> ToolContext:
    return ToolContext(
        user=UserAttrs(user.id, frozenset(user.roles), user.tenant),
        namespace=svc.settings.keel_namespace,
        store=svc.db.store,
        thread_id=f"mcp-{user.id}",
        pool=svc.toolbox.pool,
        settings=svc.toolbox.settings,
    )


def mount_mcp(app: FastAPI, settings: Settings) -> StreamableHTTPSessionManager:
    """Add POST/GET/DELETE /mcp to the app; returns the session manager the lifespan must run."""

    def context_for(request: Any) -> ToolContext:
        svc = app.state.keel
        headers = getattr(request, "headers", {}) or {}
        try:
            user = user_for(svc.settings.api_users, headers.get("authorization"), headers.get("x-api-key"))
        except ApiError as exc:
            raise PermissionError(exc.detail) from None
        return _context(svc, user)

    # The service (and its toolbox) starts with the app's lifespan, after this: look the registry up per request.
    server = build_mcp_server(
        lambda: app.state.keel.toolbox.registry, context_for, allow_approval=settings.keel_mcp_approval
    )
    from mcp.server.transport_security import TransportSecuritySettings

    # With API keys, every call is authenticated; without them (local mode) keep DNS-rebinding protection,
    # so a web page in the user's browser cannot drive the local server through a rebound host name.
    security = (
        TransportSecuritySettings(enable_dns_rebinding_protection=False) if settings.api_users else None
    )
    mcp_app = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True, transport_security=security
    )
    for route in mcp_app.routes:
        if not isinstance(
            route, Route
        ):  # the SDK serves /mcp as a plain Route; anything else would skip the gate
            raise TypeError(f"unexpected route from the MCP SDK: {route!r}")
        app.router.routes.append(Route(route.path, endpoint=KeyRequired(route.endpoint, app)))
    return server.session_manager


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

    server = build_mcp_server(
        svc.toolbox.registry,
        lambda request: _context(svc, User(LOCAL_USER)),
        allow_approval=svc.settings.keel_mcp_approval,
    )
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
