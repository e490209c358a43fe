"""The `keel` argument parser and entry point: configuration, logging, SIGTERM and exit codes."""

from __future__ import annotations

import argparse
import os

from server import heap
from server.cli.admin import cmd_db, cmd_mcp, cmd_memory, cmd_prune, cmd_tools
from server.cli.ask import cmd_ask
from server.cli.common import fail
from server.cli.eval import cmd_eval
from server.cli.knowledge import cmd_ingest, cmd_reindex, cmd_search
from server.cli.serve import cmd_serve, cmd_worker
from server.settings import get_settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keel", description="Keel: a durable LangGraph agent backend on Postgres."
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the API server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--log-level", default="info")
    s.add_argument("--access-log", action="store_true")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="in-process run slots (default KEEL_WORKERS=2; 0 = API only, runs go to `keel worker`s)",
    )
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="execute queued runs (join the queue of the same database)")
    w.add_argument(
        "--concurrency", type=int, default=None, help="run slots (default KEEL_WORKER_CONCURRENCY=4)"
    )
    w.add_argument("--name", default=None, help="worker id shown in logs and leases")
    w.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve GET /metrics on this port (default KEEL_METRICS_PORT)",
    )
    w.set_defaults(func=cmd_worker)

    i = sub.add_parser("ingest", help="chunk, embed and store documents (idempotent)")
    i.add_argument("paths", nargs="+")
    i.add_argument("--namespace", default=None, help="corpus name (default KEEL_NAMESPACE)")
    i.add_argument("--chunk-tokens", type=int, default=200)
    i.add_argument("--overlap", type=int, default=40)
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.add_argument(
        "--include",
        action="append",
        help="glob of files to take from directories (repeatable; default Markdown, text, HTML and PDF)",
    )
    i.add_argument("--exclude", action="append", help="glob of files or relative paths to skip (repeatable)")
    i.add_argument(
        "--prune", action="store_true", help="remove chunks of files gone from the walked directories"
    )
    i.set_defaults(func=cmd_ingest)

    q = sub.add_parser("search", help="search a corpus")
    q.add_argument("query")
    q.add_argument("--namespace", default=None)
    q.add_argument("--k", type=int, default=5)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_search)

    a = sub.add_parser("ask", help="ask the agent a question (streams node progress)")
    a.add_argument("question")
    a.add_argument("--thread", default=None, help="continue this thread id")
    a.set_defaults(func=cmd_ask)

    ev = sub.add_parser(
        "eval", help="run a labelled question set through the agent and report answer quality (evals/)"
    )
    ev.add_argument("set", help="question set, JSON lines (evals/README.md)")
    ev.add_argument(
        "--corpus", nargs="+", required=True, help="files and directories to ingest and ask about"
    )
    ev.add_argument(
        "--root", default=None, help="source labels relative to this (default: the corpus dir, or .)"
    )
    ev.add_argument(
        "--namespace", dest="eval_namespace", default=None, help="corpus name (default eval-<set name>)"
    )
    ev.add_argument("--name", default=None, help="report name (default: the set's file name)")
    ev.add_argument("--out", default="evals/reports", help="directory of the Markdown, PNG and JSON report")
    ev.add_argument(
        "--retrieve-k", type=int, default=None, help="passages per query (default KEEL_RETRIEVE_K)"
    )
    ev.add_argument("--limit", type=int, default=None, help="only the first N questions")
    ev.add_argument("--timeout", type=float, default=120.0, help="seconds per turn before it is cancelled")
    ev.add_argument("--check-set", action="store_true", help="only check the set's facts against the corpus")
    ev.add_argument("--quiet", action="store_true", help="no line per turn")
    ev.set_defaults(func=cmd_eval)

    t = sub.add_parser("tools", help="the tool registry")
    t.add_argument("action", choices=["list"])
    t.add_argument("--json", action="store_true", help="every tool's versioned JSON Schema contract")
    t.set_defaults(func=cmd_tools)

    ri = sub.add_parser("reindex", help="re-embed all memory with the configured embedding model")
    ri.set_defaults(func=cmd_reindex)

    pr = sub.add_parser(
        "prune",
        help="delete expired threads (and idle ones) from checkpoints, runs, events, store, "
        "and the events of runs finished over KEEL_EVENTS_TTL_SECONDS ago",
    )
    pr.add_argument(
        "--idle-days", type=float, default=None, help="also delete threads untouched this many days"
    )
    pr.set_defaults(func=cmd_prune)

    mem = sub.add_parser("memory", help="a user's long-term memories")
    mem.add_argument("action", choices=["export", "delete"])
    mem.add_argument("--user", required=True, help="the user id (as authenticated by the API)")
    mem.set_defaults(func=cmd_memory)

    m = sub.add_parser("mcp", help="serve the tool registry over MCP on stdin/stdout")
    m.set_defaults(func=cmd_mcp)

    d = sub.add_parser("db", help="the embedded Postgres")
    d.add_argument("action", choices=["start", "stop", "status", "url"])
    d.set_defaults(func=cmd_db)
    return p


def main(argv: list[str] | None = None) -> int:
    import warnings

    # platformdirs warns on every start when XDG_RUNTIME_DIR is unset (servers, containers); harmless here.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "worker"):
        heap.pause()  # until the process serves (server/heap.py): start-up builds only long-lived objects
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's message names the bad variable
        return fail(f"invalid configuration: {exc}")
    if args.command in ("serve", "worker") and settings.keel_malloc_tuning:
        heap.tune_malloc(os.environ)  # before the process starts any thread (server/heap.py)
    if getattr(args, "namespace", "x") is None:
        args.namespace = settings.keel_namespace
    if args.command in ("serve", "ingest", "search", "ask", "worker", "eval"):
        from server.logs import configure_logging

        configure_logging(
            settings.keel_log_level if args.command in ("serve", "worker") else "WARNING",
            settings.keel_log_json,
        )
    from memory.embeddings import EmbeddingModelError
    from server.db import DatabaseUnavailable

    terminated: list[int] = []
    if args.command not in ("serve", "worker"):  # those two drain on SIGTERM themselves
        import signal

        def terminate(signum: int, frame: object) -> None:
            # Unwind like Ctrl+C does (finally blocks, the database closed), so the process lets go of the
            # embedded Postgres and the last Keel process to leave can still stop it.
            terminated.append(signum)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, terminate)
    try:
        return args.func(args, settings)
    except BaseException as exc:
        if (
            terminated
        ):  # whatever the unwinding turned the SystemExit into (an import wraps it in ImportError)
            return 128 + terminated[0]
        if isinstance(exc, DatabaseUnavailable | EmbeddingModelError | ValueError):
            return fail(str(exc))
        if isinstance(exc, KeyboardInterrupt):
            return 130
        raise
