"""Property-based fuzzing of the whole OpenAPI surface against a real `keel serve` (schemathesis).

Every operation of /openapi.json (except /mcp, which is not described there) gets generated requests,
valid and invalid, against two live servers on the real Postgres: one with no API keys (the local user)
and one with KEEL_API_KEYS set, sending its key. A response fails the test when it is a 5xx, has a status
code or content type the document does not list for that operation, or a body that breaks the documented
schema. All requests of a server share one keep-alive session, so a dropped connection fails too.

KEEL_FUZZ_EXAMPLES sets how many generated cases each operation gets in the fuzzing phase (the examples
and coverage phases add their own): small in `make test`, large in `make fuzz`. Generation is
derandomized (the same cases every run) and keeps no example database, so CI sees no flakes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.settings import Settings
from tests.support.live import live_server

EXAMPLES = int(os.environ.get("KEEL_FUZZ_EXAMPLES", "10"))
COVERAGE = os.environ.get("KEEL_FUZZ_COVERAGE", "") not in ("", "0")
KEY = "fuzz-key"
REQUEST_TIMEOUT_S = 120.0
# What RFC 9110 forbids in a header value: the HTTP server answers those itself, before Keel sees them.
HEADER_CONTROL = "".join(chr(c) for c in range(32) if c != 9) + "\x7f"
ILLEGAL_HEADER_CHARS = set(HEADER_CONTROL)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

DOCUMENT = create_app(Settings(keel_api_keys="")).openapi()
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "max-examples": EXAMPLES,
            "deterministic": True,
            "database": "none",
            # Keys are sent by the test (below), not generated: a random Authorization header is only a 401.
            "with-security-parameters": False,
            "exclude-header-characters": HEADER_CONTROL,
        },
        # The coverage phase (boundary values of every field, enumerated up front) costs about two minutes of
        # generation on two cores: `make fuzz` runs it, `make test` keeps the examples and fuzzing phases.
        "phases": {"coverage": {"enabled": COVERAGE}},
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large", "large_base_example"],
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(path_regex="^/mcp")


@dataclass
class Target:
    """A live server, the headers every request sends, and one keep-alive session."""

    url: str
    headers: dict[str, str]
    session: requests.Session


@pytest.fixture(scope="module", params=["no-keys", "api-key"])
def target(request, database_url) -> Iterator[Target]:
    keyed = request.param == "api-key"
    env = {"KEEL_API_KEYS": f"{KEY}:fuzzer:admin" if keyed else ""}
    with live_server(database_url, extra_env=env, corpus={}) as srv, requests.Session() as session:
        yield Target(srv.url, {"x-api-key": KEY} if keyed else {}, session)


def test_the_served_document_is_the_one_fuzzed(target):
    served = target.session.get(target.url + "/openapi.json", timeout=30)
    assert served.status_code == 200 and served.json() == DOCUMENT
    r = target.session.post(target.url + "/threads/search", json={}, timeout=30)
    if target.headers:  # keys are configured: without one, the fuzzed routes would all be 401
        assert r.status_code == 401 and r.json() == {"detail": "Missing or invalid API key"}
    else:
        assert r.status_code == 200


def _illegal_header(case) -> bool:
    return any(set(str(v)) & ILLEGAL_HEADER_CHARS for v in (case.headers or {}).values())


# Streams that stay open until the client leaves (a thread's stream follows every future run). schemathesis
# reads a whole body, so these are sent by the session with `stream=True`: a 200 is checked by its status and
# content type, then closed; any other answer is read and validated whole, like every other operation.
ENDLESS = {("GET", "/threads/{thread_id}/stream")}


# The same suppressions again as explicit settings: with CI set, hypothesis loads its "ci" profile, whose own
# suppress list (too_slow only) schemathesis merges over CONFIG's, and filter_too_much then failed GET
# /threads/{thread_id}/runs/{run_id}/stream (a Last-Event-ID header) on a loaded machine.
@schema.parametrize()
@settings(
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ]
)
def test_openapi_surface(case, target):
    if (case.method.upper(), case.path) in ENDLESS:
        kwargs = case.as_transport_kwargs(base_url=target.url, headers=target.headers)
        kwargs.pop("session", None)
        response = target.session.request(**kwargs, stream=True, timeout=REQUEST_TIMEOUT_S)
        if response.status_code == 200:
            try:
                assert response.headers["content-type"].startswith("text/event-stream"), response.headers
            finally:
                response.close()
            return
    else:
        response = case.call(
            base_url=target.url, session=target.session, headers=target.headers, timeout=REQUEST_TIMEOUT_S
        )
    if _illegal_header(case):
        # Negative cases may carry control characters in a header: the HTTP server refuses the request
        # before Keel sees it (and the document describes Keel's answers, not the HTTP parser's).
        assert response.status_code == 400, response.text
        return
    case.validate_response(response, checks=CHECKS)
