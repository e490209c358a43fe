"""Health and server information."""

from __future__ import annotations

from importlib.metadata import version

import langgraph.version
from fastapi import APIRouter

from server.deps import Service
from server.schemas import PUBLIC

router = APIRouter(tags=["meta"], dependencies=PUBLIC)


@router.get("/ok")
async def ok(svc: Service) -> dict:
    """Liveness, including a round trip to Postgres."""
    async with svc.db.pool.connection() as conn:
        await conn.execute("SELECT 1")
    return {"ok": True}


@router.get("/info")
async def info() -> dict:
    """Server version and feature flags (Studio reads these)."""
    return {
        "version": "0.16.7",
        "keel_version": version("keel"),
        "langgraph_py_version": langgraph.version.__version__,
        "flags": {
            "assistants": True,
            "crons": True,
            "langsmith": True,
            "langsmith_tracing_replicas": True,
            "langsmith_tracing_session_on_runs": True,
        },
        "host": {"kind": "keel", "project_id": None, "revision_id": None, "tenant_id": None},
    }
