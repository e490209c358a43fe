"""The embedding model is recorded with the index: a different model is refused until `reindex` rebuilds it."""

from __future__ import annotations

import hashlib

import pytest
from langchain_core.embeddings import Embeddings

from memory.embeddings import DEFAULT_EMBEDDINGS, EMBED_DIMS
from server.db import EmbeddingMismatch, open_database, reindex


class TinyEmbeddings(Embeddings):
    """A deterministic 8-dimensional stand-in for "another model" (only its shape matters here)."""

    def _one(self, text: str) -> list[float]:
        h = hashlib.sha256(text.lower().encode()).digest()
        v = [b / 255 for b in h[:8]]
        n = sum(x * x for x in v) ** 0.5 or 1.0
        return [x / n for x in v]

    def embed_documents(self, texts):
        return [self._one(t) for t in texts]

    def embed_query(self, text):
        return self._one(text)


async def test_model_change_is_refused_then_reindexed(fresh_database_url, embeddings):
    db = await open_database(fresh_database_url, embeddings=embeddings, dims=EMBED_DIMS)
    await db.store.aput(("memories", "u"), "a", {"text": "the user keeps bees"})
    await db.store.aput(("memories", "u"), "b", {"text": "the user drives a red car"})
    await db.close()

    tiny = TinyEmbeddings()
    with pytest.raises(EmbeddingMismatch, match="keel reindex"):
        await open_database(fresh_database_url, embeddings=tiny, dims=8, embeddings_name="tiny:v1")

    db = await open_database(
        fresh_database_url, embeddings=tiny, dims=8, embeddings_name="tiny:v1", check_embeddings=False
    )
    try:
        assert await reindex(db, "tiny:v1", 8) == 2
        hits = await db.store.asearch(("memories", "u"), query="the user keeps bees", limit=2)
        assert [h.key for h in hits][0] == "a" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    finally:
        await db.close()
    db = await open_database(fresh_database_url, embeddings=tiny, dims=8, embeddings_name="tiny:v1")
    await db.close()
    with pytest.raises(EmbeddingMismatch):
        await open_database(
            fresh_database_url, embeddings=embeddings, dims=EMBED_DIMS, embeddings_name=DEFAULT_EMBEDDINGS
        )
