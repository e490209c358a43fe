"""Namespaced semantic search over ingested documents; the corpus (tenant) is always explicit."""

from __future__ import annotations

from typing import Any

from langgraph.store.base import BaseStore, Item
from langsmith import traceable

from memory.fts import RRF_K, fts_search, rrf

SEARCH_MODES = ("dense", "fts", "hybrid")
# The default retrieval mode; see docs/benchmarks.md (memory section) for why.
DEFAULT_SEARCH_MODE = "dense"
# Hybrid mode fetches this many candidates per k from each ranking before fusing them.
HYBRID_CANDIDATES_PER_K = 4


CORPUS_LABELS = ("docs", "docs_meta")
"""First labels of the store namespaces that hold document corpora (shared by all users)."""


def docs_namespace(corpus: str) -> tuple[str, ...]:
    """The store namespace holding a corpus's chunks: ("docs", corpus)."""
    _check_corpus(corpus)
    return ("docs", corpus)


def meta_namespace(corpus: str) -> tuple[str, ...]:
    """The store namespace holding a corpus's per-file manifest: ("docs_meta", corpus)."""
    _check_corpus(corpus)
    return ("docs_meta", corpus)


async def list_namespace(store: BaseStore, namespace: tuple[str, ...], *, page: int = 500) -> list[Item]:
    """Every item under a namespace prefix, read page by page (no query, so in the store's order)."""
    items: list[Item] = []
    offset = 0
    while True:
        found = await store.asearch(namespace, limit=page, offset=offset)
        items.extend(found)
        if len(found) < page:
            return items
        offset += page


def _check_corpus(corpus: str) -> None:
    """Reject corpus names the store would mangle or reject."""
    if not isinstance(corpus, str) or not corpus.strip():
        raise ValueError("corpus (namespace) must be a non-empty string")
    # The Postgres store joins labels with "."; a dot would let "a.b" address ("a", "b").
    if "." in corpus or "\x00" in corpus:
        raise ValueError(f"corpus (namespace) may not contain '.' or NUL: {corpus!r}")


def _trace_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Trace the query and corpus, not the store object."""
    return {k: v for k, v in inputs.items() if k != "store"}


def _trace_outputs(hits: Any) -> dict[str, Any]:
    """Retriever runs render as documents in LangSmith when outputs look like this."""
    docs = [
        {
            "page_content": h.get("text", ""),
            "type": "Document",
            "metadata": {k: v for k, v in h.items() if k != "text"},
        }
        for h in hits or []
    ]
    return {"documents": docs}


def _hit(key: str, value: dict[str, Any], score: float | None) -> dict[str, Any]:
    """One search result as a plain dict."""
    return {
        "key": key,
        "text": value.get("text", ""),
        "source": value.get("source", ""),
        "heading": value.get("heading", ""),
        "title": value.get("title", ""),
        "chunk_index": value.get("chunk_index"),
        "score": round(score, 4) if score is not None else None,
    }


def _pool(store: BaseStore) -> Any:
    """The connection pool (or connection) under a Postgres store, for full-text search."""
    conn = getattr(store, "conn", None)
    if conn is None:
        raise ValueError("full-text and hybrid search need a Postgres store (AsyncPostgresStore)")
    return conn


@traceable(
    run_type="retriever", name="search_docs", process_inputs=_trace_inputs, process_outputs=_trace_outputs
)
async def search_docs(
    store: BaseStore,
    query: str,
    *,
    namespace: str,
    k: int = 4,
    filter: dict[str, Any] | None = None,
    mode: str | None = None,
) -> list[dict[str, Any]]:
    """Top-k chunks of one corpus for a query, best first, as plain dicts.

    mode: "dense" (embedding similarity; score = cosine similarity), "fts" (Postgres full-text, any query
    word; score = BM25) or "hybrid" (reciprocal-rank fusion, k=60, of both; score = fused RRF score).
    None means DEFAULT_SEARCH_MODE.
    """
    ns = docs_namespace(namespace)
    mode = mode or DEFAULT_SEARCH_MODE
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not query or not query.strip():
        return []
    if mode == "dense":
        items = await store.asearch(ns, query=query, limit=k, filter=filter)
        return [_hit(it.key, it.value, it.score) for it in items]
    prefix = ".".join(ns)
    if mode == "fts":
        rows = await fts_search(_pool(store), prefix, query, limit=k, filter=filter)
        return [_hit(key, value, rank) for key, value, rank in rows]
    n = HYBRID_CANDIDATES_PER_K * k
    items = await store.asearch(ns, query=query, limit=n, filter=filter)
    rows = await fts_search(_pool(store), prefix, query, limit=n, filter=filter)
    values = {it.key: it.value for it in items}
    values.update({key: value for key, value, _ in rows})
    fused = rrf([[it.key for it in items], [key for key, _, _ in rows]], RRF_K)
    return [_hit(key, values[key], score) for key, score in fused[:k]]
