"""The plain-FastAPI baseline for bench_engine: the graph runs inside the request, stock saver.

`uvicorn tests.benchmarks.baseline_app:app` with BASELINE_DATABASE_URL set. The checkpointer is the
STOCK `AsyncPostgresSaver` (its instance lock included) on a psycopg_pool `AsyncConnectionPool`
(max 10). BASELINE_STORE=1 also gives the graph an `AsyncPostgresStore` on the same pool, so the fault
graph's per-node effect rows are written to Postgres as they are in Keel.
"""

from __future__ import annotations

import os
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.store.postgres.aio import AsyncPostgresStore
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from tests.support.fault_graph import builder


@asynccontextmanager
async def lifespan(app: FastAPI):
    pool = AsyncConnectionPool(
        os.environ["BASELINE_DATABASE_URL"],
        max_size=10,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    async with pool:
        saver = AsyncPostgresSaver(pool)
        await saver.setup()
        store = None
        if os.environ.get("BASELINE_STORE") == "1":
            store = AsyncPostgresStore(pool)
            await store.setup()
        app.state.graph = builder.compile(checkpointer=saver, store=store)
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/ok")
async def ok() -> dict[str, bool]:
    return {"ok": True}


@app.post("/threads")
async def create_thread() -> dict[str, str]:
    return {"thread_id": str(uuid.uuid4())}


@app.post("/threads/{tid}/runs/wait")
async def wait(tid: str, request: Request) -> Any:
    body = await request.json()
    return await request.app.state.graph.ainvoke(
        body.get("input"), {"configurable": {"thread_id": tid}}, durability="sync"
    )
