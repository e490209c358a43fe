"""The heap of a `keel serve` or `keel worker` process: the garbage collector around its start-up, and the C
allocator's tuning (`tune_malloc`).

Starting builds about 180,000 long-lived objects: modules, classes, pydantic schemas, the compiled graphs.
CPython's cyclic collector walks every tracked object at each full (generation 2) collection. Measured on
the 2-core machine in docs/benchmarks.md:
- start-up ran three full collections (14, 42 and 73 ms);
- serving ran one every 100-150 agent runs, pausing the event loop for 70-100 ms, and the run in flight took
  that much longer (the sequential agent p99).

So collection is paused while the process starts. Once it serves, the objects alive then are frozen
(`gc.freeze()`: moved to a permanent generation that collections never walk) and collection resumes for
everything allocated afterwards. The little start-up garbage still unreachable at that point (about 1,600
objects) is frozen with them and never freed: a one-time cost of well under a megabyte.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Mapping

# glibc's malloc tuning (mallopt's parameters; the environment variable that sets each one instead).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MALLOC_TUNING = {
    M_ARENA_MAX: ("MALLOC_ARENA_MAX", 2),
    M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", 4 * 2**20),
    M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", 4 * 2**20),
}


def pause() -> None:
    """Stop automatic collection until `settle` (or `resume`): call it before the heavy imports."""
    gc.disable()


def resume() -> None:
    """Collect again without freezing anything (a start that failed and will be retried)."""
    gc.enable()


def settle() -> int:
    """Freeze what start-up built and resume collection; returns how many objects are now frozen."""
    gc.freeze()
    gc.enable()
    return gc.get_freeze_count()


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): their allocators need none of this
        return None


def tune_malloc(environ: Mapping[str, str]) -> list[str]:
    """Keep a long-running process's C heap close to what it uses (glibc only; elsewhere nothing happens).

    Call it first thing, before the process starts threads. glibc gives threads up to 8 arenas per core, each
    keeping what was freed in it, and raises its mmap threshold each time a large block is freed (up to 32 MB),
    so the large buffers of an ingest or a model call end up in arenas that keep them. Measured on the
    benchmark's corpus and graphs (docs/benchmarks.md): 2 arenas and a fixed 4 MB threshold (larger blocks are
    mapped on their own and returned when freed) cut a `keel serve`'s peak by about 65 MB and cost its ingest
    about 8%; a 128 KB threshold cut 120 MB but doubled the ingest's time. A parameter whose glibc environment
    variable is set (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`) is left as that
    says. Returns the names of the parameters set."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return []
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = []
    for param, (name, value) in MALLOC_TUNING.items():
        if name not in environ and mallopt(param, value) == 1:
            done.append(name)
    return done


def trim() -> bool:
    """Give the pages the C heap holds free back to the system (glibc's malloc_trim), after a job that
    allocated much and freed it (an ingest). Blocks for a few milliseconds: call it off the event loop."""
    libc = _libc()
    malloc_trim = getattr(libc, "malloc_trim", None)
    if malloc_trim is None:
        return False
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(malloc_trim(0))
