"""The engine benchmark's fast sub-mode: transactions and WAL fsyncs per run, and a short sequential / c8 loop.

`python -m tests.benchmarks.run engine-quick` (about 3 minutes). With KEEL_BENCH_BASE_TREE=<another checkout>, a
second Keel served from that tree runs alongside (before/after a change, in one run). Keel `serve --workers 8` against the plain
in-request FastAPI endpoint with the stock saver (with and without the store), side by side on one scratch
Postgres (fsync and synchronous_commit on), in the same run: what a change to the run path costs or saves,
without the full section's slow-disk, `langgraph dev` and recovery parts (see bench_engine).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.benchmarks.bench_engine import (
    BIN,
    CONC,
    CpuMeter,
    Procs,
    Variant,
    _c8,
    _latency_table,
    _p50,
    keel_env,
    measure_commits,
    measure_latency,
)
from tests.benchmarks.common import ROOT, free_port, new_db, row_change_table, run_on_scratch_postgres, table

N_SEQ, N_CONC, K_COMMITS = 100, 200, 50


async def _start(admin: str, home: Path, variants: list[Variant], procs: Procs) -> None:
    for v in variants:
        port = free_port()
        v.base = f"http://127.0.0.1:{port}"
        v.db = new_db(admin, "bench_q_" + v.key.replace("-", "_").replace("+", "_"))
        if v.key.startswith("keel"):
            args = [str(BIN / "keel"), "serve", "--workers", str(CONC), "--port", str(port)]
            env = keel_env(v.db, home)
            if v.key == "keel-base":  # another checkout of Keel (a before/after comparison in one run)
                env["PYTHONPATH"] = os.environ["KEEL_BENCH_BASE_TREE"]
            p = procs.start(v.key, [*args, "--log-level", "warning"], env)
        else:
            env = {
                "BASELINE_DATABASE_URL": v.db,
                "PYTHONPATH": str(ROOT),
                "BASELINE_STORE": "1" if v.key.endswith("store") else "0",
            }
            args = [str(BIN / "uvicorn"), "tests.benchmarks.baseline_app:app", "--host", "127.0.0.1"]
            p = procs.start(
                v.key, [*args, "--port", str(port), "--log-level", "warning", "--no-access-log"], env
            )
        v.pgids = [p.pid]
    for v, p in zip(variants, procs.all, strict=True):
        await p.ready(v.base + "/ok")


async def _main(admin: str, tmp: Path, postmaster: int) -> str:
    home = tmp / "keel-home"
    home.mkdir()
    variants = [
        Variant("keel", "Keel `serve --workers 8`", n_seq=N_SEQ, n_conc=N_CONC),
        *(
            [
                Variant(
                    "keel-base", f"Keel at {os.environ['KEEL_BENCH_BASE_TREE']}", n_seq=N_SEQ, n_conc=N_CONC
                )
            ]
            if os.environ.get("KEEL_BENCH_BASE_TREE")
            else []
        ),
        Variant("fastapi", "FastAPI + stock AsyncPostgresSaver (in-request)", n_seq=N_SEQ, n_conc=N_CONC),
        Variant("fastapi+store", "same + AsyncPostgresStore", n_seq=N_SEQ, n_conc=N_CONC),
    ]
    procs = Procs()
    try:
        await _start(admin, home, variants, procs)
        t = time.monotonic()
        await measure_latency(variants, CpuMeter(postmaster), rounds=2)
        lat_s = time.monotonic() - t
        t = time.monotonic()
        commits = await measure_commits(admin, [v for v in variants if not v.error], K_COMMITS)
        com_s = time.monotonic() - t
    finally:
        procs.stop_all()
    by = {v.key: v for v in variants}
    out = [_latency_table(variants)]
    rows = []
    for v in variants:
        if not v.seq:
            continue
        n = len(v.seq)
        server, pg, client = (x * 1000 / n for x in v.cpu)
        rows.append(
            {"variant": v.label, "server CPU ms": server, "Postgres CPU ms": pg, "client CPU ms": client}
        )
    out.append("\nCPU per sequential run (ms):\n")
    out.append(table(rows, ["variant", "server CPU ms", "Postgres CPU ms", "client CPU ms"]))
    crow = []
    for v in variants:
        m = commits.get(v.key)
        if not m:
            continue
        ck = m["tables"].get("checkpoints", (0, 0, 0))[0] or 6.0
        crow.append(
            {
                "variant": v.label,
                "transactions/run": m["xacts"],
                "WAL fsyncs/run": m["fsyncs"],
                "WAL KB/run": m["bytes"] / 1024,
                "checkpoints/run": ck,
                "xacts/super-step": m["xacts"] / ck,
                "fsyncs/super-step": m["fsyncs"] / ck,
            }
        )
    out.append(
        f"\nTransactions and WAL fsyncs per run ({K_COMMITS} sequential runs per server; pg_stat_database "
        "xact_commit of its database, pg_stat_io WAL fsyncs cluster-wide, idle window subtracted; "
        "super-step = checkpoint):\n"
    )
    out.append(
        table(
            crow,
            [
                "variant",
                "transactions/run",
                "WAL fsyncs/run",
                "WAL KB/run",
                "checkpoints/run",
                "xacts/super-step",
                "fsyncs/super-step",
            ],
        )
    )
    keys = [v.key for v in variants if v.key in commits]
    out.append("\nRow changes per run (inserted / updated / deleted):\n")
    out.append(row_change_table(commits, keys))
    f = by["fastapi"]
    for key in ("keel", "keel-base"):
        k = by.get(key)
        if k and _p50(k) and _p50(f) and _c8(k) and _c8(f):
            out.append(
                f"\nRatios, {k.label}: p50 / FastAPI p50 = {_p50(k):.1f} / {_p50(f):.1f} ms = "
                f"**{_p50(k) / _p50(f):.2f}×** (goal ≤ 1.5×); c8 / FastAPI c8 = {_c8(k):.1f} / {_c8(f):.1f} "
                f"runs/s = **{_c8(k) / _c8(f):.2f}×** (goal ≥ 1×)."
            )
    out.append(f"\n_(latency/throughput {lat_s:.0f} s, commits {com_s:.0f} s)_")
    return "\n".join(out)


def run() -> str:
    return run_on_scratch_postgres(_main, "keel-bench-engine-quick-")


if __name__ == "__main__":
    print(run())
