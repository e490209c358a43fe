"""The garbage collector of a `keel serve` or `keel worker` process around its start-up.

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

import gc


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
