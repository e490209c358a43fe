"""`make bench`: run the benchmarks and print Markdown for docs/benchmarks.md.

python -m tests.benchmarks.run [peers foundation engine ...]
(peers: KEEL_BENCH_PEERS=keel,lgdev,aegra,lgpg picks some of the peers)
"""

from __future__ import annotations

import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["LANGSMITH_TRACING"] = "false"

SECTIONS = {
    "peers": "tests.benchmarks.bench_peers",
    "foundation": "tests.benchmarks.bench_foundation",
    "storage": "tests.benchmarks.bench_storage",
    "engine": "tests.benchmarks.bench_engine",
    "engine-quick": "tests.benchmarks.bench_engine_quick",
    "stream-quick": "tests.benchmarks.bench_stream_quick",
    "start-quick": "tests.benchmarks.bench_startup",
    "recovery-quick": "tests.benchmarks.bench_recovery_quick",
    "rss-quick": "tests.benchmarks.bench_rss_quick",
    "memory": "tests.benchmarks.bench_memory",
    "ingest": "tests.benchmarks.bench_ingest",
}


def main(argv: list[str]) -> int:
    import importlib

    # The quick ones are subsets of engine and peers.
    names = argv or [
        n
        for n in SECTIONS
        if n not in ("engine-quick", "stream-quick", "start-quick", "recovery-quick", "rss-quick")
    ]
    print(
        f"<!-- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()} -->"
    )
    for name in names:
        mod = importlib.import_module(SECTIONS[name])
        t = time.time()
        print(f"\n### {name}\n")
        print(mod.run())
        print(f"\n_(section took {time.time() - t:.0f} s)_", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
