"""Resident memory of `keel serve` with and without its malloc tuning (`python -m tests.benchmarks.run rss-quick`,
a few minutes).

Two servers from this tree on one scratch Postgres, one with KEEL_MALLOC_TUNING=false (glibc's defaults; the heap
is still trimmed after an ingest), one as shipped (server/heap.py): each ingests the peer benchmark's corpus, then
serves rounds of sequential and concurrent no-op and agent runs (the peer benchmark's graphs), the rounds
interleaved. RSS is the server's whole process group, sampled after the ingest and after each round; the ingest's
wall time shows what the tuning costs it.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.benchmarks.bench_peers import (
    Peer,
    _concurrent,
    _pgroup_rss_mb,
    _sequential,
    corpus_chunks,
    keel_serve_args,
    load_corpus,
)
from tests.benchmarks.bench_stream_quick import compared_trees
from tests.benchmarks.common import free_port, new_db, process, run_on_scratch_postgres, table

VARIANTS = {"glibc defaults (KEEL_MALLOC_TUNING=false)": "false", "tuned (default)": "true"}
ROUNDS = 3
N_SEQ, N_CONC = 20, {"noop": 96, "agent": 48}


async def _main(admin: str, tmp: Path, postmaster: int) -> str:
    _, envs = compared_trees(admin, tmp, "bench_rss_")
    corpus = corpus_chunks()
    rows: dict[str, dict[str, object]] = {}
    with ExitStack() as stack:
        clients: dict[str, httpx.AsyncClient] = {}
        pids: dict[str, int] = {}
        for i, (label, tuning) in enumerate(VARIANTS.items()):
            env = dict(envs["keel"]) | {
                "KEEL_MALLOC_TUNING": tuning,
                "DATABASE_URL": new_db(admin, f"bench_rss_{i}"),
                "KEEL_HOME": str(tmp / f"home-rss-{i}"),
            }
            port = free_port()
            proc = stack.enter_context(
                process(keel_serve_args(port), env, f"http://127.0.0.1:{port}/ok", cwd=tmp, timeout=180)
            )
            pids[label] = proc.pid
            clients[label] = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120)
            rows[label] = {"server": label, "RSS idle MB": _pgroup_rss_mb([proc.pid])}
        try:
            for label, c in clients.items():
                t = time.perf_counter()
                await load_corpus(Peer("keel", label), c, corpus)
                rows[label]["ingest s"] = time.perf_counter() - t
                rows[label]["RSS after ingest MB"] = _pgroup_rss_mb([pids[label]])
            peak = {label: 0.0 for label in clients}
            rate: dict[str, list[float]] = {label: [] for label in clients}
            for r in range(ROUNDS):
                for label in list(clients) if r % 2 == 0 else list(clients)[::-1]:
                    for g in ("noop", "agent"):
                        await _sequential(clients[label], g, N_SEQ)
                        n, dt = await _concurrent(clients[label], g, N_CONC[g], 8)
                        if g == "agent":
                            rate[label].append(n / dt)
                    peak[label] = max(peak[label], _pgroup_rss_mb([pids[label]]))
        finally:
            for c in clients.values():
                await c.aclose()
    for label in clients:
        rows[label]["RSS after runs MB (max of rounds)"] = peak[label]
        rows[label]["agent c8 runs/s (median of rounds)"] = sorted(rate[label])[len(rate[label]) // 2]
    head = (
        f"Two `keel serve --workers 8` from this tree; each ingested the peer corpus ({len(corpus)} files, "
        f"{sum(len(c) for _, _, c in corpus)} chunks), then "
        f"{ROUNDS} interleaved rounds of {N_SEQ} sequential and {N_CONC['noop']}/{N_CONC['agent']} concurrent "
        "(c8) no-op/agent runs. RSS = the server's process group.\n\n"
    )
    cols = [
        "server",
        "RSS idle MB",
        "ingest s",
        "RSS after ingest MB",
        "RSS after runs MB (max of rounds)",
        "agent c8 runs/s (median of rounds)",
    ]
    return head + table(list(rows.values()), cols)


def run() -> str:
    return run_on_scratch_postgres(_main, "keel-bench-rss-")
