"""Foundation figures: embedding, ingest, search, and the cost of the HTTP API around the graph.

Side by side in one run: the same offline question answered by `graph.ainvoke` in-process and by
`POST /threads/{id}/runs/wait` on a live `keel serve`, on the same database, interleaved.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx

from tests.benchmarks.common import BIN, ROOT, free_port, new_db, process, scratch_postgres, summary_ms, table

QUESTIONS = [
    "How do I scale Keel out?",
    "What happens when a worker crashes?",
    "How is long-term memory stored?",
    "Which environment variables configure the model?",
    "How do I open the graph in LangGraph Studio?",
]


async def _inprocess(url: str, rounds: int) -> dict:
    from agent.graph import recursion_limit
    from memory.embeddings import EMBED_DIMS, get_embeddings
    from memory.ingest import ingest_paths
    from memory.search import search_docs
    from server.db import open_database
    from server.service import KeelService
    from server.settings import Settings

    emb = get_embeddings(None)
    t = time.perf_counter()
    emb.embed_query("warm up")
    q_lat = []
    for i in range(100):
        t = time.perf_counter()
        emb.embed_query(f"{QUESTIONS[i % len(QUESTIONS)]} {i}")
        q_lat.append(time.perf_counter() - t)
    db = await open_database(url, embeddings=emb, dims=EMBED_DIMS)
    report = await ingest_paths(db.store, [ROOT / "docs"], namespace="default", root=ROOT)
    s_lat = []
    for i in range(100):
        t = time.perf_counter()
        await search_docs(db.store, QUESTIONS[i % len(QUESTIONS)], namespace="default", k=4)
        s_lat.append(time.perf_counter() - t)
    svc = KeelService(Settings(database_url=url), db)
    ctx = svc.default_context("local")
    direct = []
    for i in range(rounds):
        cfg = {
            "configurable": {"thread_id": str(uuid.uuid4())},
            "recursion_limit": recursion_limit(ctx.max_steps),
        }
        t = time.perf_counter()
        await svc.graph.ainvoke(
            {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]},
            cfg,
            context=ctx,
            durability="sync",
        )
        direct.append(time.perf_counter() - t)
    await db.close()
    return {
        "embed_query": summary_ms(q_lat),
        "search": summary_ms(s_lat),
        "ingest": report.to_dict(),
        "direct": direct,
    }


def run(rounds: int = 30) -> str:
    with scratch_postgres() as (admin, _server):
        url = new_db(admin, "bench_foundation")
        res = asyncio.run(_inprocess(url, rounds))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        api = []
        with (
            process(
                [str(BIN / "keel"), "serve", "--port", str(port), "--log-level", "warning"],
                {"DATABASE_URL": url, "KEEL_LOG_LEVEL": "WARNING"},
                base + "/ok",
            ),
            httpx.Client(base_url=base, timeout=60) as c,
        ):
            for _ in range(3):
                c.post(
                    "/runs/wait",
                    json={
                        "assistant_id": "agent",
                        "input": {"messages": [{"role": "user", "content": "warm"}]},
                    },
                )
            for i in range(rounds):
                tid = c.post("/threads", json={}).json()["thread_id"]
                t = time.perf_counter()
                r = c.post(
                    f"/threads/{tid}/runs/wait",
                    json={
                        "assistant_id": "agent",
                        "input": {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]},
                    },
                )
                api.append(time.perf_counter() - t)
                assert r.status_code == 200 and "answer" in r.json(), r.text
    ing = res["ingest"]
    d, a = summary_ms(res["direct"]), summary_ms(api)
    rows = [
        {
            "measure": "embed one query (offline MiniLM)",
            "p50 ms": res["embed_query"]["p50"],
            "p95 ms": res["embed_query"]["p95"],
        },
        {
            "measure": "search_docs k=4 (embed + HNSW)",
            "p50 ms": res["search"]["p50"],
            "p95 ms": res["search"]["p95"],
        },
        {
            "measure": "offline agent turn, graph.ainvoke (sync durability)",
            "p50 ms": d["p50"],
            "p95 ms": d["p95"],
        },
        {"measure": "same turn via POST /threads/{id}/runs/wait", "p50 ms": a["p50"], "p95 ms": a["p95"]},
    ]
    out = table(rows, ["measure", "p50 ms", "p95 ms"])
    out += (
        f"\n\nIngest of docs/: {ing['files']} files, {ing['chunks']} chunks in {ing['seconds']:.1f} s "
        f"({ing['chunks'] / max(ing['seconds'], 1e-9):.1f} chunks/s).\n"
        f"API overhead ratio (runs/wait p50 / graph.ainvoke p50): {a['p50'] / d['p50']:.2f}x "
        f"({rounds} sequential turns each)."
    )
    return out
