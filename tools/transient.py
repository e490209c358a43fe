"""Keel's one transient-error classifier: which failures are worth trying again a moment later.

A transient failure says nothing about the work itself: the network dropped, something timed out, a provider
is rate limiting or failing (HTTP 429 or 5xx), or the database is unreachable, lost a connection, picked the
transaction as a deadlock or serialization victim, or its pool is starved or closing. Bugs and bad input are
not transient: retrying them only repeats the failure.

Every retry in Keel asks `is_transient`: a tool's `ToolRetry` (tools.registry), a node's `RetryPolicy`
(agent.retry), and the server's handling of database outages (server.db.is_transient_error, which asks it
about the database's own errors only). It sits in `tools`, the lowest layer that retries, so every layer
above can import it.
"""

from __future__ import annotations

import httpx
import psycopg

TRANSIENT_NAMES = frozenset(
    {
        # Raised by a tool for a failure worth retrying (tools.registry.TransientToolError).
        "TransientToolError",
        # Provider SDK errors, matched by name so no provider package is imported here.
        "APIConnectionError",
        "APITimeoutError",
        "RateLimitError",
        "InternalServerError",
        "ServiceUnavailableError",
        "OverloadedError",
        # HTTP client errors of any httpx flavour (httpx's own are `httpx.TransportError`s anyway).
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "RemoteProtocolError",
        # Database errors of any driver (psycopg's are DATABASE_ERRORS below).
        "OperationalError",
        "PoolTimeout",
    }
)
"""Class names of errors that are transient wherever they come from."""

DATABASE_ERRORS: tuple[type[psycopg.Error], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
"""Postgres unreachable or a connection lost mid-way (OperationalError, InterfaceError), a deadlock or a
serialization failure (OperationalErrors too), and the pool starved or closing (psycopg_pool's PoolTimeout and
PoolClosed are OperationalErrors)."""


def is_transient(exc: BaseException) -> bool:
    """True for network errors, timeouts, HTTP 429/5xx and transient database errors; False for bugs and bad
    input."""
    if isinstance(exc, (ConnectionError, TimeoutError, httpx.TransportError, *DATABASE_ERRORS)):
        return True
    if type(exc).__name__ in TRANSIENT_NAMES:
        return True
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


__all__ = ["DATABASE_ERRORS", "TRANSIENT_NAMES", "is_transient"]
