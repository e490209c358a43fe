"""`keel eval`: a labelled question set through the run engine against an ingested corpus, then a report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from server.settings import Settings


def _corpus_files(paths: list[str]) -> list[Path]:
    from memory.readers import SUPPORTED_SUFFIXES

    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"no such file or directory: {p}")
    return files


def check_set(items: list[Any], corpus: list[str], root: Path) -> list[str]:
    """Problems with a set against its corpus: an expected fact found in none of its acceptable sources."""
    from memory.ingest import document_text, source_name
    from server.evaluation.dataset import fact_present, source_matches

    texts = {}
    for f in _corpus_files(corpus):
        label = source_name(f, root)
        texts[label] = document_text(label, f.read_bytes())
    problems = []
    for item in items:
        for t in item.turns:
            if not t.answerable:
                continue
            docs = [text for label, text in texts.items() if source_matches(t.sources, label)]
            if not docs:
                problems.append(f"{t.key}: no corpus file matches sources {list(t.sources)}")
            elif not any(fact_present(t.expected, text) for text in docs):
                problems.append(f"{t.key}: no expected phrasing occurs in {list(t.sources)}")
    return problems


def default_root(corpus: list[str]) -> Path:
    """Source labels are relative to this: the corpus directory when it is one directory, else the cwd."""
    if len(corpus) == 1 and Path(corpus[0]).is_dir():
        return Path(corpus[0])
    return Path.cwd()


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from server.evaluation import report
    from server.evaluation.dataset import load_set
    from server.evaluation.runner import TurnResult, run_items
    from server.evaluation.scoring import score_turn, summarise

    items = load_set(args.set)
    if args.limit:
        items = items[: args.limit]
    name = args.name or Path(args.set).stem
    root = Path(args.root) if args.root else default_root(args.corpus)
    if args.check_set:
        problems = check_set(items, args.corpus, root)
        for p in problems:
            print(p, file=sys.stderr)
        n = sum(len(i.turns) for i in items)
        print(f"{name}: {n} turns checked, {len(problems)} problem(s)")
        return 1 if problems else 0
    namespace = args.eval_namespace or f"eval-{name}"
    context: dict[str, Any] = {"namespace": namespace}
    if args.retrieve_k:
        context["retrieve_k"] = args.retrieve_k

    def progress(r: TurnResult) -> None:
        if not args.quiet:
            mark = "!" if r.error else "·"
            print(f"{mark} {r.turn.key}: {r.status or r.run_status} ({r.total_ms:.0f} ms)", file=sys.stderr)

    async def run() -> tuple[list[TurnResult], dict[str, Any]]:
        from memory.ingest import ingest_paths
        from server.routes.knowledge import corpus_db_lock
        from server.service import KeelService

        svc = await KeelService.start(settings)
        try:
            async with corpus_db_lock(svc.db.pool, namespace):
                ingested = await ingest_paths(
                    svc.db.store, list(args.corpus), namespace=namespace, root=root, prune=True
                )
            await svc.start_feed()
            await svc.start_worker(1)
            results = await run_items(svc, items, context=context, timeout=args.timeout, progress=progress)
            return results, ingested.to_dict()
        finally:
            await svc.close()

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results, ingested = asyncio.run(run())
    scored = [score_turn(r) for r in results]
    figures = summarise(scored)
    meta = {
        "set": f"`{args.set}` ({len(items)} questions)",
        "corpus": ", ".join(f"`{c}`" for c in args.corpus) + f" → namespace `{namespace}` "
        f"({ingested['files']} files read, {ingested['chunks']} chunks written, {ingested['skipped']} unchanged)",
        "model": f"`{settings.keel_model or 'offline engine'}`",
        "date": started,
        "command": f"`{command_line(args)}`",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(report.markdown(f"keel eval: {name}", meta, figures, scored))
    report.plot(out / f"{name}.png", f"keel eval: {name} ({started})", figures)
    (out / f"{name}.json").write_text(
        json.dumps(
            {"meta": meta, "figures": figures, "turns": report.turns_json(scored)},
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(summary_line(name, figures))
    print(f"report: {out / (name + '.md')}, plot: {out / (name + '.png')}")
    if os.environ.get("LANGSMITH_API_KEY"):
        return _langsmith(scored, name, meta)
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The `keel eval` command that reproduces this run (the options that change what is measured)."""
    parts = ["keel eval", args.set, "--corpus", *args.corpus]
    for flag, value in (
        ("--root", args.root),
        ("--namespace", args.eval_namespace),
        ("--retrieve-k", args.retrieve_k),
        ("--limit", args.limit),
    ):
        if value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


def summary_line(name: str, f: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    return (
        f"{name}: {f['turns']} turns; recall@{f['k']} {pct(f['recall_at_k'])}, accuracy {pct(f['accuracy'])}, "
        f"abstention {pct(f['abstention'])}, wrong refusals {pct(f['wrong_refusals'])}, errors {f['errors']}"
    )


def _langsmith(scored: list[Any], name: str, meta: dict[str, Any]) -> int:
    """With LANGSMITH_API_KEY set: the same verdicts as a LangSmith experiment (LANGSMITH_ENDPOINT honoured)."""
    from langsmith import Client

    from server.evaluation.langsmith_eval import publish

    try:
        results = publish(scored, name, Client(), metadata={k: str(v) for k, v in meta.items()})
    except Exception as exc:  # the local report is written; say why the upload failed
        print(f"keel: error: LangSmith evaluate failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"LangSmith experiment: {getattr(results, 'experiment_name', '?')}")
    return 0
