"""Recovery after SIGKILL on its own: the engine benchmark's recovery part, before/after a change in one run.

`python -m tests.benchmarks.run recovery-quick` (about 1 minute, 2 more with a base tree). `keel serve --workers 0`
and two `keel worker --concurrency 2` on a scratch Postgres; node b of a run sleeps 3 s, the worker executing it is
SIGKILLed, and the times from the kill to the re-claim, the restart of b and the run's end are read. With
KEEL_BENCH_BASE_TREE=<another checkout>, the same runs against Keel served from that tree, alternating.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.benchmarks.bench_engine import measure_recovery
from tests.benchmarks.common import run_on_scratch_postgres, table

LEASE_S, REPS = 5.0, 3
COLUMNS = ["tree", "rep", "re-claimed s", "b restarted s", "completed s", "status", "attempt", "other worker"]


async def _main(admin: str, tmp: Path, _postmaster: int) -> str:
    home = tmp / "keel-home"
    home.mkdir()
    base = os.environ.get("KEEL_BENCH_BASE_TREE")
    rows = await measure_recovery(admin, home, tmp, (LEASE_S,), REPS)
    if base:
        rows += await measure_recovery(admin, home, tmp, (LEASE_S,), REPS, tree=base)
    out = [
        f"Recovery after SIGKILL (lease {LEASE_S:g} s; times from the kill; see bench_engine part 3):\n",
        table([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], COLUMNS),
    ]
    return "\n".join(out)


def run() -> str:
    return run_on_scratch_postgres(_main, "keel-bench-recovery-")
