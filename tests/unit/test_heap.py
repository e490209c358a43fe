"""server/heap.py: collection paused while a process starts, then the start-up heap frozen."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from server import heap


@pytest.fixture
def restore_gc():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()  # the test process's objects go back to being collectable
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_pause_then_settle_freezes_what_exists_and_collects_what_comes_after(restore_gc):
    heap.pause()
    assert not gc.isenabled()
    kept = [[i] for i in range(1000)]  # built "during start-up"
    frozen = heap.settle()
    assert gc.isenabled()
    assert frozen == gc.get_freeze_count() > len(kept)

    class Cycle:
        pass

    a, b = Cycle(), Cycle()
    a.other, b.other = b, a  # garbage made after start-up is still collected
    del a, b
    assert gc.collect() >= 2


def test_resume_collects_without_freezing(restore_gc):
    heap.pause()
    heap.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def _glibc() -> bool:
    maps = Path("/proc/self/maps")
    return maps.exists() and "libc.so.6" in maps.read_text()


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


GLIBC_ONLY = pytest.mark.skipif(not _glibc(), reason="glibc's allocator only: elsewhere these do nothing")


@GLIBC_ONLY
def test_malloc_is_tuned_except_where_the_environment_says_otherwise():
    assert heap.tune_malloc({}) == ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
    kept = heap.tune_malloc({"MALLOC_ARENA_MAX": "8", "MALLOC_TRIM_THRESHOLD_": "0"})
    assert kept == ["MALLOC_MMAP_THRESHOLD_"]


@GLIBC_ONLY
def test_trim_gives_the_pages_of_freed_heap_blocks_back():
    blocks = [bytes(2048) for _ in range(50_000)]  # about 100 MB from the heap (below the mmap threshold)
    last = bytes(2048)  # allocated after them: the heap's top is in use, so free() alone gives nothing back
    del blocks
    held = _rss_mb()
    assert heap.trim()
    assert _rss_mb() < held - 50, "the freed blocks' pages are still resident"
    assert len(last) == 2048
