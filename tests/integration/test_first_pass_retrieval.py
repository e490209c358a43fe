"""A turn's first retrieval takes hybrid (dense + full-text, fused) and dense results in turns on Postgres, so
a passage that names the question's rare word is found even when the embedding model scores others closer,
and the passage closest in meaning is kept."""

from __future__ import annotations

from agent.context import Context
from agent.nodes.retrieve import search_corpus
from memory.search import search_docs

NS = "first-pass"
DOCS = {
    "ops.md#health": (
        "ops.md",
        "Health checks",
        "GET /ok answers after a round trip to Postgres, so it fails when the database is unreachable. "
        "Use it as the liveness and readiness probe of keel serve.",
    ),
    "api.md#fuzz": (
        "api.md",
        "Input rules",
        "A property-based fuzz run checks the live server against the endpoint schema it should use.",
    ),
    "api.md#stream": (
        "api.md",
        "Streaming",
        "Each endpoint that streams answers with server-sent events; a client should use Last-Event-ID.",
    ),
    "ops.md#metrics": (
        "ops.md",
        "Metrics",
        "Point Prometheus at the endpoint given by --metrics-port to scrape the worker's run counters.",
    ),
}
QUESTION = "Which endpoint should I use as a liveness probe?"


async def test_the_first_pass_finds_the_passage_naming_a_rare_question_word(db):
    for key, (source, heading, text) in DOCS.items():
        await db.store.aput(
            ("docs", NS), key, {"text": text, "source": source, "heading": heading, "title": source}
        )
    ctx = Context(namespace=NS, retrieve_k=2)
    dense = await search_docs(db.store, QUESTION, namespace=NS, k=2)
    found = await search_corpus(db.store, QUESTION, ctx, 0)
    # The embedding model splits "liveness" into word pieces and ranks the health-check passage low...
    assert "ops.md#health" not in [h["key"] for h in dense], dense
    # ... the full-text half of the first pass matches the word itself.
    assert len(found) == 2 and "ops.md#health" in [h["key"] for h in found], found
    assert dense[0]["key"] in [h["key"] for h in found]
