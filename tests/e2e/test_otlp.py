"""OpenTelemetry traces of a live `keel serve`, received by a local OTLP/HTTP collector (no network).

A stdlib HTTP server accepts OTLP/HTTP protobuf POSTs on /v1/traces and decodes them with opentelemetry-proto;
the server under test runs with KEEL_OTEL_ENDPOINT pointed at it. A run must arrive as a span carrying its
thread, run and assistant ids with one child span per node, and HTTP requests as server spans that continue
the caller's W3C trace context.
"""

from __future__ import annotations

import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.live import live_server

pytestmark = pytest.mark.slow

Q = {"messages": [{"role": "user", "content": "How does recovery after a crash work?"}]}


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class _Collector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        spans = []
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        {
                            "name": s.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "attrs": {a.key: _value(a.value) for a in s.attributes},
                            "service": resource.get("service.name"),
                            "status": s.status.code,
                        }
                    )
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.spans.extend(spans)  # type: ignore[attr-defined]
        data = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def collector():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    srv.spans = []  # type: ignore[attr-defined]
    srv.lock = threading.Lock()  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def spans_of(collector) -> list[dict[str, Any]]:
    with collector.lock:
        return list(collector.spans)


def wait_for(predicate, timeout: float = 30.0, what: str = "spans") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(database_url, collector):
    env = {
        "KEEL_OTEL_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
        "OTEL_SERVICE_NAME": "keel-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the SDK's batch delay (ms): spans arrive promptly
    }
    with live_server(database_url, extra_env=env) as srv:
        yield srv


def test_a_run_and_its_nodes_arrive_as_spans(server, collector):
    trace_id = uuid.uuid4().hex
    caller = {"traceparent": f"00-{trace_id}-{'ab' * 8}-01"}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        tid = c.post("/threads", json={}).json()["thread_id"]
        r = c.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": Q}, headers=caller)
        assert r.status_code == 200, r.text
        rid = c.get(f"/threads/{tid}/runs").json()[0]["run_id"]
        aid = c.get("/assistants/agent").json()["assistant_id"]

    def run_and_nodes() -> tuple[dict, list[dict]] | None:
        spans = spans_of(collector)
        runs = [s for s in spans if s["attrs"].get("keel.run_id") == rid and s["name"] == "run agent"]
        if not runs:
            return None
        nodes = [s for s in spans if s["parent"] == runs[0]["span_id"]]
        names = {n["attrs"].get("langgraph.node") for n in nodes}
        return (runs[0], nodes) if {"retrieve", "summarize", "critique"} <= names else None

    run, nodes = wait_for(run_and_nodes, what=f"the spans of run {rid}\n{server.log()[-3000:]}")
    assert run["attrs"]["keel.thread_id"] == tid
    assert run["attrs"]["keel.assistant_id"] == aid
    assert run["attrs"]["keel.graph_id"] == "agent"
    assert run["attrs"]["keel.outcome"] == "success"
    assert run["service"] == "keel-e2e"
    assert run["parent"] == ""  # a run is its own trace: a worker may run it long after the request
    for node in nodes:
        assert node["trace_id"] == run["trace_id"]
        assert node["name"] == f"node {node['attrs']['langgraph.node']}"
        assert node["attrs"]["keel.run_id"] == rid and node["attrs"]["keel.thread_id"] == tid
        assert not node["attrs"]["langgraph.node"].startswith("__")

    def http_span() -> dict | None:
        return next(
            (
                s
                for s in spans_of(collector)
                if s["name"] == "POST /threads/{thread_id}/runs/wait" and s["trace_id"] == trace_id
            ),
            None,
        )

    span = wait_for(http_span, what="the HTTP span of POST /runs/wait")
    assert span["parent"] == "ab" * 8  # continues the caller's trace (W3C traceparent)
    assert span["attrs"]["http.route"] == "/threads/{thread_id}/runs/wait"
    assert span["attrs"]["http.response.status_code"] == 200
    assert span["attrs"]["url.path"] == f"/threads/{tid}/runs/wait"
