"""`keel ingest`, `keel search` and `keel reindex`: the document corpus and its embeddings."""

from __future__ import annotations

import argparse
import asyncio
import json

from server.cli.common import with_db
from server.settings import Settings


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from memory.ingest import ingest_paths
    from server.routes.knowledge import corpus_db_lock

    async def run(db):
        kw = {"include": args.include} if args.include else {}
        async with corpus_db_lock(db.pool, args.namespace):
            return await ingest_paths(
                db.store,
                args.paths,
                namespace=args.namespace,
                max_tokens=args.chunk_tokens,
                overlap=args.overlap,
                progress=not args.quiet,
                exclude=args.exclude or (),
                prune=args.prune,
                **kw,
            )

    report = asyncio.run(with_db(settings, run))
    d = report.to_dict()
    print(
        f"ingested into '{args.namespace}': {d['files']} files, {d['chunks']} chunks written, "
        f"{d['skipped']} unchanged files skipped, {d['removed']} files removed, {d['seconds']:.1f}s"
    )
    return 0


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from memory.search import search_docs

    async def run(db):
        return await search_docs(db.store, args.query, namespace=args.namespace, k=args.k)

    hits = asyncio.run(with_db(settings, run))
    if args.json:
        print(json.dumps(hits, indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no matches")
    for i, h in enumerate(hits, start=1):
        where = h["source"] + (f" — {h['heading']}" if h.get("heading") else "")
        text = " ".join(str(h["text"]).split())
        print(f"[{i}] {h['score']:.3f}  {where}\n    {text[:300]}{'…' if len(text) > 300 else ''}")
    return 0


def cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from memory.embeddings import DEFAULT_EMBEDDINGS, EMBED_DIMS
    from server.db import reindex
    from server.service import open_db

    async def run() -> int:
        db = await open_db(settings, check_embeddings=False)
        try:
            dims = settings.keel_embed_dims or EMBED_DIMS
            return await reindex(db, settings.keel_embeddings or DEFAULT_EMBEDDINGS, dims)
        finally:
            await db.close()

    n = asyncio.run(run())
    print(f"re-embedded {n} item(s) with {settings.keel_embeddings or DEFAULT_EMBEDDINGS}")
    return 0
