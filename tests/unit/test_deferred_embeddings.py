"""DeferredEmbeddings: the embedding model is built on first use (or by start() in a thread), once, and a
failed build is reported to the caller and tried again, never kept."""

from __future__ import annotations

import asyncio
import threading

import pytest
from langchain_core.embeddings import Embeddings

from memory.embeddings import DeferredEmbeddings, EmbeddingModelError, LocalMiniLMEmbeddings, get_embeddings


class Counting(Embeddings):
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(t))] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return [float(len(text))]


class Factory:
    """Counts builds; can be told to fail or to wait for a gate."""

    def __init__(self, fail: int = 0, gate: threading.Event | None = None) -> None:
        self.builds = 0
        self.fail = fail
        self.gate = gate

    def __call__(self) -> Embeddings:
        self.builds += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise EmbeddingModelError("model file is broken")
        return Counting()


def test_not_built_until_first_use_then_once():
    f = Factory()
    d = DeferredEmbeddings(f)
    assert f.builds == 0 and not d.loaded
    assert d.embed_query("abc") == [3.0]
    assert d.embed_documents(["a", "bb"]) == [[1.0], [2.0]]
    assert f.builds == 1 and d.loaded


async def test_async_use_builds_once_however_many_race():
    gate = threading.Event()
    f = Factory(gate=gate)
    d = DeferredEmbeddings(f)
    calls = [asyncio.ensure_future(d.aembed_query("x" * i)) for i in range(1, 9)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*calls) == [[float(i)] for i in range(1, 9)]
    assert await d.aembed_documents(["abcd"]) == [[4.0]]
    assert f.builds == 1


def test_failed_build_is_raised_and_retried():
    f = Factory(fail=1)
    d = DeferredEmbeddings(f)
    with pytest.raises(EmbeddingModelError, match="broken"):
        d.embed_query("a")
    assert not d.loaded
    assert d.embed_query("ab") == [2.0]
    assert f.builds == 2


def test_start_builds_in_a_thread_and_first_use_waits_for_it():
    gate = threading.Event()
    f = Factory(gate=gate)
    d = DeferredEmbeddings(f)
    thread = d.start()
    assert thread.daemon and thread.is_alive() and not d.loaded
    gate.set()
    thread.join(10)
    assert d.loaded and f.builds == 1
    assert d.embed_query("abc") == [3.0]
    assert f.builds == 1


def test_start_failure_is_logged_and_left_to_first_use(caplog):
    f = Factory(fail=1)
    d = DeferredEmbeddings(f)
    d.start().join(10)
    assert "could not load the embedding model in the background" in caplog.text
    assert not d.loaded
    assert d.embed_query("a") == [1.0]


def test_get_embeddings_deferred_wraps_the_shared_local_model(embeddings):
    d = get_embeddings(None, deferred=True)
    assert isinstance(d, DeferredEmbeddings) and not d.loaded
    assert isinstance(d.get(), LocalMiniLMEmbeddings)
    assert d.get() is get_embeddings(None)  # no second model session in the process
