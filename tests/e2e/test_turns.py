"""A new human message always starts a new turn, however the previous run ended (issue 15).

A real deployment: one `keel serve` API process and real `keel worker` processes serving Keel's own agent
graph with the offline models, on a small corpus where the two questions hit different documents.

The first question is answered only in part (the corpus covers scaling out, not the reaper), so with
`critic_threshold: 1.0` the offline critic always sends the turn back to `retrieve` ("revise"). (A question
the corpus does not cover at all would end `not_found` after one widened retrieval, issue 12.) A run is
stopped at every node boundary: by interrupt_before / interrupt_after, by cancel, by multitask
`interrupt` and `rollback` with the new message, and by SIGKILLing its worker and then cancelling it.
Runs stopped *between critique and the next retrieve* are held there deterministically: the test takes an
ACCESS EXCLUSIVE lock on the store's tables, so the revision's `retrieve` blocks on its first query (a wait
the test sees in pg_locks) after `critique` wrote its checkpoint, then the test stops the run.

The second question then runs with `max_steps: 3`: a fresh turn needs exactly retrieve, summarize and
critique, so any step count carried over from the old turn ends it `budget_exhausted:max_steps`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.cluster import Cluster, ensure_workers
from tests.support.live import ingest, write_corpus

Q1 = "How do I scale out workers and what does the reaper do?"
Q1_SOURCE = "scaling.md"
Q2 = "How do I send traces to LangSmith?"
Q2_SOURCE = "tracing.md"
REVISE = {"critic_threshold": 1.0, "retrieve_k": 1}  # Q1: the offline critic sends every draft back
FRESH = {"retrieve_k": 1, "max_steps": 3}  # Q2: a fresh turn fits exactly
TOOL_Q = '/tool calculator {"expression": "6*7"}'
TICKET_Q = '/tool create_ticket {"title": "Printer is on fire"}'
TERMINAL = {"success", "error", "interrupted", "timeout"}
LOCK_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def cluster(database_url, tmp_path_factory) -> Iterator[Cluster]:
    """API + one worker process serving the real agent graph on an ingested corpus."""
    tmp = tmp_path_factory.mktemp("turns")
    ingest(database_url, write_corpus(tmp / "corpus"), keel_home=tmp / "home")
    c = Cluster(database_url, env_extra={"KEEL_GRAPH": "agent.graph:build"})
    try:
        c.start_api()
        c.start_worker()
        yield c
    finally:
        c.stop()


# ------------------------------------------------------------------------------------------- helpers


def human(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text, **extra}]}


def new_thread(c: Cluster) -> str:
    with c.client() as h:
        r = h.post("/threads", json={})
    assert r.status_code == 200, r.text
    return r.json()["thread_id"]


def run_wait(c: Cluster, tid: str, graph_input: Any, **body: Any) -> dict[str, Any]:
    with c.client() as h:
        r = h.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": graph_input, **body})
    assert r.status_code == 200, r.text
    assert "__error__" not in (r.json() or {}), r.text
    return r.json()


def start_run(c: Cluster, tid: str, graph_input: Any, **body: Any) -> dict[str, Any]:
    with c.client() as h:
        r = h.post(f"/threads/{tid}/runs", json={"assistant_id": "agent", "input": graph_input, **body})
    assert r.status_code == 200, r.text
    return r.json()


def get_run(c: Cluster, tid: str, rid: str) -> httpx.Response:
    with c.client() as h:
        return h.get(f"/threads/{tid}/runs/{rid}")


def wait_run(c: Cluster, tid: str, rid: str, statuses=TERMINAL, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = get_run(c, tid, rid)
        assert r.status_code == 200, r.text
        if r.json()["status"] in statuses:
            return r.json()
        assert time.monotonic() < deadline, f"run {rid} still {r.json()['status']}\n{c.logs()}"
        time.sleep(0.05)


def wait_gone(c: Cluster, tid: str, rid: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while get_run(c, tid, rid).status_code != 404:
        assert time.monotonic() < deadline, f"run {rid} was not rolled back\n{c.logs()}"
        time.sleep(0.05)


def state(c: Cluster, tid: str) -> dict[str, Any]:
    with c.client() as h:
        r = h.get(f"/threads/{tid}/state")
    assert r.status_code == 200, r.text
    return r.json()


def history(c: Cluster, tid: str) -> list[dict[str, Any]]:
    with c.client() as h:
        r = h.post(f"/threads/{tid}/history", json={"limit": 100})
    assert r.status_code == 200, r.text
    return r.json()


def texts(values: dict[str, Any], kind: str) -> list[str]:
    return [m["content"] for m in values.get("messages", []) if m.get("type") == kind]


def names(passages: list[dict[str, Any]]) -> list[str]:
    """File names of passages or sources (the corpus is ingested from a temporary directory)."""
    return [Path(p["source"]).name for p in passages]


def assert_answers(c: Cluster, tid: str, question: str = Q2, source: str = Q2_SOURCE) -> dict[str, Any]:
    """The thread's latest turn answered `question` from `source`, with fresh budgets."""
    st = state(c, tid)
    v = st["values"]
    assert st["next"] == [], st["next"]
    assert v["question"] == question and v["query"] == question, (v.get("question"), v.get("query"))
    assert names(v["sources"]) == [source], v["sources"]
    assert names(v["passages"]) == [source]
    assert v["status"] == "done", (v["status"], v["answer"])
    assert v["steps"] == 3 and v["revisions"] == 0 and v["tool_calls"] == 0, (v["steps"], v["revisions"])
    assert v["messages"][-1]["type"] == "ai" and v["messages"][-1]["content"] == v["answer"]
    assert source in v["answer"].split("Sources:")[-1], v["answer"]
    assert texts(v, "human")[-1] == question
    return v


def stopped_in_revision(v: dict[str, Any]) -> None:
    """The state a run leaves when stopped between critique and the next retrieve."""
    assert v["phase"] == "revise" and v["question"] == Q1 and v["revisions"] >= 1, (
        v["phase"],
        v["revisions"],
    )
    assert v["query"] != Q1 and v["query"].startswith("reaper"), v["query"]  # the critic's revised query


# ------------------------------------------------------------------------------------ the store lock


@contextmanager
def store_locked(database_url: str) -> Iterator[psycopg.Connection]:
    """Every read of the store (so every `retrieve`) waits until the block ends."""
    with psycopg.connect(database_url) as conn:
        conn.execute("LOCK TABLE store, store_vectors IN ACCESS EXCLUSIVE MODE")
        try:
            yield conn
        finally:
            conn.rollback()


def store_waiters(database_url: str) -> set[int]:
    """Backends waiting for the store lock."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT pid FROM pg_locks WHERE NOT granted AND relation IN "
            "('store'::regclass, 'store_vectors'::regclass)"
        ).fetchall()
    return {r[0] for r in rows}


def wait_new_waiter(database_url: str, known: set[int]) -> set[int]:
    """Wait until a backend not in `known` waits for the store lock (a retrieve is blocked in its query)."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        now = store_waiters(database_url)
        if now - known:
            return now
        assert time.monotonic() < deadline, "no retrieve started waiting for the store"
        time.sleep(0.02)


def stop_after_first_retrieve(c: Cluster, tid: str) -> None:
    """Q1 stops after its first retrieve; resumed (under the store lock) it goes summarize -> critique
    ("revise") and blocks in the revision's retrieve."""
    run_wait(c, tid, human(Q1), context=REVISE, interrupt_after=["retrieve"])
    assert state(c, tid)["next"] == ["summarize"]


def resume_into_blocked_retrieve(c: Cluster, tid: str, database_url: str) -> tuple[dict[str, Any], set[int]]:
    """Resume the thread (with the store locked): the run, once blocked in a retrieve, and the waiting backends."""
    known = store_waiters(database_url)
    run = start_run(c, tid, None, context=REVISE)
    return run, wait_new_waiter(database_url, known)


def cancel(c: Cluster, tid: str, rid: str) -> None:
    with c.client() as h:
        r = h.post(f"/threads/{tid}/runs/{rid}/cancel")
    assert r.status_code == 200, r.text


# --------------------------------------------------------------- interrupt_before / interrupt_after


def _first(node: str, when: str):
    def stop(c: Cluster, tid: str) -> None:
        question = TOOL_Q if node == "execute_tools" else Q1
        run_wait(c, tid, human(question), context=REVISE, **{f"interrupt_{when}": [node]})

    return stop


def _in_revision(node: str, when: str):
    def stop(c: Cluster, tid: str) -> None:
        run_wait(c, tid, human(Q1), context=REVISE, interrupt_after=["critique"])
        run_wait(c, tid, None, context=REVISE, **{f"interrupt_{when}": [node]})

    return stop


BOUNDARIES = {
    # name: (how to stop, next node at the stop, phase at the stop)
    "before retrieve": (_first("retrieve", "before"), "retrieve", None),
    "after retrieve": (_first("retrieve", "after"), "summarize", "answer"),
    "before summarize": (_first("summarize", "before"), "summarize", "answer"),
    "after summarize": (_first("summarize", "after"), "critique", "answer"),
    "before critique": (_first("critique", "before"), "critique", "answer"),
    "after critique": (_first("critique", "after"), "retrieve", "revise"),
    "before execute_tools": (_first("execute_tools", "before"), "execute_tools", "answer"),
    "after execute_tools": (_first("execute_tools", "after"), "summarize", "answer"),
    "revision: before retrieve": (_in_revision("retrieve", "before"), "retrieve", "revise"),
    "revision: after retrieve": (_in_revision("retrieve", "after"), "summarize", "answer"),
    "revision: after summarize": (_in_revision("summarize", "after"), "critique", "answer"),
    "revision: after critique": (_in_revision("critique", "after"), "retrieve", "revise"),
}


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_new_message_after_an_interrupt_at_every_boundary_is_a_new_turn(cluster, boundary):
    stop, next_node, phase = BOUNDARIES[boundary]
    tid = new_thread(cluster)
    stop(cluster, tid)
    st = state(cluster, tid)
    assert st["next"] == [next_node] and st["values"].get("phase") == phase, (
        st["next"],
        st["values"].get("phase"),
    )
    if phase == "revise":
        stopped_in_revision(st["values"])
    run_wait(cluster, tid, human(Q2), context=FRESH)
    assert_answers(cluster, tid)


def test_new_message_while_an_approval_is_pending_is_a_new_turn(cluster):
    tid = new_thread(cluster)
    run_wait(cluster, tid, human(TICKET_Q), context=REVISE)
    st = state(cluster, tid)
    assert st["next"] == ["execute_tools"] and st["interrupts"], st
    run_wait(cluster, tid, human(Q2), context=FRESH)
    v = assert_answers(cluster, tid)
    assert not [m for m in v["messages"] if m["type"] == "tool"], "the unapproved ticket was never created"


# ------------------------------------------------- cancel, multitask and SIGKILL between critique and retrieve


def test_cancel_between_critique_and_retrieve_then_new_message(cluster, database_url):
    tid = new_thread(cluster)
    stop_after_first_retrieve(cluster, tid)
    with store_locked(database_url):
        held, _ = resume_into_blocked_retrieve(cluster, tid, database_url)
        cancel(cluster, tid, held["run_id"])
        assert wait_run(cluster, tid, held["run_id"])["status"] == "interrupted"
    st = state(cluster, tid)
    assert st["next"] == ["retrieve"]
    stopped_in_revision(st["values"])
    run_wait(cluster, tid, human(Q2), context=FRESH)
    assert_answers(cluster, tid)


def _parent_of_q2_input(c: Cluster, tid: str) -> dict[str, Any]:
    """The checkpoint the new message was added to."""
    hist = history(c, tid)
    by_id = {h["checkpoint"]["checkpoint_id"]: h for h in hist}
    first = [h for h in hist if Q2 in texts(h["values"], "human")][-1]  # history is newest first
    return by_id[first["parent_checkpoint"]["checkpoint_id"]]


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
def test_multitask_new_message_between_critique_and_retrieve(cluster, database_url, strategy):
    tid = new_thread(cluster)
    if strategy == "rollback":
        # Rolling back a run returns the thread to where that run began; begin it in a revision.
        run_wait(cluster, tid, human(Q1), context=REVISE, interrupt_after=["critique"])
    else:
        stop_after_first_retrieve(cluster, tid)
    with store_locked(database_url):
        held, _ = resume_into_blocked_retrieve(cluster, tid, database_url)
        new = start_run(cluster, tid, human(Q2), context=FRESH, multitask_strategy=strategy)
        if strategy == "rollback":
            wait_gone(cluster, tid, held["run_id"])
        else:
            assert wait_run(cluster, tid, held["run_id"])["status"] == "interrupted"
    assert wait_run(cluster, tid, new["run_id"])["status"] == "success"
    stopped_in_revision(_parent_of_q2_input(cluster, tid)["values"])
    assert_answers(cluster, tid)


def test_worker_sigkill_between_critique_and_retrieve_then_cancel_then_new_message(cluster, database_url):
    ensure_workers(
        cluster, 2
    )  # the survivor takes the run over (a worker cannot start while the store is locked)
    tid = new_thread(cluster)
    stop_after_first_retrieve(cluster, tid)
    with store_locked(database_url):
        held, dead = resume_into_blocked_retrieve(cluster, tid, database_url)
        (owner,) = cluster.sql("SELECT lease_owner FROM keel_runs WHERE run_id = %s", held["run_id"])
        (victim,) = [w for w in cluster.workers() if f":{w.pid}:" in owner["lease_owner"]]
        victim.signal(signal.SIGKILL)
        victim.popen.wait(10)
        # The lease expires; the other worker resumes the run (the same turn) and blocks in the same retrieve.
        wait_new_waiter(database_url, known=dead)
        assert get_run(cluster, tid, held["run_id"]).json()["attempt"] == 2
        cancel(cluster, tid, held["run_id"])
        assert wait_run(cluster, tid, held["run_id"])["status"] == "interrupted"
    st = state(cluster, tid)
    assert st["next"] == ["retrieve"]
    stopped_in_revision(st["values"])
    run_wait(cluster, tid, human(Q2), context=FRESH)
    assert_answers(cluster, tid)


# ------------------------------------------------------------------------------------ resume and fork


def test_resume_after_critique_continues_the_same_turn(cluster):
    tid = new_thread(cluster)
    run_wait(cluster, tid, human(Q1), context=REVISE, interrupt_after=["critique"])
    before = state(cluster, tid)["values"]
    stopped_in_revision(before)
    assert before["steps"] == 3 and before["revisions"] == 1
    run_wait(cluster, tid, None, context=REVISE)
    v = state(cluster, tid)["values"]
    # Two more revisions on the same question: steps go on counting (4..9), they do not restart.
    assert v["question"] == Q1 and v["revisions"] == 2 and v["steps"] == 9, (
        v["question"],
        v["revisions"],
        v["steps"],
    )
    assert v["status"] == "budget_exhausted:max_revisions"
    assert texts(v, "human") == [Q1]


def test_approval_resume_continues_the_same_turn(cluster):
    tid = new_thread(cluster)
    run_wait(cluster, tid, human(TICKET_Q), context=REVISE)
    before = state(cluster, tid)
    assert before["next"] == ["execute_tools"] and before["values"]["steps"] == 2
    run_wait(cluster, tid, None, command={"resume": {"decisions": [{"type": "approve"}]}}, context=REVISE)
    v = state(cluster, tid)["values"]
    assert v["question"] == TICKET_Q and v["tool_calls"] == 1 and v["steps"] == 5, (
        v["tool_calls"],
        v["steps"],
    )
    tool = [m for m in v["messages"] if m["type"] == "tool"]
    assert len(tool) == 1 and tool[0]["name"] == "create_ticket" and tool[0]["status"] == "success"


def _revise_checkpoint(c: Cluster, tid: str) -> dict[str, Any]:
    run_wait(c, tid, human(Q1), context=REVISE)
    assert state(c, tid)["values"]["status"] == "budget_exhausted:max_revisions"
    revise = [
        h for h in history(c, tid) if h["next"] == ["retrieve"] and h["values"].get("phase") == "revise"
    ]
    assert len(revise) == 2, [h["next"] for h in history(c, tid)]
    stopped_in_revision(revise[-1]["values"])
    return revise[-1]


def test_fork_from_a_revision_checkpoint_with_a_new_message_answers_it(cluster):
    tid = new_thread(cluster)
    fork = _revise_checkpoint(cluster, tid)
    run_wait(cluster, tid, human(Q2), context=FRESH, checkpoint_id=fork["checkpoint"]["checkpoint_id"])
    v = assert_answers(cluster, tid)
    assert texts(v, "human") == [Q1, Q2]


def test_fork_that_edits_the_question_in_place_answers_the_edit(cluster):
    """An edited message keeps its id (add_messages replaces it); its new text is still a new question."""
    tid = new_thread(cluster)
    fork = _revise_checkpoint(cluster, tid)
    (q1,) = [m for m in fork["values"]["messages"] if m["type"] == "human"]
    run_wait(
        cluster, tid, human(Q2, id=q1["id"]), context=FRESH, checkpoint_id=fork["checkpoint"]["checkpoint_id"]
    )
    v = assert_answers(cluster, tid)
    assert texts(v, "human") == [Q2] and v["turn_of"] == q1["id"]


def test_each_question_hits_its_own_document(cluster):
    """The corpus the tests rely on: each question alone retrieves its own document."""
    for question, source in ((Q1, Q1_SOURCE), (Q2, Q2_SOURCE)):
        tid = new_thread(cluster)
        run_wait(cluster, tid, human(question), context={"retrieve_k": 1})
        assert names(state(cluster, tid)["values"]["sources"]) == [source]
