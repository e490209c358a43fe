"""Source labels of `keel ingest` (memory.ingest.ingest_paths): relative to the working directory, or to the
named directory's parent when it lies elsewhere; never an absolute local path. Re-ingesting a corpus that an
older version labelled with absolute paths replaces those entries instead of duplicating them."""

from __future__ import annotations

import pytest

from memory.ingest import ingest_documents, ingest_paths
from memory.search import docs_namespace, meta_namespace, search_docs

KEEPER = "# Lighthouse keeping\n\nThe keeper trims the wick at dusk. The lens is cleaned every morning.\n"
FOG = "# Fog\n\nSound the horn twice a minute while fog covers the harbour.\n"
TIDES = "<html><head><title>Tides</title></head><body><h1>Tides</h1><p>High water comes later each day.</p></body></html>"


async def labels(db, namespace: str) -> set[str]:
    return {it.key for it in await db.store.asearch(meta_namespace(namespace), limit=100)}


async def chunk_sources(db, namespace: str) -> set[str]:
    return {it.value["source"] for it in await db.store.asearch(docs_namespace(namespace), limit=500)}


@pytest.fixture
def layout(tmp_path):
    """A working directory with docs/ in it, and a documentation folder elsewhere (site/html)."""
    cwd, site = tmp_path / "project", tmp_path / "site" / "html"
    (cwd / "docs" / "guide").mkdir(parents=True)
    (site / "ops").mkdir(parents=True)
    (cwd / "docs" / "keeper.md").write_text(KEEPER)
    (cwd / "docs" / "guide" / "fog.md").write_text(FOG)
    (site / "index.html").write_text(TIDES)
    (site / "ops" / "fog.md").write_text(FOG)
    return cwd, site


async def test_directory_inside_the_working_directory_is_labelled_from_it(db, layout, monkeypatch):
    cwd, _ = layout
    monkeypatch.chdir(cwd)  # `keel ingest docs` from the project root: root defaults to the working directory
    report = await ingest_paths(db.store, ["docs"], namespace="lbl-in")
    assert report.files == 2
    assert await labels(db, "lbl-in") == {"docs/keeper.md", "docs/guide/fog.md"}


async def test_directory_elsewhere_is_labelled_from_its_own_name(db, layout):
    cwd, site = layout
    report = await ingest_paths(db.store, [site], namespace="lbl-out", root=cwd)
    assert report.files == 2
    assert await labels(db, "lbl-out") == {"html/index.html", "html/ops/fog.md"}
    assert await chunk_sources(db, "lbl-out") == {"html/index.html", "html/ops/fog.md"}
    hits = await search_docs(db.store, "When is high water?", namespace="lbl-out", k=3)
    assert hits and all(not h["source"].startswith("/") for h in hits)


async def test_single_file_elsewhere_is_labelled_by_its_name(db, layout):
    cwd, site = layout
    await ingest_paths(
        db.store, [site / "ops" / "fog.md", cwd / "docs" / "keeper.md"], namespace="lbl-one", root=cwd
    )
    assert await labels(db, "lbl-one") == {"fog.md", "docs/keeper.md"}


async def test_prune_finds_vanished_files_of_a_directory_elsewhere(db, layout):
    cwd, site = layout
    await ingest_paths(db.store, [site], namespace="lbl-prune", root=cwd)
    (site / "ops" / "fog.md").unlink()
    report = await ingest_paths(db.store, [site], namespace="lbl-prune", root=cwd, prune=True)
    assert report.removed_sources == ["html/ops/fog.md"]
    assert await labels(db, "lbl-prune") == {"html/index.html"}


async def test_two_folders_with_one_label_are_refused_before_writing(db, layout, tmp_path):
    cwd, site = layout
    other = tmp_path / "mirror" / "html"
    other.mkdir(parents=True)
    (other / "index.html").write_text(TIDES.replace("later", "earlier"))
    with pytest.raises(ValueError, match="html/index.html"):
        await ingest_paths(db.store, [site, other], namespace="lbl-clash", root=cwd)
    assert await labels(db, "lbl-clash") == set()


async def test_reingest_replaces_absolute_labels_of_older_versions(db, layout):
    cwd, site = layout
    # What an older Keel recorded for `keel ingest <site>` run from elsewhere: absolute paths.
    old = [(f.resolve().as_posix(), f.read_bytes()) for f in (site / "index.html", site / "ops" / "fog.md")]
    await ingest_documents(db.store, old, namespace="lbl-legacy")
    assert await labels(db, "lbl-legacy") == {s for s, _ in old}
    # An unrelated absolute label (a file not ingested now) is left alone.
    stray = (cwd / "elsewhere.md").resolve().as_posix()
    await ingest_documents(db.store, [(stray, KEEPER.encode())], namespace="lbl-legacy")

    report = await ingest_paths(db.store, [site], namespace="lbl-legacy", root=cwd)
    assert sorted(report.removed_sources) == sorted(s for s, _ in old)
    assert await labels(db, "lbl-legacy") == {"html/index.html", "html/ops/fog.md", stray}
    assert await chunk_sources(db, "lbl-legacy") == {"html/index.html", "html/ops/fog.md", stray}
    # Idempotent: a second run changes nothing.
    again = await ingest_paths(db.store, [site], namespace="lbl-legacy", root=cwd)
    assert (again.chunks, again.skipped, again.removed) == (0, 2, 0)


async def test_documents_chunked_by_an_older_chunker_are_rechunked_once(db, layout):
    cwd, _ = layout
    await ingest_paths(db.store, [cwd / "docs"], namespace="lbl-rechunk", root=cwd)
    # An entry as an older version wrote it: same text and parameters, no chunker version.
    item = await db.store.aget(meta_namespace("lbl-rechunk"), "docs/keeper.md")
    value = {k: v for k, v in item.value.items() if k != "chunker"}
    await db.store.aput(meta_namespace("lbl-rechunk"), "docs/keeper.md", value, index=False)

    report = await ingest_paths(db.store, [cwd / "docs"], namespace="lbl-rechunk", root=cwd)
    status = {d["source"]: d["status"] for d in report.to_dict(details=True)["documents"]}
    assert status == {"docs/keeper.md": "replaced", "docs/guide/fog.md": "unchanged"}
    again = await ingest_paths(db.store, [cwd / "docs"], namespace="lbl-rechunk", root=cwd)
    assert (again.chunks, again.skipped) == (0, 2)
