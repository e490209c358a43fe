"""A revision's retrieval (the critic found the first pass weak) takes hybrid and full-text results in turns, so
a passage that names the question's rare words is found even when hybrid ranks passages closer in meaning first,
and a revision changes what is retrieved even when its query cannot."""

from __future__ import annotations

from agent.context import Context
from agent.nodes.retrieve import search_corpus
from memory.search import search_docs

NS = "revision-pass"
DOCS = {
    "ops.md#health": (
        "ops.md",
        "Health checks",
        "GET /ok needs no API key. Use it as the liveness and readiness probe of keel serve.",
    ),
    **{
        f"api.md#endpoint{i}": (
            "api.md",
            f"Endpoints {i}",
            f"Which endpoint should a client use? Endpoint {i} is the one a client should use for streaming, "
            f"and an endpoint like it answers every client that should use it.",
        )
        for i in range(6)
    },
}
QUESTION = "Which endpoint should I use as a liveness probe?"


async def test_a_revision_takes_full_text_matches_in_turns_with_hybrid(db):
    for key, (source, heading, text) in DOCS.items():
        await db.store.aput(
            ("docs", NS), key, {"text": text, "source": source, "heading": heading, "title": source}
        )
    ctx = Context(namespace=NS, retrieve_k=1)
    hybrid = await search_docs(db.store, QUESTION, namespace=NS, k=2, mode="hybrid")
    fts = await search_docs(db.store, QUESTION, namespace=NS, k=2, mode="fts")
    found = await search_corpus(db.store, QUESTION, ctx, 1)
    # Hybrid ranks the passages full of the question's common words first...
    assert "ops.md#health" not in [h["key"] for h in hybrid], hybrid
    assert fts[0]["key"] == "ops.md#health", fts
    # ... the revision's full-text half finds the one naming "liveness" and "probe".
    assert [h["key"] for h in found] == [hybrid[0]["key"], "ops.md#health"], found
