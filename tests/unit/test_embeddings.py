"""The offline MiniLM embedder: shape, normalisation, sense, determinism, and refusing bad files."""

from __future__ import annotations

import asyncio
import math

import pytest

from memory.embeddings import (
    DEFAULT_EMBEDDINGS,
    EMBED_DIMS,
    EmbeddingModelError,
    LocalMiniLMEmbeddings,
    embedding_index_config,
    get_embeddings,
    get_tokenizer,
)


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_dims_and_normalised(embeddings):
    vecs = embeddings.embed_documents(["hello world", "a much longer sentence about Postgres " * 20, ""])
    assert len(vecs) == 3
    for v in vecs:
        assert len(v) == EMBED_DIMS
        assert all(type(x) is float for x in v)
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-4)
    assert embeddings.embed_documents([]) == []


def test_semantically_sensible(embeddings):
    q = embeddings.embed_query("how do I scale out workers")
    scaling, unrelated = embeddings.embed_documents(
        [
            "To handle more load, start additional worker processes; each worker claims runs from the queue.",
            "The cafeteria serves pasta and salad on Tuesdays.",
        ]
    )
    assert cos(q, scaling) > cos(q, unrelated) + 0.2


def test_deterministic_and_batch_independent(embeddings):
    texts = [f"sentence number {i} about retrieval" for i in range(20)]  # > one batch of 16
    a = embeddings.embed_documents(texts)
    b = embeddings.embed_documents(texts)
    assert a == b
    # Padding to the longest in a batch must not change a text's vector.
    alone = embeddings.embed_query(texts[3])
    assert cos(alone, a[3]) > 0.9999


async def test_async_variants_match(embeddings):
    q, docs = await asyncio.gather(
        embeddings.aembed_query("scale out"), embeddings.aembed_documents(["scale out"])
    )
    assert cos(q, docs[0]) > 0.9999


def test_default_is_cached_and_local():
    for name in (None, "", "local", DEFAULT_EMBEDDINGS):
        assert isinstance(get_embeddings(name), LocalMiniLMEmbeddings)
    assert get_embeddings(None) is get_embeddings("local")


def test_unknown_provider_raises_with_name():
    with pytest.raises(EmbeddingModelError, match="nosuchprovider:model"):
        get_embeddings("nosuchprovider:model")


def test_model_hash_mismatch_raises(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EmbeddingModelError, match="sha256"):
        LocalMiniLMEmbeddings(model_path=bad)


def test_tokenizer_hash_mismatch_raises(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    with pytest.raises(EmbeddingModelError, match="sha256"):
        LocalMiniLMEmbeddings(tokenizer_path=bad)


def test_missing_model_raises(tmp_path):
    with pytest.raises(EmbeddingModelError, match="not found"):
        LocalMiniLMEmbeddings(model_path=tmp_path / "missing.onnx")


def test_index_config(embeddings):
    cfg = embedding_index_config(embeddings, EMBED_DIMS)
    assert cfg["dims"] == 384 and cfg["embed"] is embeddings and cfg["fields"] == ["text"]
    assert cfg["distance_type"] == "cosine"
    assert cfg["ann_index_config"] == {"kind": "hnsw", "m": 16, "ef_construction": 64}


def test_tokenizer_untruncated():
    tok = get_tokenizer()
    assert tok is get_tokenizer()
    enc = tok.encode("word " * 1000, add_special_tokens=False)
    assert len(enc.ids) == 1000
