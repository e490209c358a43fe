"""Which web pages may drive this server from a browser: CORS plus a guard against cross-site requests.

CORS alone only stops a page from *reading* responses. A "simple" cross-site request (a form post, or a
`text/plain` body, which Keel parses as JSON for LangGraph Studio) is sent by the browser without a
preflight and would still start a run. So a request that carries an `Origin` header from a page that is
neither allowed (KEEL_CORS_ORIGINS) nor the server's own origin is refused with 403 before it reaches a
route. Clients that are not browsers send no `Origin` and are unaffected; API keys still apply to them.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import send_error


def origin_regex(patterns: list[str]) -> str | None:
    """One regular expression for the allowed origins; None when every origin is allowed ("*").

    In a pattern, `*` stands for one host or port part: `http://localhost:*`, `https://*.example.com`.
    """
    if "*" in patterns:
        return None
    parts = ["[A-Za-z0-9.-]*".join(re.escape(piece) for piece in p.lower().split("*")) for p in patterns]
    return "|".join(f"(?:{p})" for p in parts) or "(?!)"


def same_origin(origin: str, host: str | None) -> bool:
    """A page served by this server itself (the Origin's host:port is the request's Host)."""
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return False
    return bool(host) and netloc == (host or "").lower()


class OriginGuard:
    """ASGI middleware: 403 for browser requests (preflights included) from origins that are not allowed."""

    def __init__(self, app: ASGIApp, patterns: list[str]) -> None:
        self.app = app
        rx = origin_regex(patterns)
        self.allow_all = rx is None
        self.rx = re.compile(rx) if rx is not None else None

    def allowed(self, origin: str) -> bool:
        return self.allow_all or bool(self.rx and self.rx.fullmatch(origin.lower()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allow_all:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"origin")
        if raw is None:
            await self.app(scope, receive, send)
            return
        origin = raw.decode("latin-1").strip()
        host = headers.get(b"host", b"").decode("latin-1")
        # "null" is the origin of sandboxed frames and file:// pages: never trusted.
        if origin != "null" and (self.allowed(origin) or same_origin(origin, host)):
            await self.app(scope, receive, send)
            return
        detail = (
            f"Origin {origin[:200]!r} is not allowed to call this server (set KEEL_CORS_ORIGINS to allow it)"
        )
        await send_error(send, 403, detail, [(b"vary", b"Origin")])
