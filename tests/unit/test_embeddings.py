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
    texts = [f"sentence number {i} about retrieval" for i in range(20)]
    texts[5] = "a much longer sentence about Postgres write-ahead logs and checkpoints " * 8
    a = embeddings.embed_documents(texts)
    b = embeddings.embed_documents(texts)
    assert a == b
    # A text's vector does not depend on the texts embedded with it (the int8 graph quantises activations
    # per inference, so sharing an inference with a longer text would change it).
    assert embeddings.embed_query(texts[3]) == a[3]
    assert embeddings.embed_documents([texts[3], texts[5]])[0] == a[3]


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


def test_default_runs_int8_close_to_fp32(embeddings):
    """The default int8 graph runs integer products and keeps vectors close to the pinned fp32 model's."""
    assert embeddings.precision == "int8"
    fp32 = LocalMiniLMEmbeddings(precision="fp32")
    texts = [
        "To handle more load, start additional worker processes; each worker claims runs from the queue.",
        "Click is a Python package for creating beautiful command line interfaces.",
        "The reaper re-queues a run whose lease expired.",
        "short",
    ]
    for a, b in zip(embeddings.embed_documents(texts), fp32.embed_documents(texts), strict=True):
        assert cos(a, b) > 0.98


def test_int8_graph_is_cached_and_rebuilt_when_corrupt(tmp_path):
    from memory.embeddings import MODEL_SHA256, _default_model_path
    from memory.quantized import int8_graph

    model = _default_model_path()
    first = int8_graph(model, MODEL_SHA256, tmp_path)
    cached = list(tmp_path.glob("*.onnx"))
    assert len(cached) == 1 and cached[0].read_bytes() == first
    cached[0].write_bytes(b"torn write")  # the recorded sha256 no longer matches: rebuilt, not loaded
    assert int8_graph(model, MODEL_SHA256, tmp_path) == first
    assert cached[0].read_bytes() == first
    assert LocalMiniLMEmbeddings(cache_dir=tmp_path).precision == "int8"


def test_unquantisable_model_raises_quantization_error(tmp_path):
    from memory.quantized import QuantizationError, int8_graph

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(QuantizationError, match="could not quantise"):
        int8_graph(bad, "0" * 64, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing half-built is left for the next process


def test_unknown_precision_rejected():
    with pytest.raises(ValueError, match="precision"):
        LocalMiniLMEmbeddings(precision="int4")
