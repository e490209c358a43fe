"""The run engine's edges with real processes (issue 9): a worker that starts before Postgres, and a run
whose graph completed just before its worker died on the last allowed attempt."""

from __future__ import annotations

import signal
import time
import uuid

import psycopg
import pytest

from server.db import with_dbname
from tests.support.cluster import PLAIN, Cluster, Proc, wait_file_lines
from tests.support.live import free_port

pytestmark = pytest.mark.slow

RETRY = "Postgres is not reachable yet"


def wait_log(p: Proc, text: str, count: int = 1, timeout: float = 60) -> str:
    """The process's log once `text` appears in it `count` times (the process must stay alive meanwhile)."""
    deadline = time.time() + timeout
    while (log := p.log()).count(text) < count:
        assert p.alive(), f"{p.name} exited with {p.popen.returncode}:\n{log}"
        assert time.time() < deadline, f"{text!r} not seen {count} time(s) in {timeout}s:\n{log}"
        time.sleep(0.1)
    return log


def test_worker_sigterm_while_waiting_for_postgres_exits_0(tmp_path):
    c = Cluster(f"postgresql://keel@127.0.0.1:{free_port()}/keel", tmp=tmp_path)  # nobody listens there
    worker = c._spawn("worker", ["worker", "--concurrency", "1"])
    try:
        log = wait_log(worker, RETRY, count=2)
        assert "Connection refused" in log or "connection failed" in log, log
        sent = time.time()
        worker.signal(signal.SIGTERM)
        assert worker.popen.wait(timeout=10) == 0, worker.log()
        assert time.time() - sent < 5, "SIGTERM while waiting must stop the worker promptly"
    finally:
        c.stop()


def test_worker_started_before_its_database_waits_then_runs(pg_admin_url, tmp_path):
    name = f"t_late_{uuid.uuid4().hex[:8]}"
    c = Cluster(with_dbname(pg_admin_url, name), tmp=tmp_path)
    worker = c._spawn("worker", ["worker", "--concurrency", "1"])
    try:
        log = wait_log(worker, RETRY, count=2)
        assert f'database "{name}" does not exist' in log, log
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        wait_log(worker, "slot(s)")
        c.start_api()
        tid = c.thread()
        run = c.start_run(tid, {}, **PLAIN)
        assert c.wait_status(tid, run["run_id"])["status"] == "success"
        pids = c.sql(
            "SELECT DISTINCT (value->>'pid')::int AS pid FROM store WHERE prefix = %s", f"effects.{tid}"
        )
        assert [r["pid"] for r in pids] == [worker.pid], "the worker that waited for Postgres ran the run"
    finally:
        c.stop()
    assert worker.popen.returncode == 0, worker.log()


def test_run_that_completed_before_its_worker_died_on_the_last_attempt_succeeds(database_url, tmp_path):
    """The worker dies after the run's final checkpoint, inside finish(); it was the last allowed attempt.

    The run's row is held (FOR NO KEY UPDATE) so finish() waits for it; event appends and checkpoints do not.
    """
    c = Cluster(database_url, env_extra={"KEEL_MAX_ATTEMPTS": "1"}, tmp=tmp_path)
    try:
        c.start_api()
        c.start_worker()
        c.start_worker()
        tid = c.thread()
        marker = tmp_path / "b"
        run = c.start_run(tid, {"b": {"sleep": 0.5, "touch": str(marker)}}, **PLAIN)
        rid = run["run_id"]
        pid = wait_file_lines(marker, 1)[0]
        with psycopg.connect(database_url) as lock:
            lock.execute("SELECT 1 FROM keel_runs WHERE run_id = %s FOR NO KEY UPDATE", (rid,))
            deadline = time.time() + 30
            while not c.sql(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE keel_runs SET status%%'"
            ):
                assert time.time() < deadline, "finish() never started\n" + c.logs()
                time.sleep(0.05)
            final = c.sql(
                "SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' "
                "AND metadata->>'run_id' = %s",
                tid,
                rid,
            )[0]["n"]
            assert final == 6, "every checkpoint of the run is written"
            worker = next(p for p in c.procs if p.pid == pid)
            worker.signal(signal.SIGKILL)
            worker.popen.wait(timeout=10)
            lock.rollback()
        done = c.wait_status(tid, rid, timeout=30)
        assert done["status"] == "success" and done["error"] is None and done["attempt"] == 1, done
        with c.client() as http:
            joined = http.get(f"/threads/{tid}/runs/{rid}/join").json()
            thread = http.get(f"/threads/{tid}").json()
        assert joined["log"] == ["a", "b", "c", "d"], joined
        assert thread["status"] == "idle" and thread["error"] is None, thread
        assert c.effects(tid) == {"a": 1, "b": 1, "c": 1, "d": 1}, "no node ran again"
        c.assert_invariants([tid])
        events = c.sql("SELECT event FROM keel_run_events WHERE run_id = %s ORDER BY seq", rid)
        assert events[-1]["event"] == "end" and [e["event"] for e in events].count("metadata") == 1, events
    finally:
        c.stop()
