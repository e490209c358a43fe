"""KEEL_EMBED_LOAD: when a server's database handle loads the embedding model (before serving, in a thread
right after the database opens, or at the first embedding)."""

from __future__ import annotations

import asyncio
import time

import pytest

from memory.embeddings import DeferredEmbeddings, LocalMiniLMEmbeddings
from server.service import open_db
from server.settings import Settings
from tests.support.live import MODEL_CACHE


async def _until_loaded(e: DeferredEmbeddings, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not e.loaded and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return e.loaded


@pytest.mark.parametrize("mode", ["start", "first-use", "background"])
async def test_open_db_embed_load_modes(database_url, tmp_path, embeddings, mode):
    settings = Settings(database_url=database_url, keel_home=tmp_path, keel_model_cache=MODEL_CACHE)
    db = await open_db(settings, embed_load=mode)
    try:
        e = db.embeddings
        if mode == "start":
            assert isinstance(e, LocalMiniLMEmbeddings)
            return
        assert isinstance(e, DeferredEmbeddings)
        if mode == "first-use":
            await asyncio.sleep(0.2)  # nothing builds it behind our back
            assert not e.loaded
            assert len(await db.store.asearch(("docs", "x"), query="what is keel?")) == 0
            assert e.loaded  # the store's query embedding built it
        else:
            assert await _until_loaded(e)  # without any embedding asked for
        assert e.get() is embeddings  # the process's one model session
    finally:
        await db.close()


def test_setting_defaults_to_background(monkeypatch):
    monkeypatch.delenv("KEEL_EMBED_LOAD", raising=False)
    assert Settings().keel_embed_load == "background"
    monkeypatch.setenv("KEEL_EMBED_LOAD", "first-use")
    assert Settings().keel_embed_load == "first-use"
