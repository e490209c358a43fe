"""Start-up and the sequential agent tail of `keel serve`, restarted every round
(`python -m tests.benchmarks.run start-quick`, about 4 minutes per tree).

Each round starts the server (timed to the first 200 on /ok, polled every 5 ms), warms it with a few agent
runs, times `N_AGENT` sequential agent runs.wait on fresh threads, and stops it. The sequential agent's p99 is
where a pause of the whole process (a full garbage collection, server/heap.py) shows.

With KEEL_BENCH_BASE_TREE=<another checkout>, the same rounds run for a Keel served from that tree, interleaved
with this tree's (order reversed every other round), each on its own database of one scratch Postgres (fsync and
synchronous_commit on): a before/after in one run. The agent and its corpus are the peer benchmark's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.benchmarks.bench_peers import (
    Peer,
    _sequential,
    corpus_chunks,
    keel_serve_args,
    load_corpus,
)
from tests.benchmarks.bench_stream_quick import compared_trees
from tests.benchmarks.common import free_port, pct, run_on_scratch_postgres, table

ROUNDS = 4
N_AGENT = 40  # sequential agent runs per round
WARMUP = 3
START_TIMEOUT_S = 180.0


async def _start(args: list[str], env: dict[str, str], url: str, log: Path) -> tuple[subprocess.Popen, float]:
    """The server process and the seconds from its spawn to the first 200 on /ok."""
    t = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    async with httpx.AsyncClient(timeout=2) as c:
        while True:
            try:
                if (await c.get(url + "/ok")).status_code == 200:
                    return proc, time.perf_counter() - t
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.perf_counter() - t > START_TIMEOUT_S:
                _stop(proc)
                raise RuntimeError(f"keel serve did not start:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.005)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def _main(admin: str, tmp: Path, postmaster: int) -> str:
    trees, envs = compared_trees(admin, tmp, "bench_start_")
    starts: dict[str, list[float]] = {k: [] for k in trees}
    waits: dict[str, list[float]] = {k: [] for k in trees}
    corpus = corpus_chunks()
    loaded: set[str] = set()
    log = Path(tempfile.mkdtemp(prefix="keel-bench-start-")) / "serve.log"
    t0 = time.monotonic()
    for r in range(ROUNDS):
        for key in list(trees) if r % 2 == 0 else list(trees)[::-1]:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc, secs = await _start(keel_serve_args(port), envs[key], url, log)
            try:
                starts[key].append(secs)
                async with httpx.AsyncClient(base_url=url, timeout=120) as c:
                    if key not in loaded:  # each tree's first round: its database gets the corpus
                        await load_corpus(Peer("keel", key), c, corpus)
                        loaded.add(key)
                    await _sequential(c, "agent", WARMUP)
                    waits[key] += [x * 1000 for x in await _sequential(c, "agent", N_AGENT)]
            finally:
                _stop(proc)
    took = time.monotonic() - t0
    rows = []
    for key, tree in trees.items():
        rows.append(
            {
                "Keel": f"{key} ({tree})",
                "start-up s, median": statistics.median(starts[key]),
                "start-ups s": ", ".join(f"{x:.2f}" for x in starts[key]),
                "agent runs.wait p50 ms": pct(waits[key], 50),
                "p90 ms": pct(waits[key], 90),
                "p99 ms": pct(waits[key], 99),
                "max ms": max(waits[key]),
            }
        )
    cols = [
        "Keel",
        "start-up s, median",
        "start-ups s",
        "agent runs.wait p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
    ]
    head = (
        f"{ROUNDS} interleaved rounds per server, each a fresh `keel serve --workers 8` process: start-up to the "
        f"first 200 on /ok, {WARMUP} warm-up then {N_AGENT} sequential agent runs.wait on fresh threads; "
        f"took {took:.0f} s.\n\n"
    )
    return head + table(rows, cols)


def run() -> str:
    return run_on_scratch_postgres(_main, "keel-bench-start-")
