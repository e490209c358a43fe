"""Launcher for the peers whose Postgres store never receives a store index from their config, so that they
embed and search what Keel's store does (equal work on the agent rows). Run with the peer's own python:

    python indexed_store.py aegra|lgpg <uvicorn args...>

- Aegra 0.6.0 passes langgraph.json `store.index` to AsyncPostgresStore as it is, so `embed` can only be a
  LangChain `provider:model` string (langchain's init_embeddings; langchain is not even installed with
  aegra-api): no `path.py:function` form, no local embedder.
- langgraph-runtime-pg 0.11.1.post1 builds `AsyncPostgresStore(pool)` without an index: `LANGGRAPH_STORE` is
  parsed by langgraph-api but never reaches the store (`set_store_config` is never called).

Both stores are langgraph's AsyncPostgresStore; this launcher hands the one the peer creates the index of
`LANGGRAPH_STORE` (the embedder of tests/benchmarks/peers/embed.py, Keel's offline MiniLM) and then runs
uvicorn in the same process. Nothing else of the peer changes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any


def _index() -> dict[str, Any]:
    cfg = dict(json.loads(os.environ["LANGGRAPH_STORE"])["index"])
    path, name = cfg["embed"].rsplit(":", 1)
    spec = importlib.util.spec_from_file_location("keel_bench_embed", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {**cfg, "embed": getattr(module, name)}


def main() -> None:
    peer, args = sys.argv[1], sys.argv[2:]
    from langgraph.store.postgres.aio import AsyncPostgresStore

    index = _index()

    def indexed(conn: Any, *_: Any, **kw: Any) -> AsyncPostgresStore:
        kw["index"] = index
        return AsyncPostgresStore(conn, **kw)

    if peer == "aegra":
        import aegra_api.core.database as target
    elif peer == "lgpg":
        import langgraph_runtime_pg.store as target
    else:
        raise SystemExit(f"unknown peer {peer!r}")
    target.AsyncPostgresStore = indexed  # type: ignore[attr-defined]
    from uvicorn.main import main as uvicorn_main

    sys.argv = ["uvicorn", *args]
    uvicorn_main()


if __name__ == "__main__":
    main()
