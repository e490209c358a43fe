"""An unexpected error inside `keel serve` is a complete JSON 500, logged once, on a connection that stays usable.

The server runs a graph whose state has a callable field (tests/support/broken_schema_graph.py), so
GET /assistants/{id}/schemas genuinely fails inside the server (pydantic cannot render the schema): no
mock, no injected fault. Before the catch-all, Starlette answered a text 500 and the server then dropped
the keep-alive connection without `Connection: close`, so a pooled client's next request failed.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.live import REPO, live_server

BROKEN = {
    "KEEL_GRAPH": "tests.support.broken_schema_graph:builder",
    "KEEL_API_KEYS": "",
    "PYTHONPATH": str(REPO),
}


@pytest.fixture(scope="module")
def server(database_url):
    with live_server(database_url, extra_env=BROKEN, corpus={}) as srv:
        yield srv


def local_port(response: httpx.Response) -> int:
    """The client-side port of the connection that carried `response`."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def wait_for_log(srv, needle: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (log := srv.log()):
        assert time.monotonic() < deadline, f"{needle!r} never appeared in the server log:\n{log}"
        time.sleep(0.05)
    return log


def test_a_500_is_json_and_the_pooled_connection_carries_the_next_request(server):
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=server.url, limits=limits, timeout=30) as client:
        before = client.get("/assistants/agent")
        assert before.status_code == 200
        r = client.get("/assistants/agent/schemas")
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"detail": "Internal server error"}  # nothing of the exception leaks
        after = client.get("/assistants/agent")
        assert after.status_code == 200 and after.json()["graph_id"] == "agent"
        assert local_port(before) == local_port(r) == local_port(after), (
            "the keep-alive connection was dropped"
        )
        # Again, with a request body in flight: the error must not desynchronise the connection either.
        r = client.post("/threads", json={"metadata": {"n": 2**70}})
        assert r.status_code == 422 and local_port(r) == local_port(after)
    log = wait_for_log(server, "unhandled error in GET /assistants/agent/schemas")
    assert log.count("unhandled error in GET /assistants/agent/schemas") == 1
    assert log.count("Traceback (most recent call last)") == 1, "the traceback is logged exactly once"
    assert "pydantic.errors.PydanticInvalidForJsonSchema: Cannot generate a JsonSchema" in log
    assert "Exception in ASGI application" not in log
