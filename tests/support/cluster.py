"""A real Keel deployment for fault tests: one API process and N worker processes on one database.

Everything is a subprocess that receives real signals (SIGKILL, SIGTERM, SIGSTOP/SIGCONT). The graph is
tests/support/fault_graph.py, whose steps sleep, block, interrupt or kill their own process on demand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from tests.support.live import KEEL, REPO, free_port, keel_env

TERMINAL = {"success", "error", "interrupted", "timeout"}
PLAIN = {"stream_mode": ["values", "updates"]}  # run options of the fault tests


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)


@dataclass
class Cluster:
    database_url: str
    env_extra: dict[str, str] = field(default_factory=dict)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="keel-cluster-")))
    procs: list[Proc] = field(default_factory=list)
    url: str = ""

    def env(self) -> dict[str, str]:
        return keel_env(
            self.database_url,
            self.tmp / "home",
            {
                "KEEL_GRAPH": "tests.support.fault_graph:build",
                "PYTHONPATH": str(REPO),
                "KEEL_LEASE_SECONDS": "3",
                "KEEL_MAX_ATTEMPTS": "3",
                "KEEL_DRAIN_SECONDS": "20",
                "KEEL_LOG_LEVEL": "INFO",
                **self.env_extra,
            },
        )

    def _spawn(self, name: str, args: list[str]) -> Proc:
        log_path = self.tmp / f"{name}-{len(self.procs)}.log"
        popen = subprocess.Popen(
            [KEEL, *args],
            env=self.env(),
            cwd=REPO,
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        p = Proc(name, popen, log_path)
        self.procs.append(p)
        return p

    def start_api(self) -> Proc:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        p = self._spawn("api", ["serve", "--workers", "0", "--port", str(port)])
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/ok", timeout=2).status_code == 200:
                    return p
            except httpx.HTTPError:
                pass
            assert p.alive(), p.log()
            time.sleep(0.2)
        raise AssertionError("API did not start:\n" + p.log())

    def start_worker(self, concurrency: int = 2) -> Proc:
        p = self._spawn("worker", ["worker", "--concurrency", str(concurrency)])
        deadline = time.time() + 60
        while "worker" not in p.log() or "slot(s)" not in p.log():
            assert p.alive(), p.log()
            assert time.time() < deadline, p.log()
            time.sleep(0.1)
        return p

    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.name == "worker" and p.alive()]

    def stop(self) -> None:
        for p in self.procs:
            if p.alive():
                with_sig = signal.SIGCONT  # a stopped process must run to handle SIGTERM
                p.signal(with_sig)
                p.signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.popen.wait(timeout=25)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.popen.wait(timeout=10)

    # ------------------------------------------------------------------ API helpers

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def thread(self) -> str:
        with self.client() as c:
            return c.post("/threads", json={}).json()["thread_id"]

    def start_run(self, thread_id: str, plan: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
        payload = {
            "assistant_id": "agent",
            "input": {"plan": plan or {}, "inputs": [body.pop("tag", "x")]},
            **body,
        }
        with self.client() as c:
            r = c.post(f"/threads/{thread_id}/runs", json=payload)
        assert r.status_code == 200, r.text
        return r.json()

    def run(self, thread_id: str, run_id: str) -> dict[str, Any]:
        with self.client() as c:
            return c.get(f"/threads/{thread_id}/runs/{run_id}").json()

    def wait_status(
        self, thread_id: str, run_id: str, statuses=TERMINAL, timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.time() + timeout
        while True:
            run = self.run(thread_id, run_id)
            if run["status"] in statuses:
                return run
            if time.time() > deadline:
                raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s\n" + self.logs())
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} {p.pid} ---\n{p.log()[-4000:]}" for p in self.procs)

    # ------------------------------------------------------------------ database views

    def sql(self, query: str, *args: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(query, args).fetchall()

    def effects(self, thread_id: str) -> dict[str, int]:
        rows = self.sql(
            "SELECT value->>'node' AS node, count(*) AS n FROM store WHERE prefix = %s GROUP BY 1",
            f"effects.{thread_id}",
        )
        return {r["node"]: r["n"] for r in rows}

    def assert_invariants(self, thread_ids: list[str] | None = None) -> None:
        """Every run terminal; one checkpoint chain per thread; gap-free event logs; no held leases."""
        runs = self.sql("SELECT run_id::text, thread_id::text, status, lease_owner FROM keel_runs")
        for r in runs:
            assert r["status"] in TERMINAL, r
            assert r["lease_owner"] is None, r
        threads = thread_ids or sorted({r["thread_id"] for r in runs})
        for tid in threads:
            assert_single_chain(self, tid)
        for r in runs:
            assert_event_log(self, r["run_id"], r["status"])


def assert_single_chain(cluster: Cluster, thread_id: str) -> None:
    rows = cluster.sql(
        "SELECT checkpoint_id, parent_checkpoint_id FROM checkpoints WHERE thread_id = %s "
        "AND checkpoint_ns = '' ORDER BY checkpoint_id",
        thread_id,
    )
    if not rows:
        return
    roots = [r for r in rows if r["parent_checkpoint_id"] is None]
    assert len(roots) == 1, f"thread {thread_id}: {len(roots)} roots"
    children: dict[str, int] = {}
    ids = {r["checkpoint_id"] for r in rows}
    for r in rows:
        p = r["parent_checkpoint_id"]
        if p is not None:
            assert p in ids, f"thread {thread_id}: dangling parent {p}"
            children[p] = children.get(p, 0) + 1
    forks = {p: n for p, n in children.items() if n > 1}
    assert not forks, f"thread {thread_id}: checkpoint history forks at {forks}"


def assert_event_log(cluster: Cluster, run_id: str, status: str) -> None:
    rows = cluster.sql(
        "SELECT seq, attempt, event, data FROM keel_run_events WHERE run_id = %s ORDER BY seq", run_id
    )
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(1, len(seqs) + 1)), (
        f"run {run_id}: event log has gaps: {[(r['seq'], r['attempt'], r['event']) for r in rows]}"
    )
    if not rows:
        return
    assert rows[0]["event"] == "metadata", rows[0]
    if status in ("success", "interrupted"):
        assert rows[-1]["event"] in ("end", "error"), rows[-1]
    if status == "error":
        assert rows[-1]["event"] == "error", rows[-1]
    # Each node's update appears once: work redone after a crash replaces, never duplicates, its events.
    nodes = [next(iter(r["data"])) for r in rows if r["event"] == "updates" and isinstance(r["data"], dict)]
    nodes = [n for n in nodes if n != "__interrupt__"]
    assert len(nodes) == len(set(nodes)), f"run {run_id}: duplicated updates {nodes}"


@contextmanager
def running_cluster(database_url: str, workers: int = 2) -> Iterator[Cluster]:
    """A started cluster (API + `workers` workers), stopped afterwards."""
    c = Cluster(database_url)
    try:
        c.start_api()
        for _ in range(workers):
            c.start_worker()
        yield c
    finally:
        c.stop()


def ensure_workers(c: Cluster, n: int = 2) -> None:
    """Start workers until `n` are alive (after a test killed some)."""
    while len(c.workers()) < n:
        c.start_worker()


def wait_file_lines(path: Path, n: int, timeout: float = 30) -> list[int]:
    """The integers in `path` (one per line, e.g. pids a step wrote) once there are at least `n`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            lines = [int(x) for x in path.read_text().split()]
            if len(lines) >= n:
                return lines
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {n} lines")
