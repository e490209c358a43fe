"""Files -> chunks -> store; idempotent by content hash, with a per-file manifest."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from langgraph.store.base import BaseStore, PutOp
from tqdm import tqdm

from memory.chunking import Chunk, chunk_text, content_hash, title_of
from memory.readers import DEFAULT_INCLUDE, SUPPORTED_SUFFIXES, read_document
from memory.search import docs_namespace, meta_namespace

log = logging.getLogger("keel.memory.ingest")

# Puts per store.abatch: the Postgres store embeds all of a batch's texts in one aembed_documents call.
PUT_BATCH = 32
# First page size when listing the manifest or a source's chunk keys (doubled until everything fits).
_PAGE = 1000
DIRECT_SUFFIXES = SUPPORTED_SUFFIXES


@dataclass
class IngestReport:
    """What one ingest did."""

    files: int  # files considered (written + skipped)
    chunks: int  # chunks written
    skipped: int  # files unchanged since the last ingest
    removed: int  # files gone from a walked directory whose chunks were deleted
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """As a plain dict (for JSON / CLI output)."""
        return asdict(self)


def source_name(path: Path, root: Path) -> str:
    """The recorded source: POSIX path relative to root when possible, else the absolute path."""
    path = path.resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


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


def _collect(paths: Iterable[str | Path], include: Sequence[str],
             exclude: Sequence[str] = ()) -> tuple[list[Path], list[Path]]:
    """(files to ingest, deduplicated and in order; directories walked)."""
    files: dict[Path, None] = {}
    dirs: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            dirs.append(p.resolve())
            for f in _walk(p, include, exclude):
                files.setdefault(f.resolve())
        elif p.is_file():
            if p.suffix.lower() in DIRECT_SUFFIXES:
                files.setdefault(p.resolve())
            else:
                log.warning("skipping %s: supported files are %s", p, ", ".join(SUPPORTED_SUFFIXES))
        else:
            # Fail before writing anything: a typo should not look like "nothing changed".
            raise FileNotFoundError(f"no such file or directory: {p}")
    return list(files), dirs


def _prepare(path: Path, max_tokens: int, overlap: int) -> tuple[str, str, list[Chunk]]:
    """Read and chunk one file (blocking; run in a thread): (file hash, title, chunks)."""
    text = read_document(path)
    return content_hash(text), title_of(text, path.stem), chunk_text(text, max_tokens=max_tokens, overlap=overlap)


async def _list_items(store: BaseStore, ns: tuple[str, ...], filter: dict[str, Any] | None = None) -> list[Any]:
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


async def _write(store: BaseStore, ops: list[PutOp]) -> None:
    """Apply ops in batches of PUT_BATCH."""
    for i in range(0, len(ops), PUT_BATCH):
        await store.abatch(ops[i:i + PUT_BATCH])


async def ingest_paths(store: BaseStore, paths: list[str | Path], *, namespace: str, max_tokens: int = 200,
                       overlap: int = 40, include: Sequence[str] = DEFAULT_INCLUDE, exclude: Sequence[str] = (),
                       root: Path | None = None, progress: bool = False, prune: bool = False) -> IngestReport:
    """Ingest files and directories into corpus `namespace`; unchanged files are skipped, changed ones replaced;
    with `prune`, files that vanished from a walked directory lose their chunks."""
    t0 = time.perf_counter()
    ns, meta_ns = docs_namespace(namespace), meta_namespace(namespace)
    if max_tokens <= 0 or not 0 <= overlap < max_tokens:
        raise ValueError(f"need max_tokens > 0 and 0 <= overlap < max_tokens, got {max_tokens}, {overlap}")
    root = Path(root) if root is not None else Path.cwd()
    if isinstance(paths, str | Path):  # a lone path would otherwise be iterated character by character
        paths = [paths]
    files, dirs = await asyncio.to_thread(_collect, paths, tuple(include), tuple(exclude))
    params = {"max_tokens": max_tokens, "overlap": overlap}
    manifest = {it.key: it.value for it in await _list_items(store, meta_ns)}

    report = IngestReport(files=0, chunks=0, skipped=0, removed=0, seconds=0.0)
    seen: set[str] = set()
    for path in tqdm(files, desc=f"ingest {namespace}", unit="file", file=sys.stderr, disable=not progress):
        source = source_name(path, root)
        seen.add(source)
        report.files += 1
        file_hash, title, chunks = await asyncio.to_thread(_prepare, path, max_tokens, overlap)
        old = manifest.get(source)
        if old and old.get("file_hash") == file_hash and old.get("params") == params:
            report.skipped += 1
            continue
        keys = [f"{source}#{c.index}" for c in chunks]
        # Keys 0..n-1 are overwritten by upsert; only keys beyond the new count need deleting.
        stale = await _chunk_keys(store, ns, source) - set(keys)
        ops = [PutOp(ns, k, None) for k in sorted(stale)]
        ops += [
            PutOp(ns, key, {
                "text": c.text, "source": source, "title": title, "heading": c.heading,
                "chunk_index": c.index, "content_hash": content_hash(c.text), "file_hash": file_hash,
            })
            for key, c in zip(keys, chunks, strict=True)
        ]
        await _write(store, ops)
        # The manifest goes last: if we die before this, the next run sees a changed file and redoes it.
        await store.abatch([PutOp(meta_ns, source, {
            "source": source, "file_hash": file_hash, "chunks": len(chunks), "title": title, "params": params,
        }, index=False)])
        report.chunks += len(chunks)

    if prune:
        report.removed = await _remove_missing(store, ns, meta_ns, manifest, dirs, root, include, seen)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


async def _remove_missing(store: BaseStore, ns: tuple[str, ...], meta_ns: tuple[str, ...],
                          manifest: dict[str, Any], dirs: list[Path], root: Path, include: Sequence[str],
                          seen: set[str]) -> int:
    """Delete chunks and manifest entries of files that vanished from a walked directory; return how many."""
    root = root.resolve()
    walked = [d.resolve() for d in dirs]
    removed = 0
    for source in sorted(manifest):
        if source in seen:
            continue
        path = Path(source) if Path(source).is_absolute() else root / source
        # Only files that are gone, from a directory we walked: a file ingested on its own, or one
        # under a folder not named this time, is left alone.
        if path.exists() or not any(path.is_relative_to(d) for d in walked):
            continue
        if not any(fnmatch(path.name, g) for g in include):
            continue
        keys = await _chunk_keys(store, ns, source)
        await _write(store, [PutOp(ns, k, None) for k in sorted(keys)] + [PutOp(meta_ns, source, None)])
        removed += 1
    return removed
