"""server/heap.py: collection paused while a process starts, then the start-up heap frozen."""

from __future__ import annotations

import gc

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
