"""Start a real `keel serve` (and `keel ingest`) as subprocesses for e2e and compat tests.

    with live_server(database_url) as srv:       # or start_server(...) / srv.stop()
        httpx.get(srv.url + "/ok")

Logs go to a temporary directory outside the repository; a failed start-up reports the log contents.
Set KEEL_TEST_KEEP_LOGS=1 to keep that directory (its path is in LiveServer.tmp_dir) after the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]

KEEL = str(Path(sys.executable).with_name("keel"))
"""The `keel` console script of the venv running the tests."""

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0

CORPUS: dict[str, str] = {
    "scaling.md": """# Scaling out workers

Keel scales out by adding more worker processes. Every worker connects to the same Postgres database
and claims queued runs with a lease, so adding workers increases throughput without any coordinator.
To scale out, start another worker with the same DATABASE_URL; the run queue spreads the work.
""",
    "recovery.md": """# Recovery after a crash

When a worker crashes in the middle of a run, its lease expires and another worker picks the run up.
The run resumes from its last checkpoint in Postgres, so completed nodes are not executed again.
Recovery after a crash therefore needs no manual step: the checkpoint makes the run durable.
""",
    "tracing.md": """# Tracing with LangSmith

Set LANGSMITH_TRACING=true and LANGSMITH_API_KEY to send traces of every run to LangSmith.
Each run becomes one trace whose root carries the thread id and the run id as metadata.
""",
}
"""A tiny Markdown corpus: questions about scaling out and crash recovery have answers in it."""


MODEL_CACHE = Path(tempfile.gettempdir()) / "keel-test-model-cache"
"""Where test processes keep the offline embedding model's int8 graph (memory/quantized.py)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keel_env(
    database_url: str, keel_home: Path | str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a keel subprocess: tracing off and offline models, then `extra` on top."""
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url,
            "KEEL_HOME": str(keel_home),
            "LANGSMITH_TRACING": "false",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            # One int8 embedding graph for every keel process the tests start, not one per KEEL_HOME.
            "KEEL_MODEL_CACHE": str(MODEL_CACHE),
        }
    )
    env.update(extra or {})
    return env


def write_corpus(directory: Path | str, files: Mapping[str, str] | None = None) -> Path:
    """Write the Markdown corpus into `directory` and return it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, text in (files or CORPUS).items():
        (d / name).write_text(text, encoding="utf-8")
    return d


def ingest(
    database_url: str,
    corpus_dir: Path | str,
    *,
    keel_home: Path | str,
    namespace: str = "default",
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 180.0,
) -> subprocess.CompletedProcess:
    """Run `keel ingest DIR --namespace NS --quiet`; raise with its output if it fails."""
    proc = subprocess.run(
        [KEEL, "ingest", str(corpus_dir), "--namespace", namespace, "--quiet"],
        env=keel_env(database_url, keel_home, extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"keel ingest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class LiveServer:
    """A running `keel serve`."""

    url: str
    proc: subprocess.Popen
    log_path: Path
    port: int
    tmp_dir: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(STOP_GRACE_S)
        return self.proc.returncode


def start_server(
    database_url: str,
    *,
    extra_env: Mapping[str, str] | None = None,
    tmp_dir: Path | str | None = None,
    timeout: float = START_TIMEOUT_S,
) -> LiveServer:
    """Start `keel serve` on a free port and wait until GET /ok answers 200."""
    tmp = Path(tmp_dir) if tmp_dir else Path(tempfile.mkdtemp(prefix="keel-live-"))
    if tmp.resolve().is_relative_to(REPO):
        raise ValueError(f"keep test logs out of the repository: {tmp}")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = keel_env(database_url, tmp / "home", extra_env)
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [KEEL, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    srv = LiveServer(
        url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path, port=port, tmp_dir=tmp, env=env
    )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"keel serve exited with {proc.returncode} during start-up; log:\n{srv.log()}")
        try:
            if httpx.get(srv.url + "/ok", timeout=2.0).status_code == 200:
                return srv
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            srv.stop()
            raise RuntimeError(f"keel serve did not answer GET /ok within {timeout:.0f} s; log:\n{srv.log()}")
        time.sleep(0.2)


@contextlib.contextmanager
def live_server(
    database_url: str,
    *,
    extra_env: Mapping[str, str] | None = None,
    corpus: Mapping[str, str] | None = None,
    keep_tmp: bool = False,
) -> Iterator[LiveServer]:
    """Ingest `corpus` (None = CORPUS, {} = nothing) into the database, then run `keel serve` until exit."""
    tmp = Path(tempfile.mkdtemp(prefix="keel-live-"))
    try:
        if corpus != {}:
            ingest(
                database_url,
                write_corpus(tmp / "corpus", corpus),
                keel_home=tmp / "home",
                extra_env=extra_env,
            )
        srv = start_server(database_url, extra_env=extra_env, tmp_dir=tmp)
        try:
            yield srv
        finally:
            srv.stop()
    finally:
        if not (keep_tmp or os.environ.get("KEEL_TEST_KEEP_LOGS")):
            shutil.rmtree(tmp, ignore_errors=True)
