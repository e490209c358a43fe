"""Which web pages may drive this server from a browser: CORS plus a guard against cross-site requests.

CORS alone only stops a page from *reading* responses. A "simple" cross-site request (a form post, or a
`text/plain` body, which Keel parses as JSON for LangGraph Studio) is sent by the browser without a
preflight and would still start a run. So a request that carries an `Origin` header from a page that is
neither allowed (KEEL_CORS_ORIGINS) nor the server's own origin is refused with 403 before it reaches a
route. Clients that are not browsers send no `Origin` and are unaffected; API keys still apply to them.

With no API keys (local mode) the `Host` must also be this machine's (or one of KEEL_ALLOWED_HOSTS): a page
whose host name an attacker re-points at 127.0.0.1 (DNS rebinding) is "same origin" to the browser, and
would otherwise read and start runs with nothing to stop it.
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


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(host: str) -> str | None:
    """The name in a Host header, without the port (IPv6 without brackets); None if it does not parse."""
    try:
        return urlsplit("//" + host).hostname
    except ValueError:
        return None


def same_origin(origin: str, host: str | None) -> bool:
    """A page served by this server itself (the Origin's host:port is the request's Host)."""
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return False
    return bool(host) and netloc == (host or "").lower()


class OriginGuard:
    """ASGI middleware: 403 for browser requests (preflights included) from origins that are not allowed."""

    def __init__(self, app: ASGIApp, patterns: list[str], hosts: list[str] | None = None) -> None:
        """`hosts`: the only Host names served (local mode); None serves any (API keys protect the server)."""
        self.app = app
        rx = origin_regex(patterns)
        self.allow_all = rx is None
        self.rx = re.compile(rx) if rx is not None else None
        self.hosts = None if hosts is None or "*" in hosts else {h.lower().strip("[]") for h in hosts}

    def allowed(self, origin: str) -> bool:
        return self.allow_all or bool(self.rx and self.rx.fullmatch(origin.lower()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.hosts is not None and b"host" in headers:
            name = host_name(headers[b"host"].decode("latin-1"))
            if name is None or name.lower() not in self.hosts:
                detail = (
                    f"Host {headers[b'host'].decode('latin-1')[:200]!r} is not served without API keys "
                    "(set KEEL_ALLOWED_HOSTS, or KEEL_API_KEYS)"
                )
                await send_error(send, 403, detail)
                return
        if self.allow_all:
            await self.app(scope, receive, send)
            return
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
