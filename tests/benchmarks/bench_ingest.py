"""Ingest throughput: the embedder before and after issue 13, side by side in one run, against the model's
own limit on this CPU, with retrieval quality checked for each.

- before: the embedder as it was (the pinned fp32 graph, 16 texts per inference padded to the longest, two
  intra-op threads, one inference at a time); kept here as the baseline.
- fp32 one-by-one: today's embedder with the pinned fp32 graph (one text per inference, two at a time).
- int8 (default): today's embedder on the int8 graph (memory/quantized.py).

Each variant ingests the same corpora into a fresh namespace of one scratch Postgres (fsync on), in
interleaved rounds, so the machine's load hits all of them alike. The model limit is the same graph's
inference alone on the same pre-tokenised chunks (no parsing, no Postgres). Recall is eval_set.json's
questions against the Keel docs corpus (dense search), and fact@4 on the two `keel eval` sets' answerable
questions: does a passage among the 4 first (dense) contain the expected fact.
"""

from __future__ import annotations

import asyncio
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.common import ROOT, new_db, scratch_postgres, table

ROUNDS = 2
CLICK = ROOT / ".eval-cache" / "click-8.1.3"
KEEL_DOCS = [ROOT / "README.md", ROOT / "docs"]
LIMIT_TEXTS = 96  # chunks timed for the model's own limit


class BeforeEmbeddings:
    """The embedder before issue 13 (memory/embeddings.py at 82beff1): batches of 16 padded to the longest,
    masked mean pooling, two intra-op threads, inferences serialised by a lock."""

    def __init__(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from memory.embeddings import TOKENIZER_PATH, LocalMiniLMEmbeddings, _default_model_path

        LocalMiniLMEmbeddings(precision="fp32")  # verifies the pinned files' hashes before we load them

        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        opts.intra_op_num_threads = 2
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(_default_model_path()), opts, providers=["CPUExecutionProvider"]
        )
        tok = Tokenizer.from_file(str(TOKENIZER_PATH))
        tok.enable_truncation(max_length=256)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tok = tok
        self.lock = threading.Lock()

    def _encode(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        out: list[list[float]] = []
        for i in range(0, len(texts), 16):
            encs = self.tok.encode_batch(texts[i : i + 16])
            ids = np.asarray([e.ids for e in encs], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            with self.lock:
                hidden = self.session.run(None, feed)[0]
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out.extend(pooled.tolist())
        return out


def _before() -> Any:
    """BeforeEmbeddings as a langchain Embeddings (the store needs the interface)."""
    from langchain_core.embeddings import Embeddings

    inner = BeforeEmbeddings()

    class _Wrapped(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return inner._encode([str(t) for t in texts]) if texts else []

        def embed_query(self, text: str) -> list[float]:
            return inner._encode([str(text)])[0]

        # aembed_*: Embeddings' defaults run these in an executor thread.

    return _Wrapped()


def _variants(cache: Path) -> dict[str, Any]:
    from memory.embeddings import LocalMiniLMEmbeddings

    return {
        "before (fp32, batches of 16)": _before(),
        "fp32, one text per inference": LocalMiniLMEmbeddings(precision="fp32"),
        "int8, one text per inference (default)": LocalMiniLMEmbeddings(cache_dir=cache),
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _ingest_round(url: str, emb: Any, corpora: dict[str, list[Path]], tag: str) -> dict[str, Any]:
    """Ingest every corpus into fresh namespaces with one embedder; seconds, CPU seconds and chunks each."""
    from memory.embeddings import EMBED_DIMS
    from memory.ingest import ingest_paths
    from server.db import open_database

    db = await open_database(url, embeddings=emb, dims=EMBED_DIMS, check_embeddings=False)
    out: dict[str, Any] = {}
    try:
        for name, paths in corpora.items():
            c0, t0 = _cpu(), time.perf_counter()
            report = await ingest_paths(db.store, paths, namespace=f"{name}-{tag}", root=paths[0].parent)
            out[name] = {
                "s": time.perf_counter() - t0,
                "cpu": _cpu() - c0,
                "chunks": report.chunks,
            }
    finally:
        await db.close()
    return out


def _model_limit(emb: Any, texts: list[str]) -> float:
    """Texts per second of the embedder alone on these texts (best of 2 passes)."""
    emb.embed_documents(texts[:4])
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        emb.embed_documents(texts)
        best = max(best, len(texts) / (time.perf_counter() - t))
    return best


async def _quality(url: str, emb: Any, tag: str) -> dict[str, float]:
    """eval_set.json recall@1/@5 (dense) and fact@4 of the keel eval sets, for one embedder."""
    from memory.embeddings import EMBED_DIMS
    from memory.ingest import ingest_paths
    from memory.search import search_docs
    from server.db import open_database
    from server.evaluation.dataset import fact_present, load_set
    from tests.benchmarks.bench_memory import evaluate, load_eval_set

    db = await open_database(url, embeddings=emb, dims=EMBED_DIMS, check_embeddings=False)
    out: dict[str, float] = {}
    try:
        ns = f"q-keel-{tag}"
        await ingest_paths(db.store, KEEL_DOCS, namespace=ns, root=ROOT)
        recall = (await evaluate(db.store, ns, load_eval_set(), modes=("dense",)))["dense"]
        out["recall@1"], out["recall@5"] = recall["recall@1"], recall["recall@5"]
        sets = {"keel": (ROOT / "evals" / "keel-docs.jsonl", ns)}
        if CLICK.is_dir():
            cns = f"q-click-{tag}"
            await ingest_paths(db.store, [CLICK], namespace=cns, root=CLICK)
            sets["click"] = (ROOT / "evals" / "click-docs.jsonl", cns)
        for name, (path, namespace) in sets.items():
            hit = n = 0
            for item in load_set(path):
                for turn in item.turns:
                    if not turn.answerable or turn.turn > 0:  # follow-ups need the conversation
                        continue
                    hits = await search_docs(db.store, turn.question, namespace=namespace, k=4, mode="dense")
                    n += 1
                    hit += any(fact_present(turn.expected, h["text"]) for h in hits)
            out[f"fact@4 {name}"] = hit / max(n, 1)
    finally:
        await db.close()
    return out


async def _run(admin: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    from memory.ingest import prepare_document

    cache = Path(os.environ.get("KEEL_MODEL_CACHE", str(ROOT / ".bench-cache" / "models")))
    variants = _variants(cache)
    corpora = {"keel-docs": KEEL_DOCS}
    if CLICK.is_dir():
        corpora["click-html"] = [CLICK]
    url = new_db(admin, "ingest")
    totals: dict[str, dict[str, dict[str, float]]] = {v: {} for v in variants}
    for rnd in range(ROUNDS):
        for label, emb in variants.items():  # interleaved: a load spike hits every variant alike
            got = await _ingest_round(
                url, emb, corpora, f"r{rnd}-{len(totals[label])}-{abs(hash(label)) % 997}"
            )
            for corpus, fig in got.items():
                acc = totals[label].setdefault(corpus, {"s": 0.0, "cpu": 0.0, "chunks": 0})
                for k in acc:
                    acc[k] += fig[k]
    chunk_counts = {c: int(totals[next(iter(variants))][c]["chunks"] // ROUNDS) for c in corpora}
    # The model's own limit: the same chunk texts, already read and chunked.
    sample: list[str] = []
    for path in sorted(
        (CLICK if CLICK.is_dir() else ROOT / "docs").rglob("*.htm*" if CLICK.is_dir() else "*.md")
    ):
        sample += [c.text for c in prepare_document(path.name, path.read_bytes()).chunks]
    sample = sample[:LIMIT_TEXTS]
    base = None
    rows = []
    for label, emb in variants.items():
        limit = _model_limit(emb, sample)
        row: dict[str, Any] = {"embedder": label, "model alone, chunks/s": limit}
        all_s = sum(t["s"] for t in totals[label].values())
        all_chunks = sum(t["chunks"] for t in totals[label].values())
        for corpus, t in totals[label].items():
            row[f"{corpus} chunks/s"] = t["chunks"] / t["s"]
        row["all chunks/s"] = all_chunks / all_s
        row["CPU ms/chunk"] = 1000 * sum(t["cpu"] for t in totals[label].values()) / all_chunks
        base = base or row["all chunks/s"]
        row["x before"] = row["all chunks/s"] / base
        row["% of model limit"] = 100 * row["all chunks/s"] / limit
        rows.append(row)
    quality = []
    for i, (label, emb) in enumerate(variants.items()):
        quality.append({"embedder": label, **await _quality(url, emb, f"v{i}")})
    return rows, quality, chunk_counts


def run() -> str:
    with scratch_postgres() as (admin, _server):
        rows, quality, counts = asyncio.run(_run(admin))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    corpora = ", ".join(f"{c} ({n} chunks)" for c, n in counts.items())
    out = [
        f"Command: `.venv/bin/python -m tests.benchmarks.run ingest`. Measured {when}; corpora: {corpora}; "
        f"{ROUNDS} interleaved rounds per embedder, each into fresh namespaces of one scratch Postgres "
        "(fsync on). chunks/s = chunks written / wall seconds of `ingest_paths` (read, chunk, embed, write); "
        "CPU ms/chunk = this process's CPU (the embedding threads included; Postgres not). Model alone = "
        f"the embedder on {LIMIT_TEXTS} pre-chunked Click texts after each of its rounds, best pass.",
        "",
    ]
    cols = ["embedder", *[k for k in rows[0] if k != "embedder"]]
    out.append(table(rows, cols))
    out += [
        "",
        "Retrieval quality with each embedder (dense search): eval_set.json recall on the Keel docs, and fact@4 "
        "= share of the `keel eval` sets' answerable first questions whose expected fact is in one of the 4 "
        "passages found first.",
        "",
    ]
    out.append(table(quality, list(quality[0])))
    if not CLICK.is_dir():
        out.append(
            "\n_The Click corpus is missing (`make eval-corpus` fetches it): only Keel's docs were used._"
        )
    return "\n".join(out)
