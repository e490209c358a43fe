"""`keel serve` (the API with in-process workers) and `keel worker` (a process that only executes runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from server import heap
from server.settings import Settings

log = logging.getLogger("keel.cli")


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
            frozen = heap.settle()  # started: freeze what start-up built, collect what comes after
            log.debug("start-up heap frozen: %d objects", frozen)
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
            heap.resume()  # a worker may wait long for its database: collect meanwhile
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
        metrics_port = settings.keel_metrics_port if args.metrics_port is None else args.metrics_port
        metrics = None
        if metrics_port is not None:
            from server.metrics_server import MetricsServer

            metrics = MetricsServer(svc, settings.keel_metrics_host, metrics_port)
            try:
                await metrics.start()
            except OSError:
                await svc.close()
                raise
            print(
                f"keel worker metrics: http://{settings.keel_metrics_host}:{metrics.port}/metrics",
                file=sys.stderr,
            )
        worker = await svc.start_worker(concurrency, name=args.name)
        log.debug("start-up heap frozen: %d objects", heap.settle())
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
            if metrics is not None:
                await metrics.stop()

    asyncio.run(run())
    return 0
