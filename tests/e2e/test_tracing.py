"""LangSmith tracing and structured logs of a live `keel serve`, captured locally (no network).

A stdlib HTTP server stands in for LangSmith (GET /info, POST /runs/multipart); the server under test
runs with LANGSMITH_TRACING=true pointed at it, and with KEEL_LOG_JSON=true so its log is JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from langgraph_sdk import get_client

from tests.support.live import live_server as _live_server

pytestmark = pytest.mark.slow

PROJECT = "keel-ci"
API_KEY = "test-key"
QUESTION = "How does recovery after a crash work?"


class _Capture(BaseHTTPRequestHandler):
    """Records every request; answers /info like a LangSmith without batch_ingest_config."""

    def _reply(self, code: int = 200, obj: Any = None) -> None:
        data = json.dumps(obj or {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.requests.append((self.command, self.path, dict(self.headers), body))  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._record()
        self._reply(200, {"version": "test"} if self.path.startswith("/info") else {})

    def do_POST(self) -> None:
        self._record()
        self._reply(202)

    do_PATCH = do_POST
    do_PUT = do_POST

    def log_message(self, *args: Any) -> None:
        pass


def parse_runs(requests: list[tuple[str, str, dict[str, str], bytes]]) -> dict[str, dict[str, Any]]:
    """Runs by id, merging post/patch parts (multipart) and batch bodies."""
    runs: dict[str, dict[str, Any]] = {}
    for method, path, headers, body in requests:
        if method != "POST":
            continue
        h = {k.lower(): v for k, v in headers.items()}
        if path.startswith("/runs/multipart"):
            msg = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + h["content-type"].encode() + b"\r\n\r\n" + body
            )
            for part in msg.iter_parts():
                name = re.search(r'name="([^"]+)"', part["Content-Disposition"]).group(1)
                _op, rid, *fld = name.split(".")
                val = json.loads(part.get_payload(decode=True))
                d = runs.setdefault(rid, {})
                if fld:
                    d[fld[0]] = val
                else:
                    d.update({k: v for k, v in val.items() if v is not None or k not in d})
        elif path.startswith("/runs/batch"):
            data = json.loads(body)
            for r in [*data.get("post", []), *data.get("patch", [])]:
                runs.setdefault(str(r["id"]), {}).update({k: v for k, v in r.items() if v is not None})
    return runs


@pytest.fixture(scope="module")
def capture():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    srv.requests = []  # type: ignore[attr-defined]
    srv.lock = threading.Lock()  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def traced_server(database_url, capture):
    env = {
        "LANGSMITH_TRACING": "true",
        "LANGSMITH_ENDPOINT": f"http://127.0.0.1:{capture.server_address[1]}",
        "LANGSMITH_API_KEY": API_KEY,
        "LANGSMITH_PROJECT": PROJECT,
        "KEEL_LOG_JSON": "true",
    }
    with _live_server(database_url, extra_env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
async def traced_run(traced_server) -> dict[str, Any]:
    """One run on a thread: its ids and final values."""
    client = get_client(url=traced_server.url, api_key=None)
    try:
        tid = (await client.threads.create(metadata={"suite": "tracing"}))["thread_id"]
        created: list[dict] = []
        values = await client.runs.wait(
            tid,
            "agent",
            input={"messages": [{"role": "user", "content": QUESTION}]},
            on_run_created=created.append,
        )
        runs = await client.runs.list(tid)
    finally:
        await client.aclose()
    assert values["status"] == "done", values
    assert created and [r["run_id"] for r in runs] == [created[0]["run_id"]]
    return {"thread_id": tid, "run_id": created[0]["run_id"], "values": values}


def _snapshot(capture) -> list[tuple[str, str, dict[str, str], bytes]]:
    with capture.lock:
        return list(capture.requests)


async def test_langsmith_trace_of_a_run(capture, traced_server, traced_run):
    rid, tid = traced_run["run_id"], traced_run["thread_id"]
    deadline = time.monotonic() + 20
    runs: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        runs = parse_runs(_snapshot(capture))
        if runs.get(rid, {}).get("end_time") and all(
            r.get("end_time") for r in runs.values() if r.get("parent_run_id") == rid
        ):
            break
        await asyncio.sleep(0.25)
    assert rid in runs, (
        f"no root run {rid} captured; runs: {[(r.get('name'), k) for k, r in runs.items()]}\n"
        f"server log:\n{traced_server.log()[-3000:]}"
    )
    root = runs[rid]
    assert root.get("end_time"), root
    assert root["name"] == "agent"
    assert root.get("run_type") == "chain"
    assert root.get("parent_run_id") in (None, "")
    assert str(root.get("trace_id")) == rid
    assert root["session_name"] == PROJECT

    meta = root["extra"]["metadata"]
    assert meta["thread_id"] == tid
    assert meta["run_id"] == rid
    assert meta["user_id"] == "local"
    assert meta.get("graph_id") == "agent"

    children = {r["name"]: r for r in runs.values() if r.get("parent_run_id") == rid}
    assert {"retrieve", "summarize", "critique"} <= set(children), sorted(children)
    for name in ("retrieve", "summarize", "critique"):
        child = children[name]
        assert child["session_name"] == PROJECT
        assert child.get("end_time"), child
        assert str(child.get("trace_id")) == rid
        assert child["extra"]["metadata"]["thread_id"] == tid
        assert child["extra"]["metadata"]["langgraph_node"] == name
    assert "messages" in root.get("inputs", {}), root.get("inputs")

    ingest = [(p, h) for m, p, h, _ in _snapshot(capture) if m == "POST" and p.startswith("/runs")]
    assert ingest
    for _path, headers in ingest:
        assert {k.lower(): v for k, v in headers.items()}.get("x-api-key") == API_KEY


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


async def test_json_logs_carry_run_context(traced_server, traced_run):
    rid, tid = traced_run["run_id"], traced_run["thread_id"]
    deadline = time.monotonic() + 10
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        mine = [r for r in _json_lines(traced_server.log()) if r.get("run_id") == rid]
        if any(r["msg"].startswith("run finished") for r in mine):
            break
        await asyncio.sleep(0.2)
    msgs = [r["msg"] for r in mine]
    assert any(m.startswith("run queued") for m in msgs), msgs  # logged by the API process
    assert any(m.startswith("run started") for m in msgs), traced_server.log()[-3000:]  # by the worker
    assert any(m.startswith("run finished") and "success" in m for m in msgs), msgs
    for record in mine:
        assert record["thread_id"] == tid
        assert {"ts", "level", "logger", "msg"} <= set(record)
    uuid.UUID(rid)


async def test_tool_and_specialist_runs_are_traced_with_their_version(capture, traced_server):
    """A tool call is its own `tool` run (name, version, idempotency key) under execute_tools; the researcher
    specialist appears as its own subtree."""
    client = get_client(url=traced_server.url, api_key=None)
    try:
        tid = (await client.threads.create())["thread_id"]
        created: list[dict] = []
        await client.runs.wait(
            tid,
            "agent",
            on_run_created=created.append,
            input={
                "messages": [
                    {
                        "role": "user",
                        "content": '/tool researcher {"question": "How does Keel scale out workers?"}',
                    }
                ]
            },
        )
    finally:
        await client.aclose()
    rid = created[0]["run_id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = parse_runs(_snapshot(capture))
        tool_runs = [
            r for r in runs.values() if r.get("name") == "researcher" and r.get("run_type") == "tool"
        ]
        if tool_runs and tool_runs[0].get("end_time") and runs.get(rid, {}).get("end_time"):
            break
        await asyncio.sleep(0.25)
    assert tool_runs, sorted({r.get("name") for r in runs.values()})
    tool = tool_runs[0]
    assert str(tool["trace_id"]) == rid
    assert tool["extra"]["metadata"]["tool_version"] == "1"
    parent = runs[str(tool["parent_run_id"])]
    assert parent["name"] == "execute_tools"
    # The specialist's own graph and nodes hang under the tool run.
    sub = [r for r in runs.values() if str(r.get("parent_run_id")) == str(tool["id"])]
    sub_names = {r["name"] for r in sub}
    assert "researcher" in sub_names, sub_names
    graph_run = next(r for r in sub if r["name"] == "researcher")
    nodes = {r["name"] for r in runs.values() if str(r.get("parent_run_id")) == str(graph_run["id"])}
    assert {"research_retrieve", "research_draft", "research_check"} <= nodes, nodes
