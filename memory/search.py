"""Namespaced semantic search over ingested documents; the corpus (tenant) is always explicit."""

from __future__ import annotations

from typing import Any

from langgraph.store.base import BaseStore
from langsmith import traceable


def docs_namespace(corpus: str) -> tuple[str, ...]:
    """The store namespace holding a corpus's chunks: ("docs", corpus)."""
    _check_corpus(corpus)
    return ("docs", corpus)


def meta_namespace(corpus: str) -> tuple[str, ...]:
    """The store namespace holding a corpus's per-file manifest: ("docs_meta", corpus)."""
    _check_corpus(corpus)
    return ("docs_meta", corpus)


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
    docs = [{"page_content": h.get("text", ""), "type": "Document",
             "metadata": {k: v for k, v in h.items() if k != "text"}} for h in hits or []]
    return {"documents": docs}


@traceable(run_type="retriever", name="search_docs", process_inputs=_trace_inputs,
           process_outputs=_trace_outputs)
async def search_docs(store: BaseStore, query: str, *, namespace: str, k: int = 4,
                      filter: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Top-k chunks of one corpus for a query, best first, as plain dicts."""
    ns = docs_namespace(namespace)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not query or not query.strip():
        return []
    items = await store.asearch(ns, query=query, limit=k, filter=filter)
    hits: list[dict[str, Any]] = []
    for item in items:
        v = item.value
        hits.append({
            "key": item.key,
            "text": v.get("text", ""),
            "source": v.get("source", ""),
            "heading": v.get("heading", ""),
            "title": v.get("title", ""),
            "chunk_index": v.get("chunk_index"),
            "score": round(item.score, 4) if item.score is not None else None,
        })
    return hits
