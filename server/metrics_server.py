"""`GET /metrics` (and `/ok`) of a `keel worker` on its own port: a small uvicorn app beside the worker.

Separate from server.telemetry, which the service imports: this module imports the routes (and through them the
service), so it is used only by the CLI that starts a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from server.errors import install_error_handlers
from server.routes import metrics


class MetricsServer:
    """`GET /metrics` (and `/ok`) of a `keel worker` on its own port (KEEL_METRICS_PORT / --metrics-port)."""

    def __init__(self, svc: Any, host: str, port: int) -> None:
        app = FastAPI(title="Keel worker metrics", openapi_url=None, docs_url=None, redoc_url=None)
        app.state.keel = svc
        install_error_handlers(app)
        app.include_router(metrics.router)

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # the worker handles SIGTERM/SIGINT itself (drain); uvicorn must not take them

        self.server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.host, self.port = host, port
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen; raises OSError if the port cannot be bound."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]  # the port chosen when 0 was asked for
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("the metrics server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.task is not None:
            self.server.should_exit = True
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
