"""Ingest and search against the real AsyncPostgresStore (embedded Postgres + pgvector)."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from langgraph.store.base import PutOp
from langgraph.store.postgres.aio import AsyncPostgresStore
from psycopg.rows import dict_row

from memory.embeddings import EMBED_DIMS, embedding_index_config
from memory.ingest import DocumentError, IngestReport, ingest_paths
from memory.search import docs_namespace, search_docs

OPS = """# Operations

## Scaling out

To handle more load, scale out by starting additional worker processes. Each worker claims pending runs
from the queue in Postgres with SELECT ... FOR UPDATE SKIP LOCKED, so workers never run the same run twice.
Add workers on other machines by pointing them at the same DATABASE_URL. A worker drains its current runs
before exiting when it receives SIGTERM, which makes rolling deploys safe.

## Connection pools

Every process keeps a small pool of Postgres connections. Size the pool to the number of concurrent runs
plus two, and keep the total across all processes below max_connections.
"""

BACKUPS = """# Backups

Back up the database nightly with pg_dump, and test restores regularly. Point-in-time recovery needs WAL
archiving. Keep at least seven daily dumps and four weekly ones, in another region.
"""

COOKING = """Pasta night

Boil salted water, cook the spaghetti for nine minutes, and toss it with tomato sauce, garlic and basil.
Serve with grated parmesan.
"""


def write_corpus(root: Path) -> Path:
    docs = root / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "guide" / "ops.md").write_text(OPS)
    (docs / "backups.md").write_text(BACKUPS)
    (docs / "cooking.txt").write_text(COOKING)
    (docs / "ignored.rst").write_text("not included by the default globs")
    (docs / ".hidden").mkdir()
    (docs / ".hidden" / "secret.md").write_text("# Secret\nhidden folders are skipped")
    return docs


async def rows(db, corpus: str) -> dict:
    """Row counts and newest timestamps of everything a corpus owns (chunks, vectors, manifest)."""
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            """SELECT (SELECT count(*) FROM store WHERE prefix = %(d)s) AS chunks,
                      (SELECT count(*) FROM store WHERE prefix = %(m)s) AS manifest,
                      (SELECT count(*) FROM store_vectors WHERE prefix = %(d)s) AS vectors,
                      (SELECT count(*) FROM store_vectors WHERE prefix = %(m)s) AS manifest_vectors,
                      (SELECT max(updated_at) FROM store WHERE prefix IN (%(d)s, %(m)s)) AS store_updated,
                      (SELECT max(updated_at) FROM store_vectors WHERE prefix = %(d)s) AS vectors_updated""",
            {"d": f"docs.{corpus}", "m": f"docs_meta.{corpus}"},
        )
        return dict(await cur.fetchone())


async def test_ingest_then_search_finds_the_right_source(db, tmp_path):
    docs = write_corpus(tmp_path)
    report = await ingest_paths(db.store, [docs], namespace="main", max_tokens=64, overlap=16, root=tmp_path)
    assert isinstance(report, IngestReport)
    assert (report.files, report.skipped, report.removed) == (3, 0, 0)
    r = await rows(db, "main")
    assert r["chunks"] == report.chunks == r["vectors"]
    assert r["manifest"] == 3 and r["manifest_vectors"] == 0  # the manifest is stored with index=False

    hits = await search_docs(db.store, "how do I scale out workers?", namespace="main", k=3)
    assert hits[0]["source"] == "docs/guide/ops.md"
    assert hits[0]["heading"] == "Operations > Scaling out"
    assert hits[0]["title"] == "Operations"
    assert set(hits[0]) == {"key", "text", "source", "heading", "title", "chunk_index", "score"}
    assert hits[0]["key"] == f"docs/guide/ops.md#{hits[0]['chunk_index']}"
    assert hits[0]["score"] == round(hits[0]["score"], 4) and hits[0]["score"] > hits[-1]["score"]
    assert "worker" in hits[0]["text"]

    assert (await search_docs(db.store, "nightly database dumps", namespace="main", k=1))[0][
        "source"
    ] == "docs/backups.md"
    assert (await search_docs(db.store, "spaghetti recipe", namespace="main", k=1))[0][
        "source"
    ] == "docs/cooking.txt"
    assert await search_docs(db.store, "   ", namespace="main") == []
    filtered = await search_docs(
        db.store, "workers", namespace="main", k=10, filter={"source": "docs/backups.md"}
    )
    assert filtered and {h["source"] for h in filtered} == {"docs/backups.md"}


async def test_reingest_unchanged_writes_nothing(db, tmp_path):
    docs = write_corpus(tmp_path)
    first = await ingest_paths(db.store, [docs], namespace="idem", root=tmp_path)
    before = await rows(db, "idem")
    again = await ingest_paths(db.store, [docs], namespace="idem", root=tmp_path)
    assert again.skipped == again.files == 3 and again.chunks == 0 and again.removed == 0
    assert await rows(db, "idem") == before
    assert first.chunks == before["chunks"]

    # Different chunking parameters are a change, even with identical files.
    rechunked = await ingest_paths(
        db.store, [docs], namespace="idem", root=tmp_path, max_tokens=32, overlap=8
    )
    assert rechunked.skipped == 0 and rechunked.chunks > first.chunks
    assert (await rows(db, "idem"))["chunks"] == rechunked.chunks


async def test_changed_file_replaces_its_chunks(db, tmp_path):
    docs = write_corpus(tmp_path)
    first = await ingest_paths(db.store, [docs], namespace="chg", max_tokens=40, overlap=8, root=tmp_path)
    ops_before = await db.store.asearch(
        docs_namespace("chg"), filter={"source": "docs/guide/ops.md"}, limit=100
    )
    assert len(ops_before) >= 3

    (docs / "guide" / "ops.md").write_text(
        "# Operations\n\nKeel runs on a single Raspberry Pi in the garden shed.\n"
    )
    report = await ingest_paths(db.store, [docs], namespace="chg", max_tokens=40, overlap=8, root=tmp_path)
    assert (report.files, report.skipped, report.chunks) == (3, 2, 1)

    ops_after = await db.store.asearch(
        docs_namespace("chg"), filter={"source": "docs/guide/ops.md"}, limit=100
    )
    assert [i.key for i in ops_after] == ["docs/guide/ops.md#0"]
    assert "Raspberry Pi" in ops_after[0].value["text"]
    r = await rows(db, "chg")
    assert r["chunks"] == r["vectors"] == first.chunks - len(ops_before) + 1
    manifest = await db.store.aget(("docs_meta", "chg"), "docs/guide/ops.md")
    assert manifest.value["chunks"] == 1

    hits = await search_docs(db.store, "SKIP LOCKED queue workers", namespace="chg", k=10)
    assert all("SKIP LOCKED" not in h["text"] for h in hits)
    assert (await search_docs(db.store, "raspberry pi shed", namespace="chg", k=1))[0][
        "source"
    ] == "docs/guide/ops.md"


async def test_removed_file_is_dropped(db, tmp_path):
    docs = write_corpus(tmp_path)
    await ingest_paths(db.store, [docs], namespace="rm", root=tmp_path)
    (docs / "cooking.txt").unlink()
    kept = await ingest_paths(db.store, [docs], namespace="rm", root=tmp_path)
    assert kept.removed == 0, "without --prune a vanished file keeps its chunks"
    assert await db.store.asearch(docs_namespace("rm"), filter={"source": "docs/cooking.txt"})
    report = await ingest_paths(db.store, [docs], namespace="rm", root=tmp_path, prune=True)
    assert (report.files, report.skipped, report.removed) == (2, 2, 1)
    assert await db.store.asearch(docs_namespace("rm"), filter={"source": "docs/cooking.txt"}) == []
    assert await db.store.aget(("docs_meta", "rm"), "docs/cooking.txt") is None


async def test_direct_files_and_sources(db, tmp_path, capsys):
    docs = write_corpus(tmp_path)
    other = tmp_path.parent / f"{tmp_path.name}-outside.md"
    other.write_text("# Outside\nA file outside the root is recorded by its name, not its absolute path.")
    total = (docs / "backups.md").stat().st_size + other.stat().st_size  # the .rst file is not read
    try:
        report = await ingest_paths(
            db.store,
            [docs / "backups.md", other, docs / "ignored.rst"],
            namespace="direct",
            root=tmp_path,
            progress=True,
        )
    finally:
        other.unlink()
    assert report.files == 2
    sources = {i.value["source"] for i in await db.store.asearch(("docs_meta", "direct"), limit=10)}
    assert sources == {"docs/backups.md", other.name}
    err = capsys.readouterr().err  # the tqdm bar goes to stderr
    assert "ingest direct" in err
    # Bytes of the files named are the bar's total (so it has an ETA); chunks and their rate sit beside it.
    assert re.search(rf"100%\|.*\| {total}/{total} \[.*, 2 chunks, [\d.]+ chunks/s\]", err), err
    with pytest.raises(FileNotFoundError):
        await ingest_paths(db.store, [tmp_path / "nope.md"], namespace="direct", root=tmp_path)


async def test_namespace_isolation(db, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "ops.md").write_text(OPS)
    (b / "cooking.txt").write_text(COOKING)
    await ingest_paths(db.store, [a], namespace="a", root=tmp_path)
    await ingest_paths(db.store, [b], namespace="b", root=tmp_path)
    # Also a corpus whose name extends "a": prefix matching must not leak it into "a".
    await ingest_paths(db.store, [b], namespace="ab", root=tmp_path)
    for query in ("scale out workers", "spaghetti", "postgres connection pool"):
        assert {h["source"] for h in await search_docs(db.store, query, namespace="b", k=20)} == {
            "b/cooking.txt"
        }
        assert {h["source"] for h in await search_docs(db.store, query, namespace="a", k=20)} == {"a/ops.md"}


def test_namespace_validation():
    assert docs_namespace("team-1") == ("docs", "team-1")
    for bad in ("", " ", "a.b", "x\x00y"):
        with pytest.raises(ValueError):
            docs_namespace(bad)


async def test_search_requires_namespace_and_valid_k(db):
    with pytest.raises(TypeError):
        await search_docs(db.store, "q")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        await search_docs(db.store, "q", namespace="main", k=0)


async def fill_big_and_small(db) -> None:
    """300 chunks close to the query in a big corpus, 10 far from it in a small one."""
    big = [
        PutOp(docs_namespace("big"), f"b{i}", {"text": f"How to scale out worker processes, variant {i}"})
        for i in range(300)
    ]
    small = [
        PutOp(docs_namespace("small"), f"s{i}", {"text": f"Recipe {i}: pasta with tomato sauce"})
        for i in range(10)
    ]
    for i in range(0, len(big), 32):
        await db.store.abatch(big[i : i + 32])
    await db.store.abatch(small)


async def test_selective_namespace_returns_full_k(db, embeddings):
    await fill_big_and_small(db)
    hits = await search_docs(db.store, "scale out workers", namespace="small", k=8)
    assert len(hits) == 8 and all(h["key"].startswith("s") for h in hits)

    # At this size the planner uses the prefix index and an exact sort, which can't come up short. At
    # scale it picks the HNSW index, whose ef_search (40) candidates may all belong to another corpus.
    # Force that plan on a dedicated connection: Keel's pool setting (iterative scan) must still give k.
    async def forced_hnsw(iterative: str) -> int:
        async with await psycopg.AsyncConnection.connect(
            db.url, autocommit=True, row_factory=dict_row, prepare_threshold=None
        ) as conn:
            for sql in (
                f"SET hnsw.iterative_scan = '{iterative}'",
                "SET enable_seqscan = off",
                "SET enable_bitmapscan = off",
                "SET enable_sort = off",
            ):
                await conn.execute(sql)
            store = AsyncPostgresStore(conn, index=embedding_index_config(embeddings, EMBED_DIMS))
            return len(await search_docs(store, "scale out workers", namespace="small", k=8))

    assert await forced_hnsw("relaxed_order") == 8
    assert await forced_hnsw("off") < 8  # proves the forced plan really is the filtered-HNSW failure mode


async def test_html_and_pdf_documents_and_exclude_globs(db, tmp_path):
    from tests.support.documents import tiny_pdf

    corpus = tmp_path / "mixed"
    (corpus / "drafts").mkdir(parents=True)
    (corpus / "page.html").write_text(
        "<html><head><title>Lighthouse guide</title><style>p{color:red}</style><script>var x = 'secret';</script>"
        "</head><body><h1>Lighthouse guide</h1><h2>Lamp care</h2><p>Polish the Fresnel lens every Tuesday "
        "&amp; log it.</p></body></html>"
    )
    (corpus / "tides.pdf").write_bytes(
        tiny_pdf("Tide tables\n\nThe harbour master publishes tide tables every Sunday morning.")
    )
    (corpus / "drafts" / "wip.md").write_text("# Draft\nUnfinished notes about penguins.")
    report = await ingest_paths(db.store, [corpus], namespace="mixed", root=tmp_path, exclude=["drafts/*"])
    assert report.files == 2
    lens = await search_docs(db.store, "how often is the lens polished", namespace="mixed", k=1)
    assert lens[0]["source"] == "mixed/page.html" and "Fresnel lens" in lens[0]["text"]
    assert (
        "Lamp care" in lens[0]["heading"]
        and "secret" not in lens[0]["text"]
        and "color" not in lens[0]["text"]
    )
    tide = await search_docs(db.store, "when are tide tables published", namespace="mixed", k=1)
    assert tide[0]["source"] == "mixed/tides.pdf" and "Sunday" in tide[0]["text"]
    penguins = await search_docs(db.store, "penguins", namespace="mixed", k=5)
    assert all(h["source"] != "mixed/drafts/wip.md" for h in penguins)


async def test_documents_in_flight_keep_order_and_finish_before_a_bad_one(db, tmp_path):
    """Several documents are written at once; the report keeps input order, and a bad document later in the
    folder stops the ingest only after the ones before it are written whole (a re-run skips them)."""
    from memory.ingest import ingest_documents

    docs = [
        (f"docs/{i:02d}-ops.md", (OPS + f"\n\nPart {i}: " + "More about workers. " * (40 * i)).encode())
        for i in range(6)
    ]
    first = await ingest_documents(db.store, docs, namespace="flight")
    assert [d["source"] for d in first.documents] == [s for s, _ in docs]
    docs[2] = (docs[2][0], docs[2][1] + b"\n\nA changed paragraph.")
    again = await ingest_documents(db.store, docs, namespace="flight")
    assert [(d["source"], d["status"]) for d in again.documents] == [
        (s, "replaced" if i == 2 else "unchanged") for i, (s, _) in enumerate(docs)
    ]
    bad = [
        *docs[:2],
        ("docs/99-new.md", OPS.encode() + b"\n\nnew"),
        ("docs/broken.pdf", b"%PDF-1.4 not really"),
    ]
    with pytest.raises(DocumentError, match="broken.pdf"):
        await ingest_documents(db.store, bad, namespace="flight-bad")
    manifest = {i.key: i.value for i in await db.store.asearch(("docs_meta", "flight-bad"), limit=10)}
    assert set(manifest) == {"docs/00-ops.md", "docs/01-ops.md", "docs/99-new.md"}
    for source, meta in manifest.items():
        chunks = await db.store.asearch(docs_namespace("flight-bad"), filter={"source": source}, limit=100)
        assert len(chunks) == meta["chunks"] > 0
