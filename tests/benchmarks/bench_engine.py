"""Run-engine figures: Keel's queue path against a plain FastAPI + stock saver app and `langgraph dev`.

Side by side in one run, one scratch embedded Postgres (fsync and synchronous_commit on), one client
(httpx.AsyncClient in this process), on the no-op 4-node graph (tests/support/fault_graph.py, input
{"plan": {}}). Every server is a subprocess with its own database on the same Postgres:

- keel:      `keel serve --workers 8` (runs go through keel_runs to the in-process worker)
- keel-ext:  `keel serve --workers 0` + one `keel worker --concurrency 8` process
- fastapi:   tests/benchmarks/baseline_app.py: the graph runs in the request, STOCK AsyncPostgresSaver
             (with its instance lock) on a 10-connection pool, durability "sync"
- fastapi+store: the same app with an AsyncPostgresStore, so the graph's per-node effect rows hit
             Postgres as they do in Keel (the fault graph writes one store row per node when a store exists)
- langgraph dev: in-memory runtime (not durable), its queue polls every 0.5 s

Parts: (1) latency and throughput, sequential rounds interleaved across servers, with CPU per run (server,
Postgres, client) and Keel's queued/executing split; then the same for Keel and the FastAPI apps with a slow
disk emulated (commit_delay), because the stock saver's instance lock only bites when commits are slow;
(2) transactions and WAL fsyncs per run from pg_stat_database / pg_stat_io / pg_stat_wal deltas; (3) recovery
after SIGKILL of the worker running a run, with two `keel worker` processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from tests.benchmarks.common import (
    BIN,
    ROOT,
    create_threads,
    free_port,
    new_db,
    pct,
    row_change_table,
    run_on_scratch_postgres,
    table,
)

GRAPH = "tests.support.fault_graph:builder"
BODY = {"assistant_id": "agent", "input": {"plan": {}}}
EXPECTED_LOG = ["a", "b", "c", "d"]
ROUNDS = 4  # sequential latency is measured in this many rounds, interleaved across servers
CONC = 8
WARMUP = 20
STATS_FLUSH_S = 11.0  # idle backends flush their statistics at most every 10 s (PGSTAT_IDLE_INTERVAL)
# A slower disk, emulated: every WAL flush for a synchronous commit first sleeps this long (commit_delay with
# commit_siblings = 0), so group commit still works as on a real disk. durability.md §8's VM: ~2.9 ms/commit.
SLOW_COMMIT_DELAY_US = 2500
SLOW_N_SEQ, SLOW_N_CONC = 60, 200


# ------------------------------------------------------------------------------------------ processes


class Proc:
    """A server subprocess in its own process group, logging to a temp file outside the repo."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"keel-bench-{name}-", suffix=".log", delete=False)
        self.p = subprocess.Popen(
            args,
            env={**os.environ, **env},
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.p.pid

    def tail(self, n: int = 2500) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def ready(self, url: str | None = None, line: str | None = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as c:
            while True:
                if url:
                    try:
                        if (await c.get(url)).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                elif line and line in self.tail(100_000):
                    return
                if self.p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start (exit {self.p.poll()}):\n{self.tail()}")
                await asyncio.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, wait: float = 15) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, sig)
                self.p.wait(timeout=wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait(timeout=10)
        else:  # the leader is gone; make sure nothing it started survives
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not self.log.closed:
            self.log.close()
            try:
                os.unlink(self.log.name)
            except OSError:
                pass


class Procs:
    def __init__(self) -> None:
        self.all: list[Proc] = []

    def start(self, *a, **kw) -> Proc:
        p = Proc(*a, **kw)
        self.all.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.all):
            try:
                p.stop()
            except Exception:  # keep stopping the others
                pass


def keel_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "KEEL_GRAPH": GRAPH,
        "PYTHONPATH": str(ROOT),
        "KEEL_LOG_LEVEL": "WARNING",
        "KEEL_HOME": str(home),
        "KEEL_DRAIN_SECONDS": "5",
        **extra,
    }


# ------------------------------------------------------------------------------------------ client side


@dataclass
class Variant:
    key: str
    label: str
    base: str = ""
    n_seq: int = 200
    n_conc: int = 400
    db: str | None = None
    seq: list[float] = field(default_factory=list)
    seq_wall: float = 0.0
    conc: list[float] = field(default_factory=list)
    conc_wall: float = 0.0
    error: str | None = None
    pgids: list[int] = field(default_factory=list)  # process groups of its server processes
    seq_tids: list[str] = field(default_factory=list)
    cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # server, Postgres, client seconds


async def _run(c: httpx.AsyncClient, tid: str) -> float:
    t = time.perf_counter()
    r = await c.post(f"/threads/{tid}/runs/wait", json=BODY)
    dt = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"runs/wait -> {r.status_code}: {r.text[:300]}")
    out = json.loads(r.content)
    if not isinstance(out, dict) or out.get("log") != EXPECTED_LOG:
        raise RuntimeError(f"unexpected result: {r.text[:300]}")
    return dt


async def _sequential(
    c: httpx.AsyncClient, n: int, v: Variant | None = None, meter=None
) -> tuple[list[float], float]:
    tids = await create_threads(c, n)
    before = meter(v) if meter else None
    t = time.perf_counter()
    lat = [await _run(c, tid) for tid in tids]
    wall = time.perf_counter() - t
    if meter:
        after = meter(v)
        v.cpu = [x + b - a for x, a, b in zip(v.cpu, before, after, strict=True)]
        v.seq_tids += tids
    return lat, wall


def _proc_stats() -> list[tuple[int, int, int, float]]:
    """(pid, ppid, pgrp, cpu seconds incl. reaped children) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2 :].split()
        out.append((int(d), int(f[1]), int(f[2]), sum(int(x) for x in f[11:15]) / tick))
    return out


def _steal_counters() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs: how much the hypervisor took from this VM."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (f[7] if len(f) > 7 else 0), sum(f[:8])


class CpuMeter:
    """CPU seconds used so far by a server's process groups, by Postgres, and by this client process."""

    def __init__(self, postmaster: int) -> None:
        self.pm = postmaster

    def __call__(self, v: Variant) -> tuple[float, float, float]:
        stats = _proc_stats()
        server = sum(c for _, _, g, c in stats if g in v.pgids)
        pg = sum(c for pid, ppid, _, c in stats if pid == self.pm or ppid == self.pm)
        return server, pg, time.process_time()


async def _concurrent(c: httpx.AsyncClient, n: int) -> tuple[list[float], float]:
    tids = await create_threads(c, n)
    it = iter(tids)
    lat: list[float] = []

    async def worker() -> None:
        for tid in it:
            lat.append(await _run(c, tid))

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONC)))
    return lat, time.perf_counter() - t


def _client(v: Variant) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=v.base, timeout=120, limits=httpx.Limits(max_connections=2 * CONC))


async def measure_latency(
    variants: list[Variant], meter: CpuMeter, *, warmup: bool = True, rounds: int = ROUNDS
) -> None:
    clients = {v.key: _client(v) for v in variants}
    try:
        live = list(variants)
        for v in live if warmup else []:  # warm-up: pools, imports, first-run paths
            c = clients[v.key]
            try:
                if v.key == "lgdev":
                    await _concurrent(c, CONC)
                else:
                    await _sequential(c, WARMUP)
                    await _concurrent(c, 2 * CONC)
            except Exception as exc:  # report it and carry on with the others
                v.error = f"warm-up: {exc}"
        live = [v for v in live if v.error is None]
        for _ in range(rounds):  # sequential, interleaved rounds
            for v in live:
                if v.error:
                    continue
                try:
                    lat, wall = await _sequential(clients[v.key], v.n_seq // rounds, v, meter)
                    v.seq += lat
                    v.seq_wall += wall
                except Exception as exc:
                    v.error = f"sequential: {exc}"
        for _ in range(2):  # concurrency 8, two interleaved rounds
            for v in live:
                if v.error:
                    continue
                try:
                    lat, wall = await _concurrent(clients[v.key], v.n_conc // 2)
                    v.conc += lat
                    v.conc_wall += wall
                except Exception as exc:
                    v.error = f"concurrency {CONC}: {exc}"
    finally:
        for c in clients.values():
            await c.aclose()


# ------------------------------------------------------------------------------------------ WAL / commits


def _snapshot(admin: str, urls: dict[str, str]) -> dict:
    with psycopg.connect(admin, autocommit=True) as c:
        fsyncs, writes = c.execute(
            "SELECT coalesce(sum(fsyncs), 0), coalesce(sum(writes), 0) FROM pg_stat_io WHERE object = 'wal'"
        ).fetchone()
        records, nbytes = c.execute("SELECT wal_records, wal_bytes FROM pg_stat_wal").fetchone()
        xacts = dict(
            c.execute(
                "SELECT datname, xact_commit FROM pg_stat_database WHERE datname = ANY(%s)",
                ([conninfo_db(u) for u in urls.values()],),
            ).fetchall()
        )
    tables = {}
    for key, url in urls.items():
        with psycopg.connect(url, autocommit=True) as c:
            tables[key] = {
                r[0]: (r[1], r[2], r[3])
                for r in c.execute(
                    "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
                ).fetchall()
            }
    return {
        "t": time.monotonic(),
        "fsyncs": int(fsyncs),
        "wal_writes": int(writes),
        "records": int(records),
        "bytes": int(nbytes),
        "xacts": {k: int(xacts.get(conninfo_db(u), 0)) for k, u in urls.items()},
        "tables": tables,
    }


def conninfo_db(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(url)["dbname"]


async def measure_commits(admin: str, variants: list[Variant], k: int) -> dict:
    """Sequential K runs per variant between statistics snapshots taken after the backends went idle."""
    urls = {v.key: v.db for v in variants if v.db}
    tids = {}
    for v in variants:  # threads first: creating them is not part of a run
        async with _client(v) as c:
            tids[v.key] = await create_threads(c, k)
    await asyncio.sleep(STATS_FLUSH_S)
    snaps = [_snapshot(admin, urls)]
    for v in variants:
        async with _client(v) as c:
            for tid in tids[v.key]:
                await _run(c, tid)
        await asyncio.sleep(STATS_FLUSH_S)
        snaps.append(_snapshot(admin, urls))
    await asyncio.sleep(STATS_FLUSH_S)  # an idle window: background chatter to subtract
    snaps.append(_snapshot(admin, urls))
    idle_a, idle_b = snaps[-2], snaps[-1]
    idle_s = idle_b["t"] - idle_a["t"]
    out = {}
    for i, v in enumerate(variants):
        a, b = snaps[i], snaps[i + 1]
        dur = b["t"] - a["t"]

        def net(get, a=a, b=b, dur=dur):
            return (get(b) - get(a)) - (get(idle_b) - get(idle_a)) * dur / idle_s

        tabs = {}
        for rel in set(b["tables"][v.key]) | set(a["tables"][v.key]):
            before = a["tables"][v.key].get(rel, (0, 0, 0))
            after = b["tables"][v.key].get(rel, (0, 0, 0))
            d = tuple((y - x) / k for x, y in zip(before, after, strict=True))
            if any(d):
                tabs[rel] = d
        out[v.key] = {
            "xacts": net(lambda s, key=v.key: s["xacts"][key]) / k,
            "fsyncs": net(lambda s: s["fsyncs"]) / k,
            "wal_writes": net(lambda s: s["wal_writes"]) / k,
            "records": net(lambda s: s["records"]) / k,
            "bytes": net(lambda s: s["bytes"]) / k,
            "tables": tabs,
            "idle_xacts_per_s": (idle_b["xacts"][v.key] - idle_a["xacts"][v.key]) / idle_s,
        }
    out["_idle_fsyncs_per_s"] = (idle_b["fsyncs"] - idle_a["fsyncs"]) / idle_s
    return out


# ------------------------------------------------------------------------------------------ recovery


async def measure_recovery(
    admin: str, home: Path, tmp: Path, leases: tuple[float, ...], reps: int, tree: str | None = None
) -> list[dict]:
    """Recovery rows for each lease; `tree`: serve Keel from that checkout instead (a before/after run)."""
    rows: list[dict] = []
    for lease in leases:
        rows += await _recovery(admin, home, tmp, lease, reps, tree)
    return rows


async def _recovery(
    admin: str, home: Path, tmp: Path, lease: float, reps: int, tree: str | None = None
) -> list[dict]:
    rows = []
    tag = "" if tree is None else "_base"
    url = new_db(admin, f"bench_recovery_{str(lease).replace('.', '_')}{tag}")
    env = keel_env(url, home, KEEL_LEASE_SECONDS=str(lease), **({"PYTHONPATH": tree} if tree else {}))
    procs = Procs()

    def start_worker(i: int) -> Proc:
        return procs.start(
            f"recovery-w{i}",
            [str(BIN / "keel"), "worker", "--concurrency", "2", "--name", f"bench-w{i}"],
            env,
        )

    try:
        port = free_port()
        api = procs.start(
            "recovery-api",
            [str(BIN / "keel"), "serve", "--workers", "0", "--port", str(port), "--log-level", "warning"],
            env,
        )
        await api.ready(f"http://127.0.0.1:{port}/ok")  # migrations done before the workers join
        workers = {p.pid: p for p in (start_worker(1), start_worker(2))}
        for p in workers.values():
            await p.ready(line="keel worker ")
        n_started = 2
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as db,
        ):
            for rep in range(1, reps + 1):
                touch = tmp / f"touch-{lease}-{rep}{tag}"
                tid = (await c.post("/threads", json={})).json()["thread_id"]
                body = {"assistant_id": "agent", "input": {"plan": {"b": {"sleep": 3, "touch": str(touch)}}}}
                r = await c.post(f"/threads/{tid}/runs", json=body)
                r.raise_for_status()
                rid = r.json()["run_id"]
                deadline = time.monotonic() + 30
                while not (touch.exists() and touch.read_text().strip()):
                    if time.monotonic() > deadline:
                        raise RuntimeError("node b never started")
                    await asyncio.sleep(0.005)
                victim = int(touch.read_text().split()[0])
                if victim not in workers:
                    raise RuntimeError(f"pid {victim} in the touch file is not one of our workers")
                os.killpg(victim, signal.SIGKILL)
                t_kill = time.monotonic()
                workers.pop(victim).stop()
                t_claim = t_resume = t_done = None
                attempt = None
                deadline = t_kill + 60
                while t_done is None and time.monotonic() < deadline:
                    now = time.monotonic()
                    if t_resume is None and len(touch.read_text().split()) >= 2:
                        t_resume = now
                    cur = await db.execute("SELECT status, attempt FROM keel_runs WHERE run_id = %s", (rid,))
                    status, attempt = await cur.fetchone()
                    if t_claim is None and attempt >= 2 and status in ("running", "success"):
                        t_claim = now
                    if status in ("success", "error", "interrupted"):
                        t_done = now
                    await asyncio.sleep(0.01)
                pids = [int(x) for x in touch.read_text().split()]
                n_started += 1
                repl = start_worker(n_started)  # back to two workers for the next repetition
                workers[repl.pid] = repl
                await repl.ready(line="keel worker ")
                res = (await c.get(f"/threads/{tid}/runs/{rid}")).json()
                rows.append(
                    {
                        "tree": tree or "this",
                        "lease s": lease,
                        "rep": rep,
                        "re-claimed s": _s(t_claim, t_kill),
                        "b restarted s": _s(t_resume, t_kill),
                        "completed s": _s(t_done, t_kill),
                        "status": res.get("status"),
                        "attempt": attempt,
                        "other worker": "yes" if len(pids) >= 2 and pids[1] != pids[0] else "no",
                        "_resume": None if t_resume is None else t_resume - t_kill,
                    }
                )
    finally:
        procs.stop_all()
    return rows


def _s(t: float | None, t0: float) -> str | float:
    return "never" if t is None else t - t0


# ------------------------------------------------------------------------------------------ the section


def _lgdev_dir(tmp: Path) -> Path:
    d = tmp / "lgdev"
    d.mkdir()
    (d / "langgraph.json").write_text(
        json.dumps(
            {
                "dependencies": [str(ROOT)],
                "graphs": {"agent": str(ROOT / "tests/support/fault_graph.py") + ":graph"},
                "env": {},
            }
        )
    )
    return d


def fsync_floor(admin: str, n: int = 200) -> float:
    """ms per single-row autocommit INSERT (one WAL fsync each) on this Postgres, one client."""
    url = new_db(admin, "bench_fsync")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE t (x int, pad text)")
        for i in range(20):
            c.execute("INSERT INTO t VALUES (%s, repeat('x', 200))", (i,))
        t = time.perf_counter()
        for i in range(n):
            c.execute("INSERT INTO t VALUES (%s, repeat('x', 200))", (i,))
        return (time.perf_counter() - t) / n * 1000


def keel_breakdown(v: Variant) -> dict | None:
    """p50 of the run's phases as Keel records them (same clock: one machine)."""
    if not v.seq_tids or not v.db:
        return None
    with psycopg.connect(v.db, autocommit=True) as c:
        rows = c.execute(
            "SELECT extract(epoch FROM started_at - created_at) * 1000, "
            "extract(epoch FROM finished_at - started_at) * 1000 FROM keel_runs WHERE thread_id = ANY(%s::uuid[])",
            (v.seq_tids,),
        ).fetchall()
    if not rows:
        return None
    return {"queued": pct([float(r[0]) for r in rows], 50), "executing": pct([float(r[1]) for r in rows], 50)}


async def _main(admin: str, tmp: Path, postmaster: int) -> str:
    home = tmp / "keel-home"
    home.mkdir()
    floor_ms = fsync_floor(admin)
    lg_n_seq, lg_n_conc = 20, 40
    variants = [
        Variant("keel", "Keel `serve --workers 8`"),
        Variant("keel-ext", "Keel `serve --workers 0` + `keel worker --concurrency 8`"),
        Variant("fastapi", "FastAPI + stock AsyncPostgresSaver (in-request)"),
        Variant("fastapi+store", "same + AsyncPostgresStore (graph's effect rows in PG, as in Keel)"),
        Variant("lgdev", "`langgraph dev` (inmem, not durable)", n_seq=lg_n_seq, n_conc=lg_n_conc),
    ]
    by = {v.key: v for v in variants}
    procs = Procs()
    started: dict[str, list[Proc]] = {}
    breakdown: dict = {}
    commits: dict = {}
    k_runs = 100
    startup_s = latency_s = commits_s = slow_s = slow_floor_ms = steal_pct = 0.0
    slow: list[Variant] = []
    try:
        t0 = time.monotonic()
        for v in variants:
            port = free_port()
            v.base = f"http://127.0.0.1:{port}"
            if v.key != "lgdev":
                v.db = new_db(admin, "bench_" + v.key.replace("-", "_").replace("+", "_"))
            if v.key == "keel":
                started[v.key] = [
                    procs.start(
                        v.key,
                        [
                            str(BIN / "keel"),
                            "serve",
                            "--workers",
                            str(CONC),
                            "--port",
                            str(port),
                            "--log-level",
                            "warning",
                        ],
                        keel_env(v.db, home),
                    )
                ]
            elif v.key == "keel-ext":
                api = procs.start(
                    v.key,
                    [
                        str(BIN / "keel"),
                        "serve",
                        "--workers",
                        "0",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                    ],
                    keel_env(v.db, home),
                )
                started[v.key] = [api]
            elif v.key.startswith("fastapi"):
                env = {
                    "BASELINE_DATABASE_URL": v.db,
                    "PYTHONPATH": str(ROOT),
                    "BASELINE_STORE": "1" if v.key.endswith("store") else "0",
                }
                started[v.key] = [
                    procs.start(
                        v.key,
                        [
                            str(BIN / "uvicorn"),
                            "tests.benchmarks.baseline_app:app",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--log-level",
                            "warning",
                            "--no-access-log",
                        ],
                        env,
                    )
                ]
            else:
                env = {
                    "LANGGRAPH_NO_VERSION_CHECK": "true",
                    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
                    "LANGSMITH_TRACING": "false",
                    "PYTHONPATH": str(ROOT),
                }
                started[v.key] = [
                    procs.start(
                        v.key,
                        [
                            str(BIN / "langgraph"),
                            "dev",
                            "--no-browser",
                            "--no-reload",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--server-log-level",
                            "WARNING",
                        ],
                        env,
                        cwd=_lgdev_dir(tmp),
                    )
                ]
        for v in variants:
            v.pgids = [p.pid for p in started[v.key]]
            try:
                await started[v.key][0].ready(v.base + "/ok")
            except RuntimeError as exc:
                v.error = f"start: {exc}"
        if by["keel-ext"].error is None:  # the external worker joins once the API has migrated the database
            w = procs.start(
                "keel-ext-worker",
                [str(BIN / "keel"), "worker", "--concurrency", str(CONC)],
                keel_env(by["keel-ext"].db, home),
            )
            try:
                await w.ready(line="keel worker ")
                by["keel-ext"].pgids.append(w.pid)
            except RuntimeError as exc:
                by["keel-ext"].error = f"worker start: {exc}"
        startup_s = time.monotonic() - t0

        t1 = time.monotonic()
        steal0 = _steal_counters()
        await measure_latency(variants, CpuMeter(postmaster))
        steal1 = _steal_counters()
        steal_pct = 100 * (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
        breakdown = {key: keel_breakdown(by[key]) for key in ("keel", "keel-ext")}
        latency_s = time.monotonic() - t1
        for key in ("lgdev", "keel-ext"):  # not part of the WAL comparison: stop them to cut noise
            for p in started.get(key, []):
                p.stop()
        for p in procs.all:
            if p.name == "keel-ext-worker":
                p.stop()

        t2 = time.monotonic()
        wal_variants = [by[k] for k in ("keel", "fastapi", "fastapi+store") if by[k].error is None]
        try:
            commits = await measure_commits(admin, wal_variants, k_runs)
        except Exception as exc:  # report it with the other parts
            commits = {"_error": f"{type(exc).__name__}: {exc}"}
        commits_s = time.monotonic() - t2

        t4 = time.monotonic()
        slow = [
            Variant(
                k,
                by[k].label,
                base=by[k].base,
                db=by[k].db,
                pgids=by[k].pgids,
                n_seq=SLOW_N_SEQ,
                n_conc=SLOW_N_CONC,
            )
            for k in ("keel", "fastapi", "fastapi+store")
            if by[k].error is None
        ]
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f"ALTER SYSTEM SET commit_delay = {SLOW_COMMIT_DELAY_US}")
            c.execute("ALTER SYSTEM SET commit_siblings = 0")
            c.execute("SELECT pg_reload_conf()")
        try:
            await asyncio.sleep(0.5)
            slow_floor_ms = fsync_floor(admin, 100)
            await measure_latency(slow, CpuMeter(postmaster), warmup=False, rounds=2)
        finally:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute("ALTER SYSTEM RESET commit_delay")
                c.execute("ALTER SYSTEM RESET commit_siblings")
                c.execute("SELECT pg_reload_conf()")
        slow_s = time.monotonic() - t4
    finally:
        procs.stop_all()

    t3 = time.monotonic()
    try:
        recovery = await measure_recovery(admin, home, tmp, (5.0, 2.0), 3)
        rec_err = None
    except Exception as exc:  # report it with the other parts
        recovery, rec_err = [], f"{type(exc).__name__}: {exc}"
    recovery_s = time.monotonic() - t3
    return _report(
        Results(
            variants,
            by,
            commits,
            k_runs,
            recovery,
            rec_err,
            (startup_s, latency_s, commits_s, slow_s, recovery_s),
            floor_ms,
            breakdown,
            slow,
            slow_floor_ms,
            steal_pct,
        )
    )


@dataclass
class Results:
    variants: list[Variant]
    by: dict[str, Variant]
    commits: dict
    k_runs: int
    recovery: list[dict]
    rec_err: str | None
    times: tuple[float, ...]
    floor_ms: float
    breakdown: dict
    slow: list[Variant]
    slow_floor_ms: float
    steal_pct: float


def _p50(v: Variant | None) -> float | None:
    return pct([x * 1000 for x in v.seq], 50) if v and v.seq else None


def _c8(v: Variant | None) -> float | None:
    return len(v.conc) / v.conc_wall if v and v.conc_wall else None


def _latency_table(variants: list[Variant]) -> str:
    rows = []
    for v in variants:
        if v.error and not v.seq:
            rows.append({"variant": v.label, "seq N": f"failed: {v.error[:200]}"})
            continue
        seq = [x * 1000 for x in v.seq]
        con = [x * 1000 for x in v.conc]
        rows.append(
            {
                "variant": v.label + (f" (then failed: {v.error[:120]})" if v.error else ""),
                "seq N": len(seq),
                "p50 ms": pct(seq, 50) if seq else "",
                "p99 ms": pct(seq, 99) if seq else "",
                "c1 runs/s": len(seq) / v.seq_wall if v.seq_wall else "",
                "c8 N": len(con),
                "c8 runs/s": len(con) / v.conc_wall if v.conc_wall else "",
                "c8 p50 ms": pct(con, 50) if con else "",
                "c8 p99 ms": pct(con, 99) if con else "",
            }
        )
    return table(
        rows,
        ["variant", "seq N", "p50 ms", "p99 ms", "c1 runs/s", "c8 N", "c8 runs/s", "c8 p50 ms", "c8 p99 ms"],
    )


def _ok(cond: bool) -> str:
    return "met" if cond else "MISSED"


def _ratio_targets(by: dict[str, Variant], where: str) -> list[str]:
    k, f, fs = by.get("keel"), by.get("fastapi"), by.get("fastapi+store")
    out = []
    if _p50(k) and _p50(f):
        r = _p50(k) / _p50(f)
        extra = (
            f" (vs FastAPI + store, same DB work in the graph: {_p50(k) / _p50(fs):.2f}×)" if _p50(fs) else ""
        )
        out.append(
            f"- Keel p50 / FastAPI p50 ≤ 1.3×, {where}: {_p50(k):.1f} / {_p50(f):.1f} ms = **{r:.2f}×** → "
            f"{_ok(r <= 1.3)}{extra}"
        )
    if _c8(k) and _c8(f):
        r = _c8(k) / _c8(f)
        extra = f" (vs FastAPI + store: {_c8(k) / _c8(fs):.2f}×)" if _c8(fs) else ""
        out.append(
            f"- Keel c8 throughput / stock-saver c8 throughput ≥ 2.5×, {where}: {_c8(k):.1f} / "
            f"{_c8(f):.1f} runs/s = **{r:.2f}×** → {_ok(r >= 2.5)}{extra}"
        )
    return out


def _report(r: Results) -> str:
    by = r.by
    out: list[str] = [
        f"Postgres commit floor on this machine: **{r.floor_ms:.2f} ms** per single-row autocommit "
        "INSERT (one client, fsync on; durability.md §8 measured 2.9 ms on its VM).\n"
    ]
    out.append(
        f"**1. `POST /threads/{{id}}/runs/wait`, no-op 4-node graph.** Each run on a fresh thread created "
        f"before timing; only the wait is timed. Sequential: {ROUNDS} interleaved rounds per server after "
        f"{WARMUP} warm-up runs (c1 runs/s = runs / wall time of the sequential loops). Concurrency {CONC}: "
        f"{CONC} async tasks on one httpx.AsyncClient, 2 interleaved rounds. `langgraph dev` gets "
        f"N={by['lgdev'].n_seq} sequential / {by['lgdev'].n_conc} concurrent (≈1 s per sequential run). "
        f"Client: this process; servers: subprocesses; one Postgres (fsync on, synchronous_commit on). "
        f"CPU steal by the hypervisor during this part: {r.steal_pct:.1f}%.\n"
    )
    out.append(_latency_table(r.variants))
    cpu_rows = []
    for v in r.variants:
        if not v.seq:
            continue
        n = len(v.seq)
        server, pg, client = (x * 1000 / n for x in v.cpu)
        row = {
            "variant": v.label,
            "mean wall ms": sum(v.seq) * 1000 / n,
            "server CPU ms": server,
            "Postgres CPU ms": pg,
            "client CPU ms": client,
            "sum CPU ms": server + pg + client,
        }
        b = r.breakdown.get(v.key)
        if b:
            row["queued→claimed p50"] = b["queued"]
            row["claimed→finished p50"] = b["executing"]
        cpu_rows.append(row)
    out.append(
        "\nWhere a sequential run's time goes (CPU from /proc over the sequential rounds, per run; server = "
        "all its processes; Postgres = postmaster + backends, cluster-wide; client = this process. Keel "
        "phases from keel_runs created_at/started_at/finished_at, ms):\n"
    )
    out.append(
        table(
            cpu_rows,
            [
                "variant",
                "mean wall ms",
                "server CPU ms",
                "Postgres CPU ms",
                "client CPU ms",
                "sum CPU ms",
                "queued→claimed p50",
                "claimed→finished p50",
            ],
        )
    )
    if r.slow:
        out.append(
            f"\nSame servers with a slower disk emulated (commit_delay = {SLOW_COMMIT_DELAY_US} µs, "
            f"commit_siblings = 0: every synchronous WAL flush sleeps first; group commit still works). "
            f"Commit floor under it: **{r.slow_floor_ms:.2f} ms**. {SLOW_N_SEQ} sequential runs "
            f"(2 interleaved rounds) and {SLOW_N_CONC} at concurrency {CONC} per server, no warm-up "
            f"(the servers are warm):\n"
        )
        out.append(_latency_table(r.slow))

    # ---- commits
    commits = r.commits
    if commits.get("_error"):
        out.append(f"\n**2. Transactions and WAL fsyncs per run**: failed: {commits['_error']}")
    elif commits:
        labels = {
            "keel": "Keel `serve --workers 8`",
            "fastapi": "FastAPI + stock saver",
            "fastapi+store": "FastAPI + stock saver + store",
        }
        keys = [k for k in labels if k in commits]
        crow = []
        for key in keys:
            m = commits[key]
            ck = m["tables"].get("checkpoints", (0, 0, 0))[0] or 6.0
            crow.append(
                {
                    "variant": labels[key],
                    "transactions/run": m["xacts"],
                    "WAL fsyncs/run": m["fsyncs"],
                    "WAL writes/run": m["wal_writes"],
                    "WAL records/run": m["records"],
                    "WAL KB/run": m["bytes"] / 1024,
                    "checkpoints/run": ck,
                    "fsyncs/checkpoint": m["fsyncs"] / ck,
                    "fsyncs/node (÷4)": m["fsyncs"] / 4,
                    "xacts/checkpoint": m["xacts"] / ck,
                }
            )
        out.append(
            f"\n**2. Transactions and WAL fsyncs per run** ({r.k_runs} sequential runs per server; deltas of "
            "pg_stat_database.xact_commit for that server's database (every transaction, read-only ones and "
            "the pool's empty health-check queries included), pg_stat_io object='wal' fsyncs/writes "
            "(cluster-wide, all backend types incl. walwriter) and pg_stat_wal wal_records/wal_bytes; PG 18 "
            f"has no wal_sync/wal_write in pg_stat_wal. Snapshots taken {STATS_FLUSH_S:.0f} s after the load "
            "so idle backends have flushed their statistics; an idle window is subtracted pro rata. A run "
            f"writes {crow[0]['checkpoints/run'] if crow else 6:.0f} checkpoints (input, the `__start__` "
            "step, 4 nodes): per super-step = ÷ checkpoints/run; per node = ÷4.)\n"
        )
        out.append(
            table(
                crow,
                [
                    "variant",
                    "transactions/run",
                    "WAL fsyncs/run",
                    "WAL writes/run",
                    "WAL records/run",
                    "WAL KB/run",
                    "checkpoints/run",
                    "fsyncs/checkpoint",
                    "fsyncs/node (÷4)",
                    "xacts/checkpoint",
                ],
            )
        )
        out.append("\nRow changes per run (inserted / updated / deleted, pg_stat_user_tables):\n")
        out.append(row_change_table(commits, keys))
        if "keel" in commits:
            out.append(
                f"\nIdle background: Keel {commits['keel']['idle_xacts_per_s']:.2f} transactions/s "
                f"(worker poll + reap), cluster {commits['_idle_fsyncs_per_s']:.2f} WAL fsyncs/s."
            )

    # ---- recovery
    out.append(
        "\n**3. Recovery after SIGKILL** (`keel serve --workers 0` + two `keel worker --concurrency 2`; "
        "node b sleeps 3 s and appends its pid to a file; the worker whose pid appears is SIGKILLed at once; "
        "times from the SIGKILL: re-claimed = keel_runs.attempt 2 seen (polled every ~10 ms), b restarted = "
        "second pid in the file, completed = run terminal; a replacement worker is started after each "
        "repetition.)\n"
    )
    if r.rec_err:
        out.append(f"recovery failed: {r.rec_err}\n")
    out.append(
        table(
            [{k: v for k, v in row.items() if not k.startswith("_")} for row in r.recovery],
            [
                "lease s",
                "rep",
                "re-claimed s",
                "b restarted s",
                "completed s",
                "status",
                "attempt",
                "other worker",
            ],
        )
    )

    # ---- targets
    k, lg = by["keel"], by["lgdev"]
    tgt = []
    if _p50(k) and _p50(lg):
        ratio = _p50(lg) / _p50(k)
        tgt.append(
            f"- Keel p50 ≥ 20× lower than `langgraph dev` p50: {_p50(lg):.0f} / {_p50(k):.1f} ms = "
            f"**{ratio:.1f}×** → {_ok(ratio >= 20)}"
        )
    tgt += _ratio_targets(by, f"this disk ({r.floor_ms:.2f} ms commits)")
    if r.slow:
        tgt += _ratio_targets(
            {v.key: v for v in r.slow}, f"emulated slow disk ({r.slow_floor_ms:.2f} ms commits)"
        )
    res = [row["_resume"] for row in r.recovery]
    if res:
        worst = None if any(x is None for x in res) else max(res)
        tgt.append(
            f"- Resume after SIGKILL ≤ 10 s (lease 5 s and 2 s, {len(res)} kills): max "
            f"**{'never' if worst is None else f'{worst:.2f} s'}** → {_ok(worst is not None and worst <= 10)}"
        )
    if k.seq:
        per_node = [x * 1000 / 4 for x in k.seq]
        tgt.append(
            f"- (durability.md §8) per-node overhead at c1 p50 ≤ 12 ms, p99 ≤ 40 ms: Keel "
            f"{pct(per_node, 50):.1f} / {pct(per_node, 99):.1f} ms per node (run latency ÷ 4) → "
            f"{_ok(pct(per_node, 50) <= 12 and pct(per_node, 99) <= 40)}"
        )
    if _c8(k):
        tgt.append(
            f"- (durability.md §8) ≥ 50 runs/s at concurrency 8: Keel {_c8(k):.1f} runs/s → "
            f"{_ok(_c8(k) >= 50)}"
        )
    out.append("\n**Targets**\n\n" + "\n".join(tgt))
    st, lt, ct, sl, rt = r.times
    out.append(
        f"\n_(start-up {st:.0f} s, latency/throughput {lt:.0f} s, commits {ct:.0f} s, slow disk {sl:.0f} s, "
        f"recovery {rt:.0f} s)_"
    )
    return "\n".join(out)


def run() -> str:
    return run_on_scratch_postgres(_main, "keel-bench-engine-")


if __name__ == "__main__":
    print(run())
