"""In-process Keel for integration tests: a migrated database, a service with a worker, an ASGI client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx


@asynccontextmanager
async def keel_database(url: str, embeddings: Any, *, pool_max: int = 6) -> AsyncIterator[Any]:
    """A migrated Keel database (pool, saver, store) on `url`, closed afterwards."""
    from memory.embeddings import EMBED_DIMS
    from server.db import open_database

    database = await open_database(url, embeddings=embeddings, dims=EMBED_DIMS, pool_max=pool_max)
    try:
        yield database
    finally:
        await database.close()


@asynccontextmanager
async def running_service(settings: Any, db: Any, *, workers: int = 2) -> AsyncIterator[Any]:
    """A KeelService on `db` with its event feed and an in-process worker of `workers` slots."""
    from server.service import KeelService

    service = KeelService(settings, db)
    await service.start_feed()
    worker = await service.start_worker(workers)
    try:
        yield service
    finally:
        await service.stop_crons()
        await worker.drain(5)
        await service.feed.stop()


@asynccontextmanager
async def api_client(service: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client calling the app of `service` in process (no sockets)."""
    from server.app import create_app

    app = create_app(service.settings, service)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        yield client
