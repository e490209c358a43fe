"""Full garbage collections of `keel serve`: how many, and how long each paused the process, while it starts
and while it serves sequential agent runs (server/heap.py; docs/benchmarks.md, "Keel's start-up and memory").

    python -m tests.benchmarks.gc_pauses [--runs 300] [--base-tree DIR]

Each server runs with a `sitecustomize` on its path that times every generation-2 collection through
`gc.callbacks` and appends it to a file; the servers (this tree, then `--base-tree` when given) run one after
the other on one scratch Postgres with the Keel docs ingested. Counts and durations, not latencies: a pause is
measured where it happens, so the figures hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.benchmarks.common import BIN, ROOT, free_port, scratch_postgres

PROBE = """
import gc, os, time
_start = []
_path = os.path.join(os.environ["KEEL_GC_PROBE_DIR"], f"gc-{os.getpid()}")
def _timed(phase, info):
    if info.get("generation") != 2:
        return
    if phase == "start":
        _start[:] = [time.perf_counter()]
    elif _start:
        with open(_path, "a") as f:
            f.write(f"{time.time():.6f} {(time.perf_counter() - _start[0]) * 1000:.3f}\\n")
gc.callbacks.append(_timed)
"""
QUESTION = {"messages": [{"role": "user", "content": "What is Keel?"}]}
WARMUP = 5


def _pauses(probe: Path) -> list[tuple[float, float]]:
    out = []
    for f in probe.glob("gc-*"):
        for line in f.read_text().splitlines():
            ts, ms = line.split()
            out.append((float(ts), float(ms)))
    return sorted(out)


def measure(tree: str, url: str, home: Path, runs: int) -> str:
    probe = Path(tempfile.mkdtemp(prefix="keel-gc-probe-"))
    (probe / "sitecustomize.py").write_text(PROBE)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{tree}{os.pathsep}{probe}",
        "KEEL_GC_PROBE_DIR": str(probe),
        "DATABASE_URL": url,
        "KEEL_HOME": str(home),
        "KEEL_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [str(BIN / "keel"), "serve", "--port", str(port)],
        env=env,
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        deadline = time.monotonic() + 180
        while True:
            try:
                if c.get("/ok").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"keel serve from {tree} did not start")
            time.sleep(0.01)

        def one() -> None:
            tid = c.post("/threads", json={}).json()["thread_id"]
            r = c.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": QUESTION})
            if r.status_code != 200:
                raise RuntimeError(f"runs/wait -> {r.status_code}: {r.text[:300]}")

        for _ in range(WARMUP):
            one()
        t0 = time.time()
        for _ in range(runs):
            one()
        t1 = time.time()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    pauses = _pauses(probe)
    start = [ms for ts, ms in pauses if ts < t0]
    during = [ms for ts, ms in pauses if t0 <= ts <= t1]
    return (
        f"| {tree} | {len(start)} ({sum(start):.0f} ms) | {len(during)} | "
        + (", ".join(f"{x:.0f}" for x in during) or "–")
        + " |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="sequential agent runs per server")
    parser.add_argument("--base-tree", help="another checkout of Keel, measured after this one")
    args = parser.parse_args()
    trees = [str(ROOT), *([args.base_tree] if args.base_tree else [])]
    with scratch_postgres() as (admin, _server):
        home = Path(tempfile.mkdtemp(prefix="keel-gc-home-"))
        env = {**os.environ, "DATABASE_URL": admin, "KEEL_HOME": str(home), "PYTHONPATH": str(ROOT)}
        docs = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
        subprocess.run(
            [str(BIN / "keel"), "ingest", *docs], env=env, cwd=ROOT, check=True, capture_output=True
        )
        print(
            f"| tree | full collections while starting and warming up ({WARMUP} runs) | "
            f"during {args.runs} sequential agent runs | their pauses, ms |\n|---|---|---|---|"
        )
        for tree in trees:
            print(measure(tree, admin, home, args.runs), flush=True)


if __name__ == "__main__":
    main()
