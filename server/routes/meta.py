"""Health and server information."""

from __future__ import annotations

from importlib.metadata import version

import langgraph.version
from fastapi import APIRouter, Request

from server.deps import Service
from server.schemas import PUBLIC

router = APIRouter(tags=["meta"], dependencies=PUBLIC)


@router.get("/ok")
async def ok(svc: Service, request: Request) -> dict:
    """Liveness, including a round trip to Postgres; `services` as langgraph-api names its checks (the
    database is listed when `check_db=1` asks for it; Keel checks it either way)."""
    async with svc.db.pool.connection() as conn:
        await conn.execute("SELECT 1")
    check_db = request.query_params.get("check_db", "0") not in ("", "0")
    return {"ok": True, "services": {"postgres": "healthy"} if check_db else {}}


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
