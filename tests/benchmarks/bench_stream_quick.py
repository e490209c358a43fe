"""A quick side-by-side of the peer benchmark's latency rows for Keel alone: time to first streamed event and
sequential runs.wait, on the no-op and agent graphs (`python -m tests.benchmarks.run stream-quick`, a few
minutes).

With KEEL_BENCH_BASE_TREE=<another checkout>, a second Keel served from that tree runs alongside, on the same
scratch Postgres (fsync and synchronous_commit on), its rounds interleaved with this tree's: a before/after of a
change to the stream or wait path in one run, on a machine too noisy for absolute figures. Each server gets
the peer benchmark's corpus and graphs (tests/benchmarks/bench_peers.py), so the agent does the same work.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.benchmarks.bench_peers import (
    AGENT_PATH,
    BASE_ENV,
    NOOP_PATH,
    Peer,
    _sequential,
    _ttfe,
    corpus_chunks,
    keel_serve_args,
    load_corpus,
    warm_model_cache,
)
from tests.benchmarks.common import ROOT, free_port, new_db, pct, process, run_on_scratch_postgres, table

ROUNDS = 4
N_TTFE = 10  # per round and graph
N_WAIT = {"noop": 25, "agent": 10}  # per round
WARMUP = 5


GRAPHS = {"noop": f"{NOOP_PATH}:graph", "agent": f"{AGENT_PATH}:graph"}


def compared_trees(admin: str, tmp: Path, db_prefix: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """({key: tree}, {key: the environment of its `keel serve`}): this tree, and KEEL_BENCH_BASE_TREE's when
    set, each with its own database of the scratch Postgres and the peer benchmark's graphs and model cache."""
    trees = {"keel": str(ROOT)}
    if os.environ.get("KEEL_BENCH_BASE_TREE"):
        trees["keel-base"] = os.environ["KEEL_BENCH_BASE_TREE"]
    warm_model_cache(tmp)
    cfg = tmp / "langgraph.json"
    cfg.write_text(json.dumps({"dependencies": [str(ROOT)], "graphs": GRAPHS, "env": {}}))
    envs = {
        key: dict(BASE_ENV)
        | {
            "PYTHONPATH": tree,
            "DATABASE_URL": new_db(admin, db_prefix + key.replace("-", "_")),
            "KEEL_CONFIG": str(cfg),
            "KEEL_HOME": str(tmp / f"home-{key}"),
            "KEEL_LOG_LEVEL": "WARNING",
            "KEEL_MODEL_CACHE": str(tmp / "models"),
        }
        for key, tree in trees.items()
    }
    return trees, envs


async def _main(admin: str, tmp: Path, postmaster: int) -> str:
    trees, envs = compared_trees(admin, tmp, "bench_sq_")
    graphs = GRAPHS
    corpus = corpus_chunks()
    results: dict[tuple[str, str, str], list[float]] = {}
    with ExitStack() as stack:
        clients: dict[str, httpx.AsyncClient] = {}
        for key in trees:
            port = free_port()
            env = envs[key]
            args = keel_serve_args(port)
            stack.enter_context(process(args, env, f"http://127.0.0.1:{port}/ok", cwd=tmp, timeout=180))
            clients[key] = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120)
        try:
            for key, c in clients.items():
                await load_corpus(Peer("keel", key), c, corpus)  # (the key picks the /knowledge/ingest path)
                for g in graphs:
                    await _sequential(c, g, WARMUP)
                    await _ttfe(c, g, WARMUP)
            t = time.monotonic()
            for r in range(ROUNDS):
                for key in list(clients) if r % 2 == 0 else list(clients)[::-1]:
                    c = clients[key]
                    for g in graphs:
                        results.setdefault((key, g, "ttfe"), []).extend(await _ttfe(c, g, N_TTFE))
                        results.setdefault((key, g, "wait"), []).extend(await _sequential(c, g, N_WAIT[g]))
            took = time.monotonic() - t
        finally:
            for c in clients.values():
                await c.aclose()
    rows = []
    for key, tree in trees.items():
        row: dict[str, object] = {"Keel": f"{key} ({tree})"}
        for g in graphs:
            first = [x * 1000 for x in results[(key, g, "ttfe")]]
            wait = [x * 1000 for x in results[(key, g, "wait")]]
            row[f"first event p50 ms — {g}"] = pct(first, 50)
            row[f"runs.wait p50 ms — {g}"] = pct(wait, 50)
            row[f"runs.wait p99 ms — {g}"] = pct(wait, 99)
        rows.append(row)
    cols = ["Keel"] + [
        f"{m} — {g}" for g in graphs for m in ("first event p50 ms", "runs.wait p50 ms", "runs.wait p99 ms")
    ]
    head = (
        f"{ROUNDS} interleaved rounds per server; per round and graph {N_TTFE} POST runs/stream (stream_mode values, "
        f"time to the first SSE event that is not `metadata`) and sequential runs.wait ({N_WAIT['noop']} no-op, "
        f"{N_WAIT['agent']} agent), each on a fresh thread; `keel serve --workers 8`; timed part {took:.0f} s.\n\n"
    )
    return head + table(rows, cols)


def run() -> str:
    return run_on_scratch_postgres(_main, "keel-bench-sq-")
