"""Memory figures: retrieval quality of dense, full-text and hybrid search on Keel's own docs, and
HNSW against exact search (latency, recall@10, storage per chunk) on real MiniLM embeddings of 100k
text passages, with uniformly random vectors as the worst case.

Side by side in one run, on one scratch Postgres. The real corpus is prose from the running Python's
standard library and this venv's site-packages (docstrings, comments, string constants, C-header
comments, text files), so it exists offline on any machine; its passages and their embeddings are
cached under .bench-cache/ (the first embedding pass takes about 15 minutes on 2 cores).
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import io
import json
import os
import re
import sys
import sysconfig
import time
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from psycopg.rows import tuple_row

from tests.benchmarks.common import ROOT, new_db, pct, scratch_postgres, table

EVAL_SET = Path(__file__).with_name("eval_set.json")
MODES = ("dense", "fts", "hybrid")
CORPUS_PATHS = [ROOT / "docs", ROOT / "README.md"]
SYNTH_PREFIX = "docs.synth"
REAL_PREFIX = "docs.corpus"
SIZES = (10_000, 100_000)
QUERIES = 100  # random-vector queries per size
REAL_QUERIES = 200  # held-out passages, never indexed
EF_SEARCH = (40, 64, 100, 200, 400)  # 40 = pgvector's default
CACHE_DIR = ROOT / ".bench-cache"
# Passage size: 1-3 whole sentences of PASSAGE_WORDS[0]..[1] words (longer sentences are cut into pieces).
PASSAGE_WORDS = (12, 40)
CORPUS_VERSION = 1  # bump when the extraction below changes (invalidates the cached passages)


def load_eval_set() -> list[dict[str, Any]]:
    """The questions of eval_set.json: [{"q": ..., "sources": [...]}, ...]."""
    return json.loads(EVAL_SET.read_text())["questions"]


async def evaluate(
    store: Any, namespace: str, questions: list[dict[str, Any]], modes=MODES, depth: int = 10
) -> dict[str, dict[str, float]]:
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


# ---------------------------------------------------------------------------------------------
# The real-text corpus: prose shipped with Python and the venv, split into short passages.

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(`*])")
_WORD = re.compile(r"[A-Za-z]{2,}")
_NOT_PROSE = re.compile(r"^\s*(>>>|\.\.\.|\$ |:param|:type|:return|:rtype|[-=~^*#`]{3,}|\.\. |[|+])")
_C_COMMENT = re.compile(r"/\*(.*?)\*/|//([^\n]*)", re.S)
_SUFFIXES = (".py", ".txt", ".rst", ".md", ".h", ".c")


def _corpus_files() -> list[tuple[str, Path]]:
    """(label, path) of every text source, sorted: Python's C headers, the stdlib, this venv's site-packages."""
    paths = sysconfig.get_paths()
    out = []
    for label, root, skip in (
        ("include", paths["include"], ()),
        ("stdlib", paths["stdlib"], ("site-packages",)),
        ("site-packages", paths["purelib"], ()),
    ):
        root = Path(root)
        if not root.is_dir():
            continue
        found = [
            p
            for p in root.rglob("*")
            if (p.suffix in _SUFFIXES or p.name == "METADATA")
            and not set(p.relative_to(root).parts) & set(skip)
            and p.is_file()
        ]
        out += [(label, p) for p in sorted(found)]
    return out


def _python_texts(src: str) -> list[str]:
    """Docstrings and other string constants of 60+ characters, and comment blocks, of one module."""
    out: list[str] = []
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return out
    out += [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) >= 60
    ]
    block: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                block.append(tok.string.lstrip("#!").strip())
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) and block:
                out.append("\n".join(block))
                block = []
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass
    if block:
        out.append("\n".join(block))
    return out


def _c_texts(src: str) -> list[str]:
    return [
        "\n".join(line.strip().lstrip("*").strip() for line in (m.group(1) or m.group(2) or "").splitlines())
        for m in _C_COMMENT.finditer(src)
    ]


def _passages(text: str) -> list[str]:
    """1-3 sentences of PASSAGE_WORDS words each, within one paragraph run of a text (code lines dropped)."""
    lo, hi = PASSAGE_WORDS
    pieces: list[str] = []
    for par in re.split(r"\n\s*\n", text):
        par = re.sub(r"\s+", " ", " ".join(ln for ln in par.splitlines() if not _NOT_PROSE.match(ln))).strip()
        for sentence in _SENTENCE.split(par) if par else ():
            words = sentence.split()
            if not words:
                continue
            step = -(-len(words) // -(-len(words) // hi))  # cut an over-long sentence into even pieces
            pieces += [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
    out, cur, n = [], [], 0
    for piece in pieces:
        w = len(piece.split())
        if n + w > hi:
            if n >= lo:
                out.append(" ".join(cur))
            cur, n = [], 0
        cur.append(piece)
        n += w
    if n >= lo:
        out.append(" ".join(cur))

    def words_ok(p: str) -> bool:
        return sum(bool(_WORD.fullmatch(w.strip(".,;:()'\"`!?"))) for w in p.split()) >= 0.7 * len(p.split())

    return [p for p in out if words_ok(p)]


def real_corpus() -> tuple[list[str], bool]:
    """Distinct passages in a deterministic order, and whether they came from the cache."""
    files = _corpus_files()
    fp = hashlib.sha256(json.dumps([CORPUS_VERSION, PASSAGE_WORDS, sys.version]).encode())
    for label, f in files:
        st = f.stat()
        fp.update(f"{label}\0{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    path = CACHE_DIR / f"passages-{fp.hexdigest()[:16]}.json"
    if path.exists():
        return json.loads(path.read_text()), True
    seen: set[str] = set()
    passages: list[str] = []
    for _, f in files:
        try:
            src = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts = (
            _python_texts(src) if f.suffix == ".py" else _c_texts(src) if f.suffix in (".h", ".c") else [src]
        )
        for text in texts:
            for p in _passages(text):
                key = " ".join(p.lower().split())
                if key not in seen:
                    seen.add(key)
                    passages.append(p)
    CACHE_DIR.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(passages))
    tmp.replace(path)
    return passages, False


def embed_corpus(passages: list[str]) -> tuple[np.ndarray, bool, float]:
    """MiniLM document vectors of the passages (cached by model and text), whether cached, seconds spent."""
    from memory.embeddings import (
        EMBED_DIMS,
        MAX_LENGTH,
        MODEL_SHA256,
        TOKENIZER_SHA256,
        get_embeddings,
        get_tokenizer,
    )

    key = hashlib.sha256(
        f"{MODEL_SHA256}:{TOKENIZER_SHA256}:{MAX_LENGTH}\n".encode() + "\n".join(passages).encode()
    ).hexdigest()[:16]
    path = CACHE_DIR / f"minilm-{key}.npy"
    if path.exists():
        return np.load(path), True, 0.0
    emb = get_embeddings(None)
    # Batches of similar length: padding to the longest in the batch otherwise doubles the work.
    order = np.argsort([len(e.ids) for e in get_tokenizer().encode_batch(passages)], kind="stable")
    out = np.empty((len(passages), EMBED_DIMS), dtype=np.float32)
    t = time.perf_counter()
    for i in range(0, len(order), 2048):
        idx = order[i : i + 2048]
        out[idx] = np.asarray(emb.embed_documents([passages[j] for j in idx]), dtype=np.float32)
        done = i + len(idx)
        print(
            f"  embedded {done:,}/{len(passages):,} ({done / (time.perf_counter() - t):.0f}/s)",
            file=sys.stderr,
            flush=True,
        )
    CACHE_DIR.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out, False, time.perf_counter() - t


def real_dataset() -> dict[str, Any]:
    """REAL_QUERIES held-out query passages and SIZES[-1] indexed passages (fixed seed), with vectors."""
    t = time.perf_counter()
    passages, corpus_cached = real_corpus()
    t_corpus = time.perf_counter() - t
    need = REAL_QUERIES + SIZES[-1]
    if len(passages) < need:
        raise RuntimeError(f"the real-text corpus has {len(passages):,} distinct passages, {need:,} needed")
    perm = np.random.default_rng(7).permutation(len(passages))
    queries = [passages[i] for i in perm[:REAL_QUERIES]]
    docs = [passages[i] for i in perm[REAL_QUERIES:need]]
    vectors, vec_cached, t_embed = embed_corpus(docs)
    return {
        "docs": docs,
        "vectors": vectors,
        "queries": queries,
        "distinct": len(passages),
        "corpus_cached": corpus_cached,
        "corpus_s": t_corpus,
        "vectors_cached": vec_cached,
        "embed_s": t_embed,
        "words": float(np.mean([len(d.split()) for d in docs])),
    }


async def _load(
    pool: Any, prefix: str, start: int, vectors: np.ndarray, value_of: Callable[[int], dict[str, Any]]
) -> None:
    """COPY rows start.. into store and store_vectors under one prefix (the store's real tables)."""
    store_buf, vec_buf = io.StringIO(), io.StringIO()
    for i, v in enumerate(vectors, start=start):
        key = f"chunk#{i}"
        value = json.dumps(value_of(i))
        store_buf.write(f"{prefix}\t{key}\t{value.replace(chr(92), chr(92) * 2)}\n")
        vec_buf.write(f"{prefix}\t{key}\ttext\t{_vec(v)}\n")
    async with pool.connection() as conn:
        async with conn.cursor().copy("COPY store (prefix, key, value) FROM STDIN") as cp:
            await cp.write(store_buf.getvalue())
        async with conn.cursor().copy(
            "COPY store_vectors (prefix, key, field_name, embedding) FROM STDIN"
        ) as cp:
            await cp.write(vec_buf.getvalue())


async def _knn(
    pool: Any, prefix: str, q: np.ndarray, *, exact: bool, ef_search: int | None = None
) -> tuple[list[str], float]:
    """Top-10 keys under one prefix by cosine distance, and the query's latency in seconds.
    ef_search None = the pool connection's own setting (Keel's default)."""
    sql = (
        "SELECT key FROM store_vectors WHERE prefix = %s AND field_name = 'text' "
        "ORDER BY embedding <=> %s::vector LIMIT 10"
    )
    async with pool.connection() as conn, conn.transaction():
        if exact:
            await conn.execute("SET LOCAL enable_indexscan = off")
        elif ef_search is not None:
            await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        t = time.perf_counter()
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(sql, (prefix, _vec(q)))
            rows = await cur.fetchall()
        return [r[0] for r in rows], time.perf_counter() - t


async def _size_per_chunk(pool: Any) -> tuple[float, int]:
    ((size, n),) = await _sql(
        pool,
        "SELECT pg_total_relation_size('store') + pg_total_relation_size('store_vectors'), "
        "(SELECT count(*) FROM store_vectors)",
    )
    return size / max(n, 1), n


async def _hnsw_vs_exact(
    pool: Any,
    data: str,
    prefix: str,
    vectors: np.ndarray,
    value_of: Callable[[int], dict[str, Any]],
    queries_for: Callable[[np.ndarray], np.ndarray],
    loads: list[float],
) -> list[dict[str, Any]]:
    """Load vectors in SIZES steps into the store's tables, rebuild the store's HNSW index at each size,
    and compare exact search with HNSW at each EF_SEARCH (and the pool's default) on queries_for(loaded)."""
    ((idx,),) = await _sql(
        pool, "SELECT indexdef FROM pg_indexes WHERE indexname = 'store_vectors_embedding_idx'"
    )
    ((default_ef,),) = await _sql(pool, "SHOW hnsw.ef_search")
    efs: list[int | None] = [*EF_SEARCH] + ([None] if int(default_ef) not in EF_SEARCH else [])
    rows: list[dict[str, Any]] = []
    loaded = 0
    for size in SIZES:
        t0 = time.perf_counter()
        async with pool.connection() as conn:
            await conn.execute("DROP INDEX IF EXISTS store_vectors_embedding_idx")
        await _load(pool, prefix, loaded, vectors[loaded:size], value_of)
        t_load = time.perf_counter() - t0
        t = time.perf_counter()
        async with pool.connection() as conn:
            await conn.execute("SET maintenance_work_mem = '512MB'")
            await conn.execute(idx)
            await conn.execute("ANALYZE store_vectors")
            await conn.execute("ANALYZE store")
        t_build = time.perf_counter() - t
        loaded = size
        queries = queries_for(vectors[:size])
        for q in queries[:5]:  # warm the cache
            await _knn(pool, prefix, q, exact=False)
            await _knn(pool, prefix, q, exact=True)
        # Interleaved: each query runs exact and every ef_search back to back (in a rotating order), so a
        # burst of load on this shared machine hits all variants alike.
        variants: list[int | str | None] = ["exact", *efs]
        keys_of: dict[Any, list[list[str]]] = {v: [] for v in variants}
        lat_of: dict[Any, list[float]] = {v: [] for v in variants}
        for n, q in enumerate(queries):
            for v in variants[n % len(variants) :] + variants[: n % len(variants)]:
                keys, sec = await _knn(
                    pool, prefix, q, exact=v == "exact", ef_search=None if v == "exact" else v
                )  # type: ignore[arg-type]
                keys_of[v].append(keys)
                lat_of[v].append(sec)
        loads.append(os.getloadavg()[0])
        per_chunk, _ = await _size_per_chunk(pool)
        base = {"data": data, "vectors": f"{size:,}"}
        for v in variants:
            rec = [len(set(t) & set(k)) / len(t) for t, k in zip(keys_of["exact"], keys_of[v], strict=True)]
            top1 = sum(t[0] in k for t, k in zip(keys_of["exact"], keys_of[v], strict=True))
            label = (
                "exact (seq scan)"
                if v == "exact"
                else f"HNSW ef_search={v}"
                if v is not None
                else f"HNSW Keel default ({default_ef})"
            )
            row = {
                **base,
                "search": label,
                "p50 ms": pct(lat_of[v], 50) * 1000,
                "p95 ms": pct(lat_of[v], 95) * 1000,
                "recall@10": f"{np.mean(rec):.3f}",
                "recall@10 p5": pct(rec, 5),
                "top-1 found": f"{top1 / len(queries):.3f}",
            }
            if v == "exact":
                row.update({"load s": t_load, "HNSW build s": t_build, "bytes/chunk": per_chunk})
            rows.append(row)
    return rows


async def _run(url: str, random_url: str) -> tuple[dict, dict, list[dict], dict]:
    from memory.embeddings import EMBED_DIMS, get_embeddings
    from memory.fts import ensure_fts_index
    from memory.ingest import ingest_paths
    from server.db import open_database

    emb = get_embeddings(None)
    loads: list[float] = []  # 1-minute load average after each size's queries (the machine is shared)
    db = await open_database(url, embeddings=emb, dims=EMBED_DIMS)
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
        values = [
            r[0]
            for r in await _sql(db.pool, "SELECT value FROM store WHERE prefix = 'docs.default' ORDER BY key")
        ]
        ((default_ef,),) = await _sql(db.pool, "SHOW hnsw.ef_search")

        # Real text: MiniLM vectors of 100k passages; queries are 200 held-out passages (embed_query).
        real = real_dataset()
        qvec = np.asarray([emb.embed_query(q) for q in real["queries"]], dtype=np.float32)
        docs = real["docs"]
        # Postgres text cannot hold NUL (a dozen passages quote binary constants); the tokenizer drops it anyway.
        ann = await _hnsw_vs_exact(
            db.pool,
            "real text",
            REAL_PREFIX,
            real["vectors"],
            lambda i: {"text": docs[i].replace("\x00", ""), "source": "corpus", "chunk_index": i},
            lambda _loaded: qvec,
            loads,
        )
    finally:
        await db.close()

    # Worst case: uniform random unit vectors, in a database of their own (its own HNSW graph).
    rdb = await open_database(random_url, embeddings=emb, dims=EMBED_DIMS)
    try:
        rng = np.random.default_rng(7)
        synth = _unit(rng, SIZES[-1])

        def near_stored(loaded: np.ndarray) -> np.ndarray:
            # A stored vector plus noise, like a question near its answer.
            picks = loaded[rng.integers(0, len(loaded), QUERIES)]
            q = picks + 0.15 * _unit(rng, QUERIES)
            return q / np.linalg.norm(q, axis=1, keepdims=True)

        ann += await _hnsw_vs_exact(
            rdb.pool,
            "random",
            SYNTH_PREFIX,
            synth,
            lambda i: {**values[i % len(values)], "source": "synth", "chunk_index": i},
            near_stored,
            loads,
        )
    finally:
        await rdb.close()
    info = {
        "ingest": report.to_dict(),
        "questions": len(questions),
        "fts_build": fts_build,
        "docs_bytes_per_chunk": per_chunk,
        "real": {k: v for k, v in real.items() if k not in ("docs", "vectors", "queries")},
        "default_ef": default_ef,
        "loads": loads,
    }
    return quality, lat, ann, info


def run() -> str:
    with scratch_postgres() as (admin, _server):
        url = new_db(admin, "bench_memory")
        random_url = new_db(admin, "bench_memory_random")
        quality, lat, ann, info = asyncio.run(_run(url, random_url))
    rows = [{"mode": m, **quality[m], "p50 ms": lat[m][0], "p95 ms": lat[m][1]} for m in MODES]
    ing = info["ingest"]
    out = (
        f"Retrieval quality on Keel's docs ({ing['files']} files, {ing['chunks']} chunks; "
        f"{info['questions']} questions from tests/benchmarks/eval_set.json; search_docs with k=10 "
        f"for quality, k=5 for latency):\n\n"
    )
    out += table(rows, ["mode", "recall@1", "recall@5", "MRR@10", "p50 ms", "p95 ms"])
    out += (
        f"\n\nFTS GIN index build on the docs corpus: {info['fts_build'] * 1000:.0f} ms. "
        f"Storage of the docs corpus alone: {info['docs_bytes_per_chunk']:.0f} bytes/chunk "
        "(small tables: dominated by fixed overhead).\n\n"
    )
    r = info["real"]
    emb_note = (
        "vectors from the cache"
        if r["vectors_cached"]
        else f"embedded in this run: {r['embed_s']:.0f} s, {SIZES[-1] / r['embed_s']:.0f} passages/s"
    )
    corpus_note = "from the cache" if r["corpus_cached"] else f"extracted in {r['corpus_s']:.0f} s"
    out += (
        f"HNSW (m=16, ef_construction=64, cosine; the store's own index) against exact search. **real text**: "
        f"{SIZES[-1]:,} passages (mean {r['words']:.1f} words; sampled with a fixed seed from "
        f"{r['distinct']:,} distinct passages of the stdlib's and site-packages' docstrings, comments and text "
        f"files; passages {corpus_note}) "
        f"embedded with the offline MiniLM ({emb_note}); {REAL_QUERIES} held-out passages as queries "
        f"(embed_query). **random**: uniform random unit 384-d vectors (the worst case for a graph index), "
        f"{QUERIES} queries near stored points. SQL `ORDER BY embedding <=> q LIMIT 10` filtered to one "
        "namespace; exact = `enable_indexscan=off`; recall@10 p5 = 5th percentile of per-query recall; "
        "top-1 found = the exact nearest is among HNSW's 10; bytes/chunk = total size of store + "
        f"store_vectors (with indexes) / rows. Keel's pool default: hnsw.ef_search = {info['default_ef']}. "
        "Each query runs every variant back to back; 1-minute load average after each step: "
        f"{', '.join(f'{x:.1f}' for x in info['loads'])} (2 cores).\n\n"
    )
    out += table(
        ann,
        [
            "data",
            "vectors",
            "search",
            "p50 ms",
            "p95 ms",
            "recall@10",
            "recall@10 p5",
            "top-1 found",
            "load s",
            "HNSW build s",
            "bytes/chunk",
        ],
    )
    return out
