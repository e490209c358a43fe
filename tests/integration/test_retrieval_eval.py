"""Retrieval quality on Keel's own docs (the eval set of tests/benchmarks), and the fts/hybrid modes."""

from __future__ import annotations

import pytest

from tests.benchmarks.bench_memory import evaluate, load_eval_set
from tests.conftest import ROOT

KEYS = {"key", "text", "source", "heading", "title", "chunk_index", "score"}


@pytest.fixture(scope="module")
async def corpora(db, tmp_path_factory):
    """docs/ + README.md in corpus "evaldocs", and a small unrelated corpus "other" sharing some words."""
    from memory.ingest import ingest_paths

    await ingest_paths(db.store, [ROOT / "docs", ROOT / "README.md"], namespace="evaldocs", root=ROOT)
    other = tmp_path_factory.mktemp("other")
    (other / "notes.md").write_text(
        "# Other notes\n\nA worker crashed and the lease expired; the pool and Postgres restarted.\n\n"
        "## Tools\n\nThe calculator and the SIGTERM drain are described elsewhere.\n"
    )
    await ingest_paths(db.store, [other], namespace="other", root=other)
    return db


def test_eval_set_covers_every_docs_page():
    questions = load_eval_set()
    assert len(questions) >= 50
    labelled = {s for q in questions for s in q["sources"]}
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")} | {"README.md"}
    assert pages <= labelled, pages - labelled
    assert labelled <= pages, labelled - pages


async def test_dense_recall_at_5(corpora):
    scores = await evaluate(corpora.store, "evaldocs", load_eval_set(), modes=("dense",))
    assert scores["dense"]["recall@5"] >= 0.9, scores


@pytest.mark.parametrize("mode", ["dense", "fts", "hybrid"])
async def test_modes_same_shape_and_no_leak(corpora, mode):
    from memory.search import search_docs

    for query in ("What happens when a worker crashes and its lease expires?", "calculator tool SIGTERM"):
        hits = await search_docs(corpora.store, query, namespace="evaldocs", k=5, mode=mode)
        assert 1 <= len(hits) <= 5
        for h in hits:
            assert set(h) == KEYS
            assert h["source"] != "notes.md" and not h["key"].startswith("notes.md")
            assert isinstance(h["chunk_index"], int) and isinstance(h["score"], float)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        others = await search_docs(corpora.store, query, namespace="other", k=5, mode=mode)
        assert others and all(h["source"] == "notes.md" for h in others)
        assert {h["key"] for h in others}.isdisjoint({h["key"] for h in hits})


async def test_fts_filter_and_modes(corpora):
    from memory.search import search_docs

    hits = await search_docs(
        corpora.store,
        "lease heartbeat",
        namespace="evaldocs",
        k=3,
        mode="fts",
        filter={"source": "docs/operations.md"},
    )
    assert hits and all(h["source"] == "docs/operations.md" for h in hits)
    assert await search_docs(corpora.store, "the and of", namespace="evaldocs", k=3, mode="fts") == []
    with pytest.raises(ValueError):
        await search_docs(corpora.store, "x", namespace="evaldocs", mode="bm25")
    with pytest.raises(ValueError):
        await search_docs(corpora.store, "x", namespace="a.b", mode="fts")


async def test_ensure_fts_index_idempotent(corpora):
    from memory.fts import FTS_INDEX, ensure_fts_index

    await ensure_fts_index(corpora.pool)
    async with corpora.pool.connection() as conn:
        await ensure_fts_index(conn)
        row = await (
            await conn.execute("SELECT count(*) AS n FROM pg_indexes WHERE indexname = %s", (FTS_INDEX,))
        ).fetchone()
    assert row["n"] == 1


async def test_fts_a_rare_word_outranks_common_ones(db, tmp_path):
    """BM25: "liveness" is in one chunk, "server", "endpoint" and "check" in every other one, close together.
    Ranked by ts_rank_cd (no idf) the chunks holding three common query words came first; the one holding the
    rare word has to win."""
    from memory.ingest import ingest_paths
    from memory.search import search_docs

    common = "Check the server endpoint. The server endpoint check runs often."
    pages = {f"p{i}.md": f"# Page {i}\n\n{common} Topic {i} is covered in this page.\n" for i in range(8)}
    pages["probe.md"] = "# Probes\n\nThe liveness of a process is reported by its health route.\n"
    for name, text in pages.items():
        (tmp_path / name).write_text(text)
    await ingest_paths(db.store, [tmp_path], namespace="rare-words", root=tmp_path)
    hits = await search_docs(
        db.store, "Which server endpoint is the liveness check?", namespace="rare-words", k=3, mode="fts"
    )
    assert hits[0]["source"] == "probe.md", [(h["source"], h["score"]) for h in hits]
    # Words in every other chunk still rank (a small positive weight), below the rare match.
    assert len(hits) == 3 and all(h["score"] > 0 for h in hits)
