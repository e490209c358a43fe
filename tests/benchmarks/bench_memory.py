"""Memory figures: retrieval quality of dense, full-text and hybrid search on Keel's own docs, and
HNSW against exact search on synthetic vectors (latency, recall@10, storage per chunk).

Side by side in one run, on one scratch Postgres.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from psycopg.rows import tuple_row

from tests.benchmarks.common import ROOT, new_db, pct, scratch_postgres, table

EVAL_SET = Path(__file__).with_name("eval_set.json")
MODES = ("dense", "fts", "hybrid")
CORPUS_PATHS = [ROOT / "docs", ROOT / "README.md"]
SYNTH_PREFIX = "docs.synth"
SIZES = (10_000, 100_000)
QUERIES = 100
# The 100k step is skipped when the 10k load + index build took longer than this (keeps the section short).
MAX_10K_SECONDS = 20.0


def load_eval_set() -> list[dict[str, Any]]:
    """The questions of eval_set.json: [{"q": ..., "sources": [...]}, ...]."""
    return json.loads(EVAL_SET.read_text())["questions"]


async def evaluate(store: Any, namespace: str, questions: list[dict[str, Any]], modes=MODES,
                   depth: int = 10) -> dict[str, dict[str, float]]:
    """recall@1, recall@5 and MRR@depth of each search mode (a hit counts if its source is labelled)."""
    from memory.search import search_docs

    out: dict[str, dict[str, float]] = {}
    for mode in modes:
        r1 = r5 = rr = 0.0
        for item in questions:
            hits = await search_docs(store, item["q"], namespace=namespace, k=depth, mode=mode)
            ranks = [i for i, h in enumerate(hits, start=1) if h["source"] in item["sources"]]
            first = ranks[0] if ranks else None
            r1 += first == 1
            r5 += first is not None and first <= 5
            rr += 1.0 / first if first else 0.0
        n = len(questions)
        out[mode] = {"recall@1": r1 / n, "recall@5": r5 / n, "MRR@10": rr / n}
    return out


async def _sql(pool: Any, sql: str, params: Any = None) -> list[tuple]:
    """Rows (as tuples) of one statement on a pooled connection."""
    async with pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall() if cur.description else []


def _vec(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v) + "]"


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def _load(pool: Any, start: int, vectors: np.ndarray, values: list[dict[str, Any]]) -> None:
    """COPY synthetic rows into store and store_vectors (chunk texts reused from the real corpus)."""
    store_buf, vec_buf = io.StringIO(), io.StringIO()
    for i, v in enumerate(vectors, start=start):
        key = f"synth#{i}"
        value = json.dumps({**values[i % len(values)], "source": "synth", "chunk_index": i})
        store_buf.write(f"{SYNTH_PREFIX}\t{key}\t{value.replace(chr(92), chr(92) * 2)}\n")
        vec_buf.write(f"{SYNTH_PREFIX}\t{key}\ttext\t{_vec(v)}\n")
    async with pool.connection() as conn:
        async with conn.cursor().copy("COPY store (prefix, key, value) FROM STDIN") as cp:
            await cp.write(store_buf.getvalue())
        async with conn.cursor().copy("COPY store_vectors (prefix, key, field_name, embedding) FROM STDIN") as cp:
            await cp.write(vec_buf.getvalue())


async def _knn(pool: Any, q: np.ndarray, *, exact: bool, ef_search: int = 40) -> tuple[list[str], float]:
    """Top-10 keys of the synthetic corpus by cosine distance, and the query's latency in seconds."""
    sql = ("SELECT key FROM store_vectors WHERE prefix = %s AND field_name = 'text' "
           "ORDER BY embedding <=> %s::vector LIMIT 10")
    async with pool.connection() as conn, conn.transaction():
        if exact:
            await conn.execute("SET LOCAL enable_indexscan = off")
        else:
            await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        t = time.perf_counter()
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(sql, (SYNTH_PREFIX, _vec(q)))
            rows = await cur.fetchall()
        return [r[0] for r in rows], time.perf_counter() - t


async def _size_per_chunk(pool: Any) -> tuple[float, int]:
    (size, n), = await _sql(pool, "SELECT pg_total_relation_size('store') + pg_total_relation_size('store_vectors'), "
                                  "(SELECT count(*) FROM store_vectors)")
    return size / max(n, 1), n


async def _hnsw_vs_exact(db: Any, values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    pool = db.pool
    (idx,), = await _sql(pool, "SELECT indexdef FROM pg_indexes WHERE indexname = 'store_vectors_embedding_idx'")
    rows: list[dict[str, Any]] = []
    loaded = 0
    data = np.empty((0, 384), dtype=np.float32)
    for size in SIZES:
        t0 = time.perf_counter()
        new = _unit(rng, size - loaded)
        async with pool.connection() as conn:
            await conn.execute("DROP INDEX IF EXISTS store_vectors_embedding_idx")
        await _load(pool, loaded, new, values)
        t_load = time.perf_counter() - t0
        t = time.perf_counter()
        async with pool.connection() as conn:
            await conn.execute("SET maintenance_work_mem = '512MB'")
            await conn.execute(idx)
            await conn.execute("ANALYZE store_vectors")
            await conn.execute("ANALYZE store")
        t_build = time.perf_counter() - t
        data = np.vstack([data, new])
        loaded = size
        # Queries near stored points (a stored vector plus noise), like a question near its answer.
        picks = data[rng.integers(0, len(data), QUERIES)]
        queries = picks + 0.05 * _unit(rng, QUERIES) * 3
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for q in queries[:5]:  # warm the cache
            await _knn(pool, q, exact=False)
            await _knn(pool, q, exact=True)
        exact_keys, exact_first, exact_lat = [], [], []
        for q in queries:
            keys, s = await _knn(pool, q, exact=True)
            exact_keys.append(set(keys))
            exact_first.append(keys[0])
            exact_lat.append(s)
        per_chunk, _ = await _size_per_chunk(pool)
        rows.append({"vectors": f"{size:,}", "search": "exact (seq scan)", "p50 ms": pct(exact_lat, 50) * 1000,
                     "p95 ms": pct(exact_lat, 95) * 1000, "recall@10": 1.0, "top-1 found": 1.0,
                     "load s": t_load, "HNSW build s": t_build, "bytes/chunk": per_chunk})
        for ef in (40, 100):
            lat, rec, top1 = [], 0.0, 0
            for q, truth, first in zip(queries, exact_keys, exact_first, strict=True):
                keys, s = await _knn(pool, q, exact=False, ef_search=ef)
                lat.append(s)
                rec += len(truth & set(keys)) / 10
                top1 += first in keys
            rows.append({"vectors": f"{size:,}", "search": f"HNSW ef_search={ef}", "p50 ms": pct(lat, 50) * 1000,
                         "p95 ms": pct(lat, 95) * 1000, "recall@10": rec / QUERIES, "top-1 found": top1 / QUERIES})
        if size == SIZES[0] and t_load + t_build > MAX_10K_SECONDS:
            break
    return rows


async def _run(url: str) -> tuple[dict, dict, list[dict], dict]:
    from memory.embeddings import EMBED_DIMS, get_embeddings
    from memory.fts import ensure_fts_index
    from memory.ingest import ingest_paths
    from server.db import open_database

    db = await open_database(url, embeddings=get_embeddings(None), dims=EMBED_DIMS)
    try:
        report = await ingest_paths(db.store, CORPUS_PATHS, namespace="default", root=ROOT)
        t = time.perf_counter()
        await ensure_fts_index(db.store.conn)
        fts_build = time.perf_counter() - t
        questions = load_eval_set()
        quality = await evaluate(db.store, "default", questions)
        lat = {}
        from memory.search import search_docs
        for mode in MODES:
            samples = []
            for item in questions:
                t = time.perf_counter()
                await search_docs(db.store, item["q"], namespace="default", k=5, mode=mode)
                samples.append(time.perf_counter() - t)
            lat[mode] = (pct(samples, 50) * 1000, pct(samples, 95) * 1000)
        per_chunk, _ = await _size_per_chunk(db.pool)
        values = [r[0] for r in await _sql(db.pool, "SELECT value FROM store WHERE prefix = 'docs.default' ORDER BY key")]
        ann = await _hnsw_vs_exact(db, values)
        info = {"ingest": report.to_dict(), "questions": len(questions), "fts_build": fts_build,
                "docs_bytes_per_chunk": per_chunk}
        return quality, lat, ann, info
    finally:
        await db.close()


def run() -> str:
    with scratch_postgres() as (admin, _server):
        url = new_db(admin, "bench_memory")
        quality, lat, ann, info = asyncio.run(_run(url))
    rows = [{"mode": m, **quality[m], "p50 ms": lat[m][0], "p95 ms": lat[m][1]} for m in MODES]
    ing = info["ingest"]
    out = (f"Retrieval quality on Keel's docs ({ing['files']} files, {ing['chunks']} chunks; "
           f"{info['questions']} questions from tests/benchmarks/eval_set.json; search_docs with k=10 "
           f"for quality, k=5 for latency):\n\n")
    out += table(rows, ["mode", "recall@1", "recall@5", "MRR@10", "p50 ms", "p95 ms"])
    out += (f"\n\nFTS GIN index build on the docs corpus: {info['fts_build'] * 1000:.0f} ms. "
            f"Storage of the docs corpus alone: {info['docs_bytes_per_chunk']:.0f} bytes/chunk "
            "(small tables: dominated by fixed overhead).\n\n")
    out += ("HNSW (m=16, ef_construction=64) against exact search, synthetic normalised random 384-d vectors "
            f"(chunk texts reused from the docs), {QUERIES} queries near stored points, SQL "
            "`ORDER BY embedding <=> q LIMIT 10` filtered to one namespace; exact = `enable_indexscan=off`; "
            "bytes/chunk = total size of store + store_vectors (with indexes, incl. FTS GIN) / rows; "
            "top-1 found = the exact nearest (the query's source point) is among HNSW's 10. Uniform random "
            "vectors are HNSW's worst case: past the source point, the next neighbours are near-ties.\n\n")
    out += table(ann, ["vectors", "search", "p50 ms", "p95 ms", "recall@10", "top-1 found", "load s", "HNSW build s",
                       "bytes/chunk"])
    return out
