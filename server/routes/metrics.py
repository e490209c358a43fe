"""Prometheus metrics of this process, with the cluster-wide figures read from Postgres."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.deps import Service
from server.schemas import AUTHENTICATED

router = APIRouter(tags=["meta"], dependencies=AUTHENTICATED)


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics(svc: Service) -> Response:
    """Prometheus text exposition (any valid API key when KEEL_API_KEYS is set)."""
    body, content_type = await svc.telemetry.metrics.exposition()
    return Response(body, media_type=content_type)
