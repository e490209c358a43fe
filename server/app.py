"""The FastAPI application: LangGraph Server API routes over one KeelService."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server.errors import BodyGuard, install_error_handlers
from server.mcp import mount_mcp
from server.metrics import HttpTelemetry
from server.origins import OriginGuard, origin_regex
from server.routes import assistants, crons, knowledge, meta, metrics, runs, store, thread_stream, threads
from server.service import KeelService
from server.settings import Settings, get_settings

log = logging.getLogger("keel")


def create_app(
    settings: Settings | None = None, service: KeelService | None = None, workers: int | None = None
) -> FastAPI:
    """Build the app. With `service`, reuse it (tests); otherwise start one, with `workers` run slots."""
    settings = settings or get_settings()
    workers = settings.keel_workers if workers is None else workers

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = service or await KeelService.start(settings)
        app.state.keel = svc
        if service is None:
            await svc.start_feed()
            if workers:
                await svc.start_worker(workers)
        try:
            async with mcp_sessions.run():
                yield
        finally:
            if service is None:
                await svc.close()

    app = FastAPI(
        title="Keel",
        version="0.1.0",
        lifespan=lifespan,
        description="LangGraph Server API over Postgres: threads, runs, streaming, interrupts.",
    )
    if service is not None:
        app.state.keel = service
    install_error_handlers(app)
    for r in (meta.router, assistants.router, threads.router, runs.router, store.router, knowledge.router):
        app.include_router(r)
    app.include_router(crons.router)
    app.include_router(thread_stream.router)
    app.include_router(metrics.router)
    mcp_sessions = mount_mcp(app, settings)
    # Outermost first: HttpTelemetry, OriginGuard, then CORS, then BodyGuard (add_middleware wraps, so the last added is outermost).
    app.add_middleware(BodyGuard, max_bytes=settings.keel_max_body_bytes)
    # Studio is a web page on another origin that calls this server from the browser (a private-network
    # request when Keel listens on this machine); only the origins in KEEL_CORS_ORIGINS may do so.
    origins = settings.cors_origins
    rx = origin_regex(origins)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if rx is None else [],
        allow_origin_regex=rx,
        allow_methods=["*"],
        allow_headers=["*"],
        allow_private_network=True,
        expose_headers=["x-pagination-total", "x-pagination-next", "content-location", "location"],
    )
    app.add_middleware(OriginGuard, patterns=origins, hosts=settings.allowed_hosts)
    app.add_middleware(HttpTelemetry)  # outermost: every response is counted, refusals included
    if rx is None and not settings.api_users:
        log.warning(
            "KEEL_CORS_ORIGINS allows every origin and no API keys are set: any web page this machine's "
            "browser opens can start runs and read threads"
        )
    return app
