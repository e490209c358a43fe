"""Fault tests with real processes, real signals and a real Postgres (durability.md, "Tests we should demand").

Scenarios: 1 SIGKILL mid-node (taken over at once: the worker's liveness lock dies with it), 4 SIGKILL
while checkpoints are written, 6 idle connections terminated, 7 two runs at once on one thread, 8 duplicate resumes, 9 zombie worker, 10 blocked event loop,
11 SIGTERM drain, 12 client disconnect + reconnect, 15 poison run. (5, Postgres restart, is in
test_postgres_restart.py because it needs a server of its own.) Each ends with the invariants: every
accepted run terminal, one checkpoint chain per thread, gap-free event logs, no lease left behind.
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import PLAIN, Cluster, ensure_workers, running_cluster, wait_file_lines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(database_url):
    with running_cluster(database_url) as c:
        yield c
    # Nothing leaks: once every Keel process is gone, no connection to the database remains.
    rows = c.sql(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    assert rows[0]["n"] == 0, c.sql(
        "SELECT application_name, state, query FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )


def start_slow_b(c: Cluster, tmp_path: Path, sleep: float) -> tuple[str, dict, Path, int]:
    """A fresh thread whose run sleeps `sleep` s in node b; returns once b started (with its worker's pid)."""
    ensure_workers(c)
    tid = c.thread()
    marker = tmp_path / "b"
    run = c.start_run(tid, {"b": {"sleep": sleep, "touch": str(marker)}}, **PLAIN)
    return tid, run, marker, wait_file_lines(marker, 1)[0]


def read_sse_ids(response, seen: list[tuple[int, str]], stop_after: int | None = None) -> None:
    """Append (id, event name) of each SSE event to `seen`; stop once it holds `stop_after` entries."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("id: "):
            seen.append((int(line[4:]), event))
            if stop_after is not None and len(seen) >= stop_after:
                return


def worker_with_pid(c: Cluster, pid: int):
    return next(p for p in c.procs if p.pid == pid)


def test_sigkill_mid_node_resumes_elsewhere_without_redoing_finished_nodes(cluster, tmp_path):
    tid, run, marker, pid = start_slow_b(cluster, tmp_path, 2.0)
    time.sleep(0.3)  # let b record its effect: the crash lands after the effect, before b ends
    killed_at = time.time()
    worker_with_pid(cluster, pid).signal(signal.SIGKILL)
    pids = wait_file_lines(marker, 2, timeout=20)
    resumed_after = time.time() - killed_at
    assert pids[1] != pid
    done = cluster.wait_status(tid, run["run_id"])
    assert done["status"] == "success" and done["attempt"] == 2
    # a finished before the crash: not redone. b was mid-step: it runs again (node granularity). c, d once.
    assert cluster.effects(tid) == {"a": 1, "b": 2, "c": 1, "d": 1}
    assert resumed_after < 10, f"resumed {resumed_after:.1f}s after SIGKILL"
    cluster.assert_invariants([tid])


def test_a_killed_workers_run_is_taken_over_without_waiting_out_its_lease(cluster, tmp_path):
    """The killed process's sessions end with it, and with them its liveness lock: another worker re-queues the
    run at once. The dead worker's lease is stretched to two minutes after the kill, so only that can free it."""
    tid, run, marker, pid = start_slow_b(cluster, tmp_path, 1.0)
    owner = cluster.sql("SELECT lease_owner, lease_lock FROM keel_runs WHERE run_id = %s", run["run_id"])[0]
    assert owner["lease_lock"] is not None, "the claim named the worker's liveness lock"
    worker_with_pid(cluster, pid).signal(signal.SIGKILL)
    cluster.sql(  # (a no-op if another worker was even quicker: the run is no longer this owner's)
        "UPDATE keel_runs SET lease_expires_at = now() + interval '120 seconds' "
        "WHERE run_id = %s AND lease_owner = %s AND status = 'running' RETURNING run_id",
        run["run_id"],
        owner["lease_owner"],
    )
    done = cluster.wait_status(tid, run["run_id"], timeout=60)
    assert done["status"] == "success" and done["attempt"] == 2
    assert wait_file_lines(marker, 2)[1] != pid
    effects = cluster.effects(tid)  # (b may have died before recording its effect: it counts 1 or 2)
    assert (effects["a"], effects["c"], effects["d"]) == (1, 1, 1), effects
    cluster.assert_invariants([tid])


def test_sigkill_at_random_points_while_checkpoints_are_written(cluster):
    """Fast runs (no sleeps): most kills land inside checkpoint writes or event flushes."""
    rng = random.Random(7)
    kills = attempts = 0
    while kills < 4:
        attempts += 1
        assert attempts <= 20, f"only {kills} of 4 runs were caught running to be killed"
        ensure_workers(cluster)
        tid = cluster.thread()
        run = cluster.start_run(tid, {}, **PLAIN)
        holder, deadline = None, time.time() + 5
        while not holder and time.time() < deadline:  # the claim: then kill at a random point of the run
            row = cluster.sql("SELECT lease_owner, status FROM keel_runs WHERE run_id = %s", run["run_id"])[0]
            if row["status"] not in ("pending", "running"):
                break
            holder = row["lease_owner"]
        if holder:
            time.sleep(rng.uniform(0.0, 0.02))
            worker_with_pid(cluster, int(holder.split(":")[1])).signal(signal.SIGKILL)
            kills += 1
        done = cluster.wait_status(tid, run["run_id"], timeout=30)
        assert done["status"] == "success", done
        effects = cluster.effects(tid)
        assert set(effects) == {"a", "b", "c", "d"} and all(1 <= n <= 2 for n in effects.values()), effects
        state = httpx.get(f"{cluster.url}/threads/{tid}/state").json()
        assert state["values"]["log"] == ["a", "b", "c", "d"], "no partial checkpoint: the state is whole"
        cluster.assert_invariants([tid])


def test_idle_connections_terminated_during_a_long_step(cluster, tmp_path):
    tid, run, _, _ = start_slow_b(cluster, tmp_path, 3.0)
    time.sleep(0.5)
    killed = cluster.sql(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle'"
    )
    assert killed[0]["n"] > 0
    done = cluster.wait_status(tid, run["run_id"])
    assert done["status"] == "success" and done["attempt"] == 1, done
    assert cluster.effects(tid) == {"a": 1, "b": 1, "c": 1, "d": 1}
    cluster.assert_invariants([tid])


def test_two_runs_at_once_on_one_thread(cluster):
    ensure_workers(cluster)
    tid = cluster.thread()
    results = {}

    def fire(tag):
        with cluster.client() as c:
            results[tag] = c.post(
                f"/threads/{tid}/runs",
                json={
                    "assistant_id": "agent",
                    "input": {"plan": {"a": {"sleep": 0.3}}, "inputs": [tag]},
                    **PLAIN,
                },
            )

    ts = [threading.Thread(target=fire, args=(t,)) for t in ("first", "second")]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert all(r.status_code == 200 for r in results.values())
    for r in results.values():
        cluster.wait_status(tid, r.json()["run_id"])
    state = httpx.get(f"{cluster.url}/threads/{tid}/state").json()["values"]
    assert sorted(state["inputs"]) == ["first", "second"], "both inputs land (enqueue)"
    assert state["log"] == ["a", "b", "c", "d"] * 2
    # With reject, a second run while one is active gets 409.
    run = cluster.start_run(tid, {"a": {"sleep": 1.0}}, **PLAIN)
    with cluster.client() as c:
        r = c.post(
            f"/threads/{tid}/runs",
            json={"assistant_id": "agent", "input": {"inputs": ["third"]}, "multitask_strategy": "reject"},
        )
    assert r.status_code == 409
    cluster.wait_status(tid, run["run_id"])
    cluster.assert_invariants([tid])


def test_duplicate_resumes_apply_once(cluster):
    ensure_workers(cluster)
    tid = cluster.thread()
    first = cluster.start_run(tid, {"c": {"interrupt": True}}, **PLAIN)
    assert cluster.wait_status(tid, first["run_id"])["status"] == "success"  # stopped at the interrupt
    assert httpx.get(f"{cluster.url}/threads/{tid}").json()["status"] == "interrupted"
    assert cluster.effects(tid) == {"a": 1, "b": 1}
    codes, runs = [], []

    def resume(value):
        with cluster.client() as c:
            r = c.post(
                f"/threads/{tid}/runs", json={"assistant_id": "agent", "command": {"resume": value}, **PLAIN}
            )
        codes.append(r.status_code)
        if r.status_code == 200:
            runs.append(r.json()["run_id"])

    ts = [threading.Thread(target=resume, args=(v,)) for v in ("yes", "also yes")]
    [t.start() for t in ts]
    [t.join() for t in ts]
    outcomes = [cluster.wait_status(tid, rid)["status"] for rid in runs]
    assert outcomes.count("success") == 1, (codes, outcomes)
    # The duplicate is refused (409) or, if it arrived after the first finished, fails as a stale resume.
    assert all(code in (200, 409) for code in codes)
    assert cluster.effects(tid)["c"] == 1, "the step after the interrupt ran once"
    # A late duplicate after completion changes nothing.
    late = httpx.post(
        f"{cluster.url}/threads/{tid}/runs", json={"assistant_id": "agent", "command": {"resume": "again"}}
    )
    assert cluster.wait_status(tid, late.json()["run_id"])["status"] == "error"
    assert cluster.effects(tid) == {"a": 1, "b": 1, "c": 1, "d": 1}
    cluster.assert_invariants([tid])


def test_zombie_worker_is_fenced(cluster, tmp_path):
    tid, run, marker, pid = start_slow_b(cluster, tmp_path, 2.0)
    zombie = worker_with_pid(cluster, pid)
    zombie.signal(signal.SIGSTOP)
    try:
        wait_file_lines(marker, 2, timeout=20)  # another worker took over after the lease expired
        done = cluster.wait_status(tid, run["run_id"])
        assert done["status"] == "success" and done["attempt"] == 2
    finally:
        zombie.signal(signal.SIGCONT)
    time.sleep(3)  # the zombie wakes up, finds its lease gone, and must not write anything
    after = cluster.run(tid, run["run_id"])
    assert after["status"] == "success" and after["attempt"] == 2
    epochs = cluster.sql(
        "SELECT DISTINCT (metadata->>'keel_epoch')::int AS e FROM checkpoints "
        "WHERE thread_id = %s AND checkpoint_ns = '' AND checkpoint_id > "
        "(SELECT min(checkpoint_id) FROM checkpoints WHERE thread_id = %s AND metadata->>'keel_epoch' = '2')",
        tid,
        tid,
    )
    assert [r["e"] for r in epochs] == [2], "no checkpoint from the stale epoch after the takeover"
    assert re.search(r"lease (of run \S+ )?lost", zombie.log()) and zombie.alive(), (
        "the zombie noticed and stopped by itself"
    )
    cluster.assert_invariants([tid])


def test_blocked_event_loop_keeps_its_lease(cluster, tmp_path):
    ensure_workers(cluster)
    tid = cluster.thread()
    run = cluster.start_run(tid, {"b": {"block": 7.5}}, **PLAIN)  # 2.5x the 3 s lease, loop frozen
    done = cluster.wait_status(tid, run["run_id"])
    assert done["status"] == "success" and done["attempt"] == 1, "no other worker stole the run"
    assert cluster.effects(tid) == {"a": 1, "b": 1, "c": 1, "d": 1}
    cluster.assert_invariants([tid])


def test_sigterm_drains_and_hands_the_run_over_at_once(cluster, tmp_path):
    ensure_workers(cluster)
    tid = cluster.thread()
    marker_b, marker_c = tmp_path / "b", tmp_path / "c"
    run = cluster.start_run(
        tid, {"b": {"sleep": 1.0, "touch": str(marker_b)}, "c": {"touch": str(marker_c)}}, **PLAIN
    )
    pid = wait_file_lines(marker_b, 1)[0]
    worker = worker_with_pid(cluster, pid)
    sent = time.time()
    worker.signal(signal.SIGTERM)
    worker.popen.wait(timeout=20)
    assert worker.popen.returncode == 0
    c_pid = wait_file_lines(marker_c, 1)[0]
    handover = time.time() - sent
    done = cluster.wait_status(tid, run["run_id"])
    assert done["status"] == "success"
    assert c_pid != pid, "the next step ran on another worker"
    assert cluster.effects(tid) == {"a": 1, "b": 1, "c": 1, "d": 1}, "no step ran twice"
    # b had ~1 s left; the hand-over itself must not wait for the 3 s lease to expire.
    assert handover < 1.0 + 2.5, f"picked up {handover:.1f}s after SIGTERM: it should not wait for the lease"
    assert "drained" in worker.log()
    cluster.assert_invariants([tid])


def test_client_disconnect_then_reconnect_with_last_event_id(cluster):
    ensure_workers(cluster)
    tid = cluster.thread()
    body = {
        "assistant_id": "agent",
        "input": {"plan": {"b": {"sleep": 0.6}, "c": {"sleep": 0.6}}, "inputs": ["x"]},
        "stream_mode": ["values", "updates"],
        "stream_resumable": True,
    }
    seen: list[tuple[int, str]] = []
    with (
        httpx.Client(base_url=cluster.url, timeout=30) as c,
        c.stream("POST", f"/threads/{tid}/runs/stream", json=body) as r,
    ):
        location = r.headers["location"]
        read_sse_ids(r, seen, stop_after=3)  # the client goes away mid-run
    last = seen[-1][0]
    time.sleep(0.3)
    with (
        httpx.Client(base_url=cluster.url, timeout=30) as c,
        c.stream("GET", location, headers={"Last-Event-ID": str(last)}) as r,
    ):
        read_sse_ids(r, seen)
    ids = [i for i, _ in seen]
    assert ids == list(range(1, len(ids) + 1)), f"missing or repeated events: {ids}"
    assert seen[0][1] == "metadata" and "end" not in {name for _, name in seen}
    run_id = location.rstrip("/").split("/")[-2]
    assert cluster.run(tid, run_id)["status"] == "success"
    total = cluster.sql("SELECT count(*) AS n FROM keel_run_events WHERE run_id = %s", run_id)[0]["n"]
    assert len(ids) == total - 1  # every logged event but the log's end marker, which is never sent
    # on_disconnect=cancel: the run stops when the client goes away, and stays resumable.
    tid2 = cluster.thread()
    with (
        httpx.Client(base_url=cluster.url, timeout=30) as c,
        c.stream(
            "POST",
            f"/threads/{tid2}/runs/stream",
            json={**body, "input": {"plan": {"b": {"sleep": 3}}}, "on_disconnect": "cancel"},
        ) as r,
    ):
        run_id2 = r.headers["content-location"].split("/")[-1]
        for line in r.iter_lines():
            if line.startswith("event: updates"):
                break
    assert cluster.wait_status(tid2, run_id2, timeout=20)["status"] == "interrupted"
    cluster.assert_invariants([tid, tid2])


def test_multitask_interrupt_and_rollback(cluster, tmp_path):
    ensure_workers(cluster)
    for strategy in ("interrupt", "rollback"):
        tid = cluster.thread()
        marker = tmp_path / f"{strategy}-b"
        first = cluster.start_run(tid, {"b": {"sleep": 5, "touch": str(marker)}}, tag="old", **PLAIN)
        wait_file_lines(marker, 1)
        with cluster.client() as c:
            second = c.post(
                f"/threads/{tid}/runs",
                json={
                    "assistant_id": "agent",
                    "input": {"inputs": ["new"]},
                    "multitask_strategy": strategy,
                    **PLAIN,
                },
            ).json()
        assert cluster.wait_status(tid, second["run_id"])["status"] == "success"
        state = httpx.get(f"{cluster.url}/threads/{tid}/state").json()["values"]
        with cluster.client() as c:
            old = c.get(f"/threads/{tid}/runs/{first['run_id']}")
        if strategy == "interrupt":
            assert old.json()["status"] == "interrupted"
            assert state["inputs"] == ["old", "new"]
        else:
            assert old.status_code == 404, "a rolled-back run is deleted"
            assert state["inputs"] == ["new"], "the rolled-back run's input and steps are gone"
        cluster.assert_invariants([tid])


def test_poison_run_is_dead_lettered(cluster):
    tid = cluster.thread()
    run = cluster.start_run(tid, {"b": {"kill": "always"}}, **PLAIN)
    deadline = time.time() + 90
    while time.time() < deadline:
        status = cluster.run(tid, run["run_id"])
        if status["status"] == "error":
            break
        ensure_workers(cluster)  # a supervisor restarting dead workers
        time.sleep(0.3)
    assert status["status"] == "error", status
    assert status["error"]["error"] == "RunAttemptsExhausted" and "3 times" in status["error"]["message"]
    assert status["attempt"] == 3
    with cluster.client() as c:
        thread = c.get(f"/threads/{tid}").json()
        joined = c.get(f"/threads/{tid}/runs/{run['run_id']}/join").json()
    assert thread["status"] == "error"
    assert joined["__error__"]["error"] == "RunAttemptsExhausted"
    assert cluster.effects(tid)["b"] == 3
    ensure_workers(cluster)
    cluster.assert_invariants([tid])


def test_wait_and_stream_send_keepalives(cluster):
    """A run quieter than 5 s gets `: heartbeat` comments on SSE and newlines before the wait body."""
    ensure_workers(cluster)
    plan = {"b": {"sleep": 5.6}}
    out: dict[str, bytes] = {}

    def wait_call():
        tid = cluster.thread()
        with httpx.Client(base_url=cluster.url, timeout=60) as c:
            r = c.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": {"plan": plan}})
            out["wait"] = r.content
            out["wait_location"] = r.headers["location"].encode()

    t = threading.Thread(target=wait_call)
    t.start()
    tid = cluster.thread()
    with httpx.Client(base_url=cluster.url, timeout=60) as c:
        r = c.post(f"/threads/{tid}/runs/stream", json={"assistant_id": "agent", "input": {"plan": plan}})
    t.join()
    assert b": heartbeat\r\n\r\n" in r.content and r.content.rstrip().endswith(b'"outcomes":[]}')
    assert out["wait"].startswith(b"\n") and b'"log":["a","b","c","d"]' in out["wait"].replace(b" ", b"")
    assert out["wait_location"].endswith(b"/join")


def test_cancel_endpoint_interrupt_and_rollback(cluster, tmp_path):
    ensure_workers(cluster)
    for action in ("interrupt", "rollback"):
        tid = cluster.thread()
        cluster.start_run(tid, {}, tag="kept", **PLAIN)
        marker = tmp_path / f"cancel-{action}"
        run = cluster.start_run(tid, {"b": {"sleep": 5, "touch": str(marker)}}, tag="cancelled", **PLAIN)
        wait_file_lines(marker, 1)
        with cluster.client() as c:
            r = c.post(f"/threads/{tid}/runs/{run['run_id']}/cancel", params={"wait": 1, "action": action})
            assert r.status_code == 200 and r.json() == {}
            got = c.get(f"/threads/{tid}/runs/{run['run_id']}")
            state = c.get(f"/threads/{tid}/state").json()
            thread = c.get(f"/threads/{tid}").json()
        if action == "interrupt":
            assert got.json()["status"] == "interrupted"
            assert state["values"]["inputs"] == ["kept", "cancelled"] and state["next"] == ["b"]
            # The interrupted run is resumable from its checkpoint.
            with cluster.client() as c:
                again = c.post(
                    f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": None}
                ).json()
            assert again["log"] == ["a", "b", "c", "d", "a", "b", "c", "d"]
        else:
            assert got.status_code == 404
            assert state["values"]["inputs"] == ["kept"] and state["next"] == []
            assert thread["status"] == "idle"
        with cluster.client() as c:
            assert c.post(f"/threads/{tid}/runs/{run['run_id']}/cancel").status_code in (404, 409)
        cluster.assert_invariants([tid])


def test_durability_is_chosen_per_run(cluster):
    ensure_workers(cluster)
    counts = {}
    for mode in ("sync", "exit"):
        tid = cluster.thread()
        with cluster.client() as c:
            r = c.post(
                f"/threads/{tid}/runs/wait",
                json={"assistant_id": "agent", "input": {"plan": {}}, "durability": mode},
            )
        assert r.json()["log"] == ["a", "b", "c", "d"]
        counts[mode] = cluster.sql("SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s", tid)[0]["n"]
    assert counts["sync"] == 6 and counts["exit"] == 1, counts
