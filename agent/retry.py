"""Which errors are worth retrying inside a node (transient) and which must fail fast."""

from __future__ import annotations

from langgraph.types import RetryPolicy

_TRANSIENT_NAMES = {
    # Provider SDK errors, matched by name so no provider package is imported here.
    "APIConnectionError",
    "APITimeoutError",
    "RateLimitError",
    "InternalServerError",
    "ServiceUnavailableError",
    "OverloadedError",
    "ReadTimeout",
    "ConnectTimeout",
    "RemoteProtocolError",
    # Database connection drops (psycopg), which the pool heals on the next attempt.
    "OperationalError",
    "PoolTimeout",
}


def is_transient(exc: BaseException) -> bool:
    """True for network errors, timeouts, HTTP 429/5xx; False for bugs and bad input."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if type(exc).__name__ in _TRANSIENT_NAMES:
        return True
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    if isinstance(status, int) and (status == 429 or status >= 500):
        return True
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return False


# Model calls: a few quick retries with backoff for transient provider errors only.
MODEL_RETRY = RetryPolicy(
    initial_interval=0.5,
    backoff_factor=2.0,
    max_interval=8.0,
    max_attempts=3,
    jitter=True,
    retry_on=is_transient,
)
# Store reads: the pool recycles broken connections, so one retry rides over a dropped connection.
STORE_RETRY = RetryPolicy(
    initial_interval=0.2,
    backoff_factor=2.0,
    max_interval=2.0,
    max_attempts=3,
    jitter=True,
    retry_on=is_transient,
)
