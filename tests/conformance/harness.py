"""Start the two servers the conformance suite compares: `langgraph dev` (the reference) and `keel serve`.

Both serve the project's graph `agent` offline (no API keys, so Keel's auth is off and both agents use the
offline model) with an empty knowledge base. The reference keeps its in-memory state in a fresh temporary
directory, so earlier runs of `langgraph dev` in the repository cannot leak threads into its answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.live import REPO, free_port, start_server

LANGGRAPH = str(Path(sys.executable).with_name("langgraph"))
START_TIMEOUT_S = 90.0


@dataclass
class Served:
    """A running server under test: its base URL and how to read its log."""

    name: str
    url: str
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-20000:]
        except FileNotFoundError:
            return ""


def reference_config(directory: Path) -> Path:
    """A langgraph.json in `directory` serving the repository's graphs by absolute path."""
    config = json.loads((REPO / "langgraph.json").read_text(encoding="utf-8"))
    config["dependencies"] = [str(REPO)]
    for graph in config["graphs"].values():
        if isinstance(graph, dict):
            graph["path"] = str(REPO / graph["path"])
    path = directory / "langgraph.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@contextlib.contextmanager
def reference_server(tmp_dir: Path | None = None) -> Iterator[Served]:
    """`langgraph dev` on a free port, in-memory, offline; stopped (its process group) on exit."""
    tmp = Path(tmp_dir or tempfile.mkdtemp(prefix="keel-conformance-ref-"))
    tmp.mkdir(parents=True, exist_ok=True)
    config = reference_config(tmp)
    port = free_port()
    env = {
        **os.environ,
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("KEEL_API_KEYS", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(key, None)
    served = Served("reference", f"http://127.0.0.1:{port}", tmp / "langgraph-dev.log")
    with open(served.log_path, "wb") as log:
        proc = subprocess.Popen(
            [LANGGRAPH, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)]
            + ["--config", str(config)],
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"langgraph dev exited with {proc.returncode}; log:\n{served.log()}")
            try:
                if httpx.get(served.url + "/ok", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"langgraph dev did not answer /ok in {START_TIMEOUT_S:.0f} s:\n{served.log()}"
                )
            time.sleep(0.2)
        yield served
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if tmp_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def keel_server(database_url: str) -> Iterator[Served]:
    """A real `keel serve` on `database_url` (no documents ingested, no API keys)."""
    tmp = Path(tempfile.mkdtemp(prefix="keel-conformance-keel-"))
    extra = {"KEEL_API_KEYS": ""}
    srv = start_server(database_url, extra_env=extra, tmp_dir=tmp)
    try:
        yield Served("keel", srv.url, srv.log_path)
    finally:
        srv.stop()
        if not os.environ.get("KEEL_TEST_KEEP_LOGS"):
            shutil.rmtree(tmp, ignore_errors=True)
