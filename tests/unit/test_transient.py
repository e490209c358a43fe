"""One transient-error classifier: node retries, tool retries and the server's database handling agree."""

from __future__ import annotations

import httpx
import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg_pool import PoolClosed, PoolTimeout

from agent.retry import MODEL_RETRY, STORE_RETRY
from server.db import is_transient_error
from tools.registry import ToolRetry, TransientToolError


class _Provider(Exception):
    """An error carrying an HTTP status, as provider SDKs raise them."""

    def __init__(self, status: int, *, on_response: bool = False) -> None:
        super().__init__(f"HTTP {status}")
        if on_response:
            self.response = httpx.Response(status)
        else:
            self.status_code = status


def _named(name: str) -> Exception:
    return type(name, (Exception,), {})(name)


DATABASE = [
    psycopg.OperationalError("server closed the connection unexpectedly"),
    psycopg.InterfaceError("the connection is lost"),
    PoolTimeout("couldn't get a connection after 30.00 sec"),
    PoolClosed("the pool is closed"),
    pg_errors.SerializationFailure("could not serialize access"),
    pg_errors.DeadlockDetected("deadlock detected"),
]
OTHER_TRANSIENT = [
    ConnectionError("reset by peer"),
    TimeoutError(),
    TransientToolError("rate limited"),
    httpx.ConnectError("refused"),
    httpx.ReadTimeout("slow"),
    httpx.RemoteProtocolError("peer closed"),
    _named("RateLimitError"),
    _named("APIConnectionError"),
    _named("OverloadedError"),
    _Provider(503),
    _Provider(429, on_response=True),
]
PERMANENT = [
    ValueError("bad request"),
    KeyError("x"),
    _Provider(400),
    _Provider(404, on_response=True),
    pg_errors.UniqueViolation("duplicate key"),
    psycopg.ProgrammingError("syntax error"),
]


def _retries() -> dict[str, object]:
    return {"model": MODEL_RETRY.retry_on, "store": STORE_RETRY.retry_on, "tool": ToolRetry().retry_on}


def test_every_retry_asks_the_same_classifier():
    assert len({id(f) for f in _retries().values()}) == 1


@pytest.mark.parametrize("exc", DATABASE + OTHER_TRANSIENT, ids=repr)
def test_transient_errors_are_retried_by_nodes_and_tools(exc):
    assert {name: f(exc) for name, f in _retries().items()} == {"model": True, "store": True, "tool": True}


@pytest.mark.parametrize("exc", PERMANENT, ids=repr)
def test_permanent_errors_fail_fast_everywhere(exc):
    assert {name: f(exc) for name, f in _retries().items()} == {"model": False, "store": False, "tool": False}
    assert is_transient_error(exc) is False


@pytest.mark.parametrize("exc", DATABASE, ids=repr)
def test_the_database_s_transient_errors_make_the_server_wait(exc):
    assert is_transient_error(exc) is True


@pytest.mark.parametrize("exc", OTHER_TRANSIENT, ids=repr)
def test_other_transient_errors_are_not_the_database_s(exc):
    """A provider's 429 or a network timeout must not hand a run back as 'database unavailable'."""
    assert is_transient_error(exc) is False
