"""`langgraph dev` (what `make studio` runs) loads the graph offline; Keel fails fast without Postgres."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_langgraph_dev_serves_the_graph_offline(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        "HF_HUB_OFFLINE": "1",
    }
    log = (tmp_path / "dev.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "langgraph"),
            "dev",
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(base + "/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail("langgraph dev did not start:\n" + (tmp_path / "dev.log").read_text())
        found = httpx.post(base + "/assistants/search", json={"graph_id": "agent"}, timeout=10).json()
        assert found and found[0]["graph_id"] == "agent"
        aid = found[0]["assistant_id"]
        graph = httpx.get(f"{base}/assistants/{aid}/graph", timeout=10).json()
        assert {n["id"] for n in graph["nodes"]} >= {"retrieve", "summarize", "execute_tools", "critique"}
        schemas = httpx.get(f"{base}/assistants/{aid}/schemas", timeout=10).json()
        assert "messages" in schemas["input_schema"]["properties"]
        out = httpx.post(
            base + "/runs/wait",
            timeout=60,
            json={
                "assistant_id": "agent",
                "input": {
                    "messages": [{"role": "user", "content": '/tool calculator {"expression": "2+3"}'}]
                },
            },
        ).json()
        assert out["status"] == "done" and "5" in out["answer"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)
        log.close()


def test_serve_fails_fast_when_postgres_is_unreachable(tmp_path):
    port = free_port()  # nothing listens here
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://keel:keel@127.0.0.1:{port}/keel",
        "KEEL_HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
    }
    started = time.time()
    proc = subprocess.run(
        [str(BIN / "keel"), "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "cannot connect to Postgres" in proc.stderr and f"127.0.0.1:{port}" in proc.stderr
    assert time.time() - started < 45


def test_cli_reports_bad_configuration(tmp_path):
    env = {**os.environ, "KEEL_API_KEYS": "no-user-here", "KEEL_HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(BIN / "keel"), "search", "x"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and "KEEL_API_KEYS" in proc.stderr
