"""The FastAPI application: LangGraph Server API routes over one KeelService."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server.errors import BodyGuard, install_error_handlers
from server.mcp import mount_mcp
from server.routes import assistants, knowledge, meta, runs, store, threads
from server.service import KeelService
from server.settings import Settings, get_settings


def create_app(settings: Settings | None = None, service: KeelService | None = None,
               workers: int | None = None) -> FastAPI:
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

    app = FastAPI(title="Keel", version="0.1.0", lifespan=lifespan,
                  description="LangGraph Server API over Postgres: threads, runs, streaming, interrupts.")
    if service is not None:
        app.state.keel = service
    install_error_handlers(app)
    for r in (meta.router, assistants.router, threads.router, runs.router, store.router, knowledge.router):
        app.include_router(r)
    mcp_sessions = mount_mcp(app, settings)
    # Studio is a web page on another origin that calls this server from the browser.
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"],
        expose_headers=["x-pagination-total", "x-pagination-next", "content-location", "location"],
        allow_private_network=True,
    )
    app.add_middleware(BodyGuard, max_bytes=settings.keel_max_body_bytes)
    return app
