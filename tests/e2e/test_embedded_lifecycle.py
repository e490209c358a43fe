"""The embedded Postgres's lifecycle across real Keel processes (no DATABASE_URL), ended with real signals.

The last Keel process to exit stops the server, whichever process started it; a process killed with SIGKILL
does not keep it up; `keel db start` keeps it up until `keel db stop`; a KEEL_HOME too long for a Unix socket
is refused instead of putting the socket in a shared temporary directory.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.live import KEEL, keel_env, start_server

pytestmark = pytest.mark.slow

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Iterator[Path]:
    """One KEEL_HOME for the module (initdb once); every test starts and ends with the server stopped."""
    path = tmp_path_factory.mktemp("emb") / "home"
    yield path
    keel(path, "db", "stop")


@pytest.fixture(autouse=True)
def stopped_before_and_after(home):
    keel(home, "db", "stop")
    yield
    keel(home, "db", "stop")


def env(home: Path) -> dict[str, str]:
    out = keel_env("", home, {"KEEL_WORKERS": "0"})
    del out["DATABASE_URL"]
    return out


def keel(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KEEL, *args], env=env(home), capture_output=True, text=True, timeout=120)


def wait_for(cond: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def postmaster(home: Path) -> int | None:
    """The pid of the running embedded postmaster, or None."""
    try:
        pid = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def wait_stopped(home: Path, pid: int) -> None:
    wait_for(
        lambda: not (home / "pgdata" / "postmaster.pid").exists() and not psutil.pid_exists(pid),
        f"the embedded Postgres (pid {pid}) to stop",
    )


class Proc:
    """A `keel serve` or `keel worker` on the embedded Postgres under `home`, ready when constructed."""

    def __init__(self, kind: str, home: Path, tmp: Path) -> None:
        self.kind = kind
        if kind == "serve":
            self.srv = start_server("", extra_env={"KEEL_HOME": str(home), "DATABASE_URL": ""}, tmp_dir=tmp)
            self.proc = self.srv.proc
            return
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = tmp / "worker.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [KEEL, "worker", "--concurrency", "1"],
                env=env(home),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(
            lambda: "slot(s), lease" in self.log.read_text() or self.proc.poll() is not None, "the worker"
        )
        assert self.proc.poll() is None, self.log.read_text()

    def signal(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(DEADLINE_S)


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(DEADLINE_S)


@pytest.mark.parametrize("first,second", [("serve", "worker"), ("worker", "serve")])
def test_the_last_process_to_exit_stops_the_server_whoever_started_it(home, tmp_path, first, second):
    with processes() as procs:
        procs.append(Proc(first, home, tmp_path / "a"))  # starts the server
        pid = postmaster(home)
        assert pid, "the first process started the embedded Postgres"
        procs.append(Proc(second, home, tmp_path / "b"))  # joins it
        assert postmaster(home) == pid
        # The process that started it exits first: the server stays up for the other one.
        assert procs[0].signal(signal.SIGTERM) == 0
        assert postmaster(home) == pid, "still used by the second process"
        if second == "serve":
            import httpx

            assert httpx.get(procs[1].srv.url + "/ok", timeout=10).status_code == 200
        # The last one to exit stops it.
        assert procs[1].signal(signal.SIGTERM) == 0
        wait_stopped(home, pid)


def test_a_killed_process_does_not_keep_the_server_up(home, tmp_path):
    with processes() as procs:
        procs.append(Proc("serve", home, tmp_path / "a"))
        pid = postmaster(home)
        procs.append(Proc("worker", home, tmp_path / "b"))
        procs[1].signal(signal.SIGKILL)  # never releases its handle
        assert postmaster(home) == pid
        assert procs[0].signal(signal.SIGTERM) == 0
        wait_stopped(home, pid)


def test_db_start_keeps_the_server_up_until_db_stop(home, tmp_path):
    started = keel(home, "db", "start")
    assert started.returncode == 0 and "until `keel db stop`" in started.stdout, started.stderr
    pid = postmaster(home)
    assert pid
    with processes() as procs:  # a Keel process joins and leaves: the server stays
        procs.append(Proc("serve", home, tmp_path / "a"))
        assert procs[0].signal(signal.SIGTERM) == 0
    assert postmaster(home) == pid
    status = keel(home, "db", "status")
    assert f"running (pid {pid};" in status.stdout and "kept running by `keel db start`" in status.stdout
    url = keel(home, "db", "url")
    assert url.stdout.strip() == f"postgresql://postgres:@/postgres?host={home.resolve() / 'pgdata'}"
    stopped = keel(home, "db", "stop")
    assert stopped.returncode == 0 and stopped.stdout.strip() == "embedded Postgres stopped"
    wait_stopped(home, pid)
    assert "stopped" in keel(home, "db", "status").stdout
    # No pin is left behind: the next server started by a Keel process stops with it.
    with processes() as procs:
        procs.append(Proc("serve", home, tmp_path / "b"))
        again = postmaster(home)
        assert again and again != pid
        assert procs[0].signal(signal.SIGTERM) == 0
        wait_stopped(home, again)


def test_a_keel_home_too_long_for_a_socket_is_refused(tmp_path):
    long_home = tmp_path / ("h" * (110 - len(str(tmp_path))))
    try:
        for args in (("db", "start"), ("search", "anything")):
            r = keel(long_home, *args)
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            assert (
                "KEEL_HOME is too long for the embedded Postgres" in r.stderr and "DATABASE_URL" in r.stderr
            )
            assert postmaster(long_home) is None, "nothing was started"
    finally:
        if postmaster(long_home):  # the old behaviour: started with its socket in /tmp/<hash>/
            keel(long_home, "db", "stop")


def test_a_one_shot_command_ended_by_sigterm_lets_go_of_the_server(home, tmp_path):
    """`keel ingest` (like search, ask, mcp) has no drain of its own: SIGTERM unwinds it like Ctrl+C, so it
    leaves the holder list and, as the last user, stops the server it started."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(400):  # minutes of embedding: still running when the signal comes
        (corpus / f"doc{i}.md").write_text(f"# Page {i}\n\n" + " ".join(f"word{i}x{j}" for j in range(300)))
    handles = home / "pgdata" / ".handle_pids.json"
    proc = subprocess.Popen(
        [KEEL, "ingest", str(corpus), "--quiet"],
        env=env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: handles.exists() and str(proc.pid) in handles.read_text(),
            "keel ingest to join the server",
        )
        pid = postmaster(home)
        assert pid, "keel ingest started the embedded Postgres"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 128 + signal.SIGTERM, (
            proc.stdout.read().decode() if proc.stdout else ""
        )
        wait_stopped(home, pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(DEADLINE_S)
