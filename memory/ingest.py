"""Documents -> chunks -> store; idempotent by content hash, with a per-document manifest.

One function, `ingest_documents`, takes (source name, bytes) documents: `keel ingest` reads files and
passes them (`ingest_paths`), the HTTP API passes the request's documents. Source names are labels; this
module never opens a file by a source name.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

from langgraph.store.base import BaseStore, PutOp
from tqdm import tqdm

from memory.chunking import CHUNKER_VERSION, Chunk, chunk_text, content_hash, title_of
from memory.readers import DEFAULT_INCLUDE, SUPPORTED_SUFFIXES, html_to_text, pdf_to_text
from memory.search import docs_namespace, meta_namespace

log = logging.getLogger("keel.memory.ingest")

# Puts per store.abatch: the Postgres store embeds all of a batch's texts in one aembed_documents call.
PUT_BATCH = 32
# Store batches in flight during an ingest: two keep the embedding threads and Postgres busy at once.
IN_FLIGHT = 2
# First page size when listing the manifest or a source's chunk keys (doubled until everything fits).
_PAGE = 1000


class DocumentError(ValueError):
    """A document that cannot be ingested: unsupported format, unreadable content, or a repeated source."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


@dataclass
class IngestReport:
    """What one ingest did."""

    files: int  # documents considered (written + skipped)
    chunks: int  # chunks written
    skipped: int  # documents unchanged since the last ingest
    removed: int  # documents pruned (chunks and manifest entry deleted)
    seconds: float
    # Per document: {"source", "status": "added" | "replaced" | "unchanged", "chunks"}.
    documents: list[dict[str, Any]] = field(default_factory=list)
    removed_sources: list[str] = field(default_factory=list)

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        """As a plain dict (for JSON / CLI output); per-document lists only with `details`."""
        d = asdict(self)
        if not details:
            d.pop("documents")
            d.pop("removed_sources")
        return d


@dataclass(frozen=True)
class PreparedDocument:
    """A document read and chunked, ready to write."""

    source: str
    file_hash: str  # sha256 of the extracted text
    title: str
    chunks: list[Chunk]
    size: int = 0  # bytes read (the progress bar's unit)


def source_name(path: Path, root: Path, named: Path | None = None) -> str:
    """The recorded source of a file: its POSIX path relative to `root` (the working directory of `keel ingest`)
    when the file is under it, as `docs/operations.md`. Otherwise relative to the parent of `named` (the
    directory or file named on the command line), so it starts with that directory's name, as
    `html/index.html`, or is the bare file name. Never an absolute path: a label should read the same on
    every machine and must not reveal the local layout."""
    path = path.resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        pass
    base = (named or path).resolve().parent
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name


def document_format(source: str) -> str:
    """The format of a document, from its source name's extension (".md", ".pdf", ...), as the CLI decides."""
    suffix = PurePosixPath(source.replace("\\", "/")).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentError(
            source,
            f"unsupported extension {suffix or '(none)'!r}; supported: " + ", ".join(SUPPORTED_SUFFIXES),
        )
    return suffix


def document_text(source: str, data: bytes) -> str:
    """The text to chunk, from a document's bytes; the format comes from the source name's extension."""
    suffix = document_format(source)
    if suffix == ".pdf":
        try:
            text = pdf_to_text(data)
        except Exception as exc:  # pypdf raises many types for damaged input
            raise DocumentError(source, f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    else:
        # errors="replace": one stray byte should not stop a whole corpus from ingesting. Newlines are
        # normalised as text-mode reading does, so a file hashes the same however it reached us.
        raw = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        text = html_to_text(raw) if suffix in (".html", ".htm") else raw
    return text.replace("\x00", "")  # Postgres jsonb cannot hold NUL


def prepare_document(
    source: str, data: bytes, *, max_tokens: int = 200, overlap: int = 40
) -> PreparedDocument:
    """Read and chunk one document (blocking: run it in a thread)."""
    text = document_text(source, data)
    stem = PurePosixPath(source.replace("\\", "/")).stem
    return PreparedDocument(
        source,
        content_hash(text),
        title_of(text, stem),
        chunk_text(text, max_tokens=max_tokens, overlap=overlap),
        len(data),
    )


def _walk(directory: Path, include: Sequence[str], exclude: Sequence[str] = ()) -> list[Path]:
    """Files under directory matching an include glob and no exclude glob (matched against the file name
    and the path relative to the directory), sorted; hidden files and folders skipped."""
    found = []
    for p in directory.rglob("*"):
        rel = p.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts):  # .git, .venv, editor swap files...
            continue
        if any(fnmatch(p.name, g) or fnmatch(rel.as_posix(), g) for g in exclude):
            continue
        if p.is_file() and any(fnmatch(p.name, g) for g in include):
            found.append(p)
    return sorted(found)


def _collect(
    paths: Iterable[str | Path], include: Sequence[str], exclude: Sequence[str], root: Path
) -> tuple[list[tuple[Path, str]], list[tuple[Path, Path]]]:
    """(files to ingest with their source names, deduplicated and in order; (directory walked, the folder its
    files' source names are relative to))."""
    files: dict[Path, str] = {}
    dirs: list[tuple[Path, Path]] = []
    root = root.resolve()
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            d = p.resolve()
            dirs.append((d, root if d.is_relative_to(root) else d.parent))
            for f in _walk(p, include, exclude):
                files.setdefault(f.resolve(), source_name(f, root, p))
        elif p.is_file():
            if p.suffix.lower() in SUPPORTED_SUFFIXES:
                files.setdefault(p.resolve(), source_name(p, root, p))
            else:
                log.warning("skipping %s: supported files are %s", p, ", ".join(SUPPORTED_SUFFIXES))
        else:
            # Fail before writing anything: a typo should not look like "nothing changed".
            raise FileNotFoundError(f"no such file or directory: {p}")
    owner: dict[str, Path] = {}
    for f, source in files.items():
        if source in owner:
            raise ValueError(
                f"{owner[source]} and {f} would both be recorded as {source!r}: ingest them from a working "
                "directory that holds both, so their source names differ"
            )
        owner[source] = f
    return list(files.items()), dirs


async def _list_items(
    store: BaseStore, ns: tuple[str, ...], filter: dict[str, Any] | None = None
) -> list[Any]:
    """Every item of a namespace (optionally filtered)."""
    # Not offset paging: without a query the store orders by updated_at, and a batch shares one timestamp,
    # so pages could overlap or skip rows. Ask again with a bigger limit until the answer is short.
    limit = _PAGE
    while True:
        items = await store.asearch(ns, filter=filter, limit=limit)
        if len(items) < limit:
            return items
        limit *= 4


async def _chunk_keys(store: BaseStore, ns: tuple[str, ...], source: str) -> set[str]:
    """Keys of every chunk stored for a source, whatever the manifest says (heals interrupted ingests)."""
    return {it.key for it in await _list_items(store, ns, {"source": source})}


async def _write(store: BaseStore, ops: list[PutOp], slots: asyncio.Semaphore | None = None) -> None:
    """Apply ops in batches of PUT_BATCH, as many at once as `slots` lets through (ops touch distinct keys)."""
    if slots is None:
        for i in range(0, len(ops), PUT_BATCH):
            await store.abatch(ops[i : i + PUT_BATCH])
        return

    async def one(batch: list[PutOp]) -> None:
        async with slots:
            await store.abatch(batch)

    await asyncio.gather(*(one(ops[i : i + PUT_BATCH]) for i in range(0, len(ops), PUT_BATCH)))


def _next_prepared(
    docs: Iterator[tuple[str, bytes]], max_tokens: int, overlap: int
) -> PreparedDocument | None:
    """Pull the next (source, bytes) document and prepare it (blocking: reading a file may happen here)."""
    nxt = next(docs, None)
    return None if nxt is None else prepare_document(nxt[0], nxt[1], max_tokens=max_tokens, overlap=overlap)


async def _prepared(
    documents: Iterable[tuple[str, bytes]], max_tokens: int, overlap: int, all_first: bool
) -> AsyncIterator[PreparedDocument]:
    """Prepared documents in order, each read and chunked in a worker thread; with `all_first`, every document
    is prepared (and so validated) before the first is yielded."""
    it = iter(documents)
    if all_first:
        ready = []
        while (doc := await asyncio.to_thread(_next_prepared, it, max_tokens, overlap)) is not None:
            ready.append(doc)
        for doc in ready:
            yield doc
        return
    while (doc := await asyncio.to_thread(_next_prepared, it, max_tokens, overlap)) is not None:
        yield doc


async def ingest_documents(
    store: BaseStore,
    documents: Iterable[tuple[str, bytes]],
    *,
    namespace: str,
    max_tokens: int = 200,
    overlap: int = 40,
    prepare_all_first: bool = False,
    prune: Callable[[str], bool] | None = None,
    progress: bool = False,
    total_bytes: int | None = None,
) -> IngestReport:
    """Ingest (source name, bytes) documents into corpus `namespace`; the format comes from the source's
    extension. A document whose text and chunking parameters are unchanged (and that this version's chunker
    chunked) is skipped, a changed one has its chunks replaced. `prune(source)` is asked about every source of the corpus not in `documents`; True
    deletes its chunks and manifest entry.

    With `prepare_all_first`, every document is read, parsed and chunked before anything is written, so a
    bad document (DocumentError) leaves the corpus untouched. Otherwise documents are prepared and written
    one at a time (the CLI: memory stays flat for large folders).
    """
    t0 = time.perf_counter()
    ns, meta_ns = docs_namespace(namespace), meta_namespace(namespace)
    if max_tokens <= 0 or not 0 <= overlap < max_tokens:
        raise ValueError(f"need max_tokens > 0 and 0 <= overlap < max_tokens, got {max_tokens}, {overlap}")
    params = {"max_tokens": max_tokens, "overlap": overlap}
    if prepare_all_first:
        documents = list(documents)
        seen_sources: set[str] = set()
        for source, _ in documents:  # a repeated source is ambiguous: refuse before doing any work
            if source in seen_sources:
                raise DocumentError(source, "given more than once")
            seen_sources.add(source)
        total_bytes = sum(len(data) for _, data in documents)
    manifest = {it.key: it.value for it in await _list_items(store, meta_ns)}

    report = IngestReport(files=0, chunks=0, skipped=0, removed=0, seconds=0.0)
    seen: set[str] = set()
    slots = asyncio.Semaphore(IN_FLIGHT)  # store batches (embed + insert) running at once, all documents
    # Bytes read are the unit (known up front from file sizes, so the bar has an ETA); chunks and their rate
    # are shown beside it, since embedding them is where the time goes.
    bar = tqdm(
        desc=f"ingest {namespace}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        total=total_bytes,
        file=sys.stderr,
        disable=not progress,
    )
    # Up to IN_FLIGHT documents are written at once, so Postgres inserts (and the HNSW index updates) of
    # one overlap the embedding of the next; the report still lists documents in input order.
    pending: deque[tuple[PreparedDocument, dict[str, Any], asyncio.Task[None] | None]] = deque()

    async def finish() -> None:
        doc, entry, task = pending.popleft()
        if task is not None:
            await task
            report.chunks += len(doc.chunks)
            rate = report.chunks / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{report.chunks} chunks, {rate:.1f} chunks/s", refresh=False)
        report.documents.append(entry)
        bar.update(doc.size)

    try:
        async for doc in _prepared(documents, max_tokens, overlap, prepare_all_first):
            source = doc.source
            if source in seen:
                raise DocumentError(source, "given more than once")
            seen.add(source)
            report.files += 1
            old = manifest.get(source)
            if (
                old
                and old.get("file_hash") == doc.file_hash
                and old.get("params") == params
                and old.get("chunker") == CHUNKER_VERSION
            ):
                report.skipped += 1
                pending.append(
                    (doc, {"source": source, "status": "unchanged", "chunks": old.get("chunks")}, None)
                )
            else:
                status = "replaced" if old else "added"
                task = asyncio.ensure_future(_write_document(store, ns, meta_ns, doc, params, slots))
                pending.append((doc, {"source": source, "status": status, "chunks": len(doc.chunks)}, task))
            while len(pending) > IN_FLIGHT or (pending and pending[0][2] is None):
                await finish()
        while pending:
            await finish()
    except Exception:
        # A later document failed (unreadable, repeated): the ones before it finish writing, as they would
        # have one at a time, so a re-run skips them.
        await asyncio.gather(*(t for _, _, t in pending if t is not None), return_exceptions=True)
        raise
    except BaseException:  # cancelled or interrupted: stop writing now
        for _, _, running in pending:
            if running is not None:
                running.cancel()
        await asyncio.gather(*(t for _, _, t in pending if t is not None), return_exceptions=True)
        raise
    finally:
        bar.close()

    if prune is not None:
        for source in sorted(manifest):
            if source not in seen and prune(source):
                await _remove_source(store, ns, meta_ns, source)
                report.removed += 1
                report.removed_sources.append(source)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def chunk_value(doc: PreparedDocument, chunk: Chunk) -> dict[str, Any]:
    """The store value of one chunk of a document (what search returns and the agent cites)."""
    return {
        "text": chunk.text,
        "source": doc.source,
        "title": doc.title,
        "heading": chunk.heading,
        "chunk_index": chunk.index,
        "content_hash": content_hash(chunk.text),
        "file_hash": doc.file_hash,
    }


async def _write_document(
    store: BaseStore,
    ns: tuple[str, ...],
    meta_ns: tuple[str, ...],
    doc: PreparedDocument,
    params: dict[str, Any],
    slots: asyncio.Semaphore | None = None,
) -> None:
    """Replace a document's chunks, then record it in the manifest."""
    source = doc.source
    keys = [f"{source}#{c.index}" for c in doc.chunks]
    # Keys 0..n-1 are overwritten by upsert; only keys beyond the new count need deleting.
    stale = await _chunk_keys(store, ns, source) - set(keys)
    ops = [PutOp(ns, k, None) for k in sorted(stale)]
    ops += [PutOp(ns, key, chunk_value(doc, c)) for key, c in zip(keys, doc.chunks, strict=True)]
    await _write(store, ops, slots)
    # The manifest goes last: if we die before this, the next run sees a changed document and redoes it.
    await store.abatch(
        [
            PutOp(
                meta_ns,
                source,
                {
                    "source": source,
                    "file_hash": doc.file_hash,
                    "chunks": len(doc.chunks),
                    "title": doc.title,
                    "params": params,
                    "chunker": CHUNKER_VERSION,
                },
                index=False,
            )
        ]
    )


async def _remove_source(store: BaseStore, ns: tuple[str, ...], meta_ns: tuple[str, ...], source: str) -> int:
    """Delete a source's chunks and manifest entry; return how many chunks were deleted."""
    keys = await _chunk_keys(store, ns, source)
    # Chunks first, manifest last: an interrupted delete leaves an entry the next delete or ingest finishes.
    await _write(store, [PutOp(ns, k, None) for k in sorted(keys)] + [PutOp(meta_ns, source, None)])
    return len(keys)


async def list_sources(store: BaseStore, *, namespace: str) -> list[dict[str, Any]]:
    """The manifest of a corpus: one entry per ingested document (source, chunks, file_hash, title, params,
    updated_at), sorted by source."""
    items = await _list_items(store, meta_namespace(namespace))
    out = []
    for it in items:
        v = it.value
        out.append(
            {
                "source": v.get("source", it.key),
                "chunks": v.get("chunks"),
                "file_hash": v.get("file_hash"),
                "title": v.get("title"),
                "params": v.get("params"),
                "updated_at": it.updated_at.isoformat() if getattr(it, "updated_at", None) else None,
            }
        )
    return sorted(out, key=lambda s: s["source"])


async def delete_source(store: BaseStore, *, namespace: str, source: str) -> int | None:
    """Delete one document of a corpus (chunks and manifest entry); the number of chunks deleted, or None when
    the corpus has neither a manifest entry nor chunks for that source."""
    ns, meta_ns = docs_namespace(namespace), meta_namespace(namespace)
    known = await store.aget(meta_ns, source) is not None
    if not known and not await _chunk_keys(store, ns, source):
        return None
    return await _remove_source(store, ns, meta_ns, source)


def _read_files(files: list[tuple[Path, str]]) -> Iterator[tuple[str, bytes]]:
    """(source name, bytes) of each file, read lazily."""
    for path, source in files:
        yield source, path.read_bytes()


def _vanished_from(dirs: list[tuple[Path, Path]], include: Sequence[str]) -> Callable[[str], bool]:
    """Prune rule of the CLI: a source whose file is gone from a directory walked this time (and that the
    include globs would have taken). A file ingested on its own, or under a folder not named, is left alone."""

    def gone(source: str) -> bool:
        for walked, base in dirs:
            path = Path(source) if Path(source).is_absolute() else base / source
            if path.is_relative_to(walked) and any(fnmatch(path.name, g) for g in include):
                return not path.exists()
        return False

    return gone


async def ingest_paths(
    store: BaseStore,
    paths: list[str | Path],
    *,
    namespace: str,
    max_tokens: int = 200,
    overlap: int = 40,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = (),
    root: Path | None = None,
    progress: bool = False,
    prune: bool = False,
) -> IngestReport:
    """Ingest files and directories into corpus `namespace`; unchanged files are skipped, changed ones replaced;
    with `prune`, files that vanished from a walked directory lose their chunks. Source names follow
    `source_name`; a document recorded by an earlier version under its absolute path is replaced by the same
    file under its new name (its old entry and chunks are deleted), so re-ingesting never leaves duplicates."""
    docs_namespace(namespace)  # validate before touching the filesystem
    if max_tokens <= 0 or not 0 <= overlap < max_tokens:
        raise ValueError(f"need max_tokens > 0 and 0 <= overlap < max_tokens, got {max_tokens}, {overlap}")
    root = Path(root) if root is not None else Path.cwd()
    if isinstance(paths, str | Path):  # a lone path would otherwise be iterated character by character
        paths = [paths]
    files, dirs = await asyncio.to_thread(_collect, paths, tuple(include), tuple(exclude), root)
    total_bytes = await asyncio.to_thread(lambda: sum(path.stat().st_size for path, _ in files))
    # Sources that earlier versions recorded as absolute paths, for files ingested now under another name.
    legacy = {path.as_posix() for path, source in files if path.as_posix() != source}
    vanished = _vanished_from(dirs, tuple(include)) if prune else None

    def drop(source: str) -> bool:
        return source in legacy or (vanished is not None and vanished(source))

    return await ingest_documents(
        store,
        _read_files(files),
        namespace=namespace,
        max_tokens=max_tokens,
        overlap=overlap,
        prune=drop,
        progress=progress,
        total_bytes=total_bytes,
    )
