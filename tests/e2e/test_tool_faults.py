"""Tool fault tests with real SIGKILLs (durability.md scenarios 2, 3, 13, 14, 16).

Effects are rows in fault_effects written by the test tool `fx` through Keel's governed tool path
(ledger, audit, approvals). The assertion that matters: effects == distinct idempotency keys.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.cluster import PLAIN, Cluster, ensure_workers, running_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(database_url):
    with running_cluster(database_url) as c:
        yield c


def fx_rows(c: Cluster, thread_id: str, kind: str = "effect") -> list[str]:
    return [
        r["key"]
        for r in c.sql(
            "SELECT key FROM fault_effects WHERE key LIKE %s AND kind = %s ORDER BY id",
            f"{thread_id}:%",
            kind,
        )
    ]


def ledger(c: Cluster, thread_id: str) -> dict[str, dict]:
    rows = c.sql(
        "SELECT key, status, attempts, compensation FROM keel_tool_ledger WHERE thread_id = %s", thread_id
    )
    return {r["key"].rsplit(":", 1)[-1]: r for r in rows}


def test_kill_after_effect_before_result_is_recorded(cluster, tmp_path):
    """Scenario 2: the effect happened, the worker died before recording it; it is reconciled, not redone."""
    ensure_workers(cluster)
    tid = cluster.thread()
    plan = {"b": {"effects": [{"id": "e1", "kill_after": str(tmp_path / "k")}, {"id": "e2"}]}}
    run = cluster.start_run(tid, plan, **PLAIN)
    done = cluster.wait_status(tid, run["run_id"])
    assert done["status"] == "success" and done["attempt"] == 2
    keys = fx_rows(cluster, tid)
    assert len(keys) == len(set(keys)) == 2, f"effects must equal distinct keys: {keys}"
    led = ledger(cluster, tid)
    assert led["e1"]["status"] == led["e2"]["status"] == "succeeded"
    state = httpx.get(f"{cluster.url}/threads/{tid}/state").json()["values"]
    assert sorted(state["outcomes"]) == ["e1:success", "e2:success"]
    audit = cluster.sql("SELECT outcome FROM keel_tool_audit WHERE thread_id = %s AND tool = 'fx'", tid)
    assert any("reconciled" in (a["outcome"] or "") for a in audit)
    cluster.assert_invariants([tid])


def test_kill_inside_a_non_idempotent_call_asks_a_human(cluster, tmp_path):
    """Scenario 3: unknown outcome and no way to check: never retried blindly; a human decides."""
    ensure_workers(cluster)
    tid = cluster.thread()
    plan = {"b": {"effects": [{"id": "u1", "reconcile": False, "kill_after": str(tmp_path / "k")}]}}
    run = cluster.start_run(tid, plan, **PLAIN)
    done = cluster.wait_status(tid, run["run_id"])
    assert done["status"] == "success", done  # stopped at the approval interrupt; the thread waits
    assert httpx.get(f"{cluster.url}/threads/{tid}").json()["status"] == "interrupted"
    assert len(fx_rows(cluster, tid)) == 1 and ledger(cluster, tid)["u1"]["status"] == "started"
    state = httpx.get(f"{cluster.url}/threads/{tid}/state").json()
    request = state["interrupts"][0]["value"]
    assert request["action_requests"][0]["name"] == "fx_noreconcile"
    assert request["review_configs"][0]["allowed_decisions"] == ["approve", "reject"]
    with cluster.client() as c:
        r = c.post(
            f"/threads/{tid}/runs/wait",
            json={"assistant_id": "agent", "command": {"resume": {"decisions": [{"type": "reject"}]}}},
        )
    assert r.status_code == 200
    assert len(fx_rows(cluster, tid)) == 1, "rejected: not executed again"
    assert ledger(cluster, tid)["u1"]["status"] == "failed"
    cluster.assert_invariants([tid])


def test_transient_errors_retry_and_permanent_errors_fail_fast(cluster, tmp_path):
    """Scenario 13: transient failures retry by the tool's policy (same key); permanent ones do not."""
    ensure_workers(cluster)
    tid = cluster.thread()
    plan = {
        "b": {
            "effects": [
                {"id": "t1", "fail": "transient:2", "counter": str(tmp_path / "t1")},
                {"id": "p1", "fail": "permanent", "counter": str(tmp_path / "p1")},
            ]
        }
    }
    run = cluster.start_run(tid, plan, **PLAIN)
    assert cluster.wait_status(tid, run["run_id"])["status"] == "success"
    assert (tmp_path / "t1").read_text() == "xxx", "two injected failures, then success on the third try"
    assert (tmp_path / "p1").read_text() == "x", "a permanent error is not retried"
    state = httpx.get(f"{cluster.url}/threads/{tid}/state").json()["values"]
    assert sorted(state["outcomes"]) == ["p1:error", "t1:success"]
    led = ledger(cluster, tid)
    assert led["t1"]["status"] == "succeeded" and led["p1"]["status"] == "failed"
    assert [k.rsplit(":", 1)[-1] for k in fx_rows(cluster, tid)] == ["t1"]
    cluster.assert_invariants([tid])


def test_saga_compensates_in_reverse_and_survives_a_kill_mid_compensation(cluster, tmp_path):
    """Scenario 14: step k fails for good after effects 1..k-1; undo runs newest first, exactly once each."""
    ensure_workers(cluster)
    tid = cluster.thread()
    plan = {
        "b": {"effects": [{"id": "s1"}, {"id": "s2", "comp_kill": str(tmp_path / "ck")}]},
        "c": {"effects": [{"id": "s3"}], "fail": True},
    }
    run = cluster.start_run(tid, plan, **PLAIN)
    deadline = time.time() + 60
    while time.time() < deadline and cluster.run(tid, run["run_id"])["status"] not in ("error", "success"):
        ensure_workers(cluster)
        time.sleep(0.2)
    done = cluster.run(tid, run["run_id"])
    assert done["status"] == "error" and "injected permanent failure" in done["error"]["message"], done
    comps = fx_rows(cluster, tid, "compensation")
    assert [k.rsplit(":", 1)[-1] for k in comps] == ["s3", "s2", "s1"], comps
    assert all(r["compensation"] == "done" for r in ledger(cluster, tid).values())
    assert (tmp_path / "ck").exists(), "the worker really died inside s2's compensation"
    cluster.assert_invariants([tid])


def test_time_travel_fork_refires_effects_under_new_keys(cluster):
    """Scenario 16, and Keel's explicit policy: a fork from an older checkpoint is a new timeline. Its steps
    run as new LangGraph tasks (new task ids in checkpoint_ns), so their tool calls get new idempotency
    keys and fire again (approval-gated tools ask again); the original effect is never replayed into, or
    overwritten by, the fork. A crash-resume, by contrast, re-creates the same tasks and keys (scenario 2)."""
    ensure_workers(cluster)
    tid = cluster.thread()
    run = cluster.start_run(tid, {"b": {"effects": [{"id": "f1"}]}}, **PLAIN)
    assert cluster.wait_status(tid, run["run_id"])["status"] == "success"
    history = httpx.post(f"{cluster.url}/threads/{tid}/history", json={"limit": 20}).json()
    before_b = next(h for h in history if h["next"] == ["b"])
    with cluster.client() as c:
        r = c.post(
            f"/threads/{tid}/runs/wait",
            json={
                "assistant_id": "agent",
                "input": None,
                "checkpoint_id": before_b["checkpoint"]["checkpoint_id"],
            },
        )
    assert r.status_code == 200 and r.json()["log"][-3:] == ["b", "c", "d"]
    keys = fx_rows(cluster, tid)
    assert len(keys) == len(set(keys)) == 2, f"one effect per timeline, effects == distinct keys: {keys}"
    assert {k.rsplit(":", 1)[-1] for k in keys} == {"f1"}
    rows = cluster.sql("SELECT status FROM keel_tool_ledger WHERE thread_id = %s", tid)
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"]
