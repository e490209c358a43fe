"""A run created by a process that hosts a worker with a free slot is claimed in the transaction that creates
it (no NOTIFY, wake-up and claim transaction), only when the claim would take that very run: the thread's
order, the multitask strategies and the queue's order stay as they were.

In process (ASGI client, in-process worker of two slots) on the real embedded Postgres, with the 4-node fault
graph, whose `wait_for` gates hold a run `running` until the test opens them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from server.auth import User
from server.schemas import RunCreate
from server.settings import Settings
from tests.integration.test_hardening_runs import Sql, body, new_thread, wait_released, wait_terminal
from tests.support.cluster import assert_event_log
from tests.support.inprocess import api_client, running_service

SLOTS = 2


@pytest.fixture(scope="module")
async def svc(db):
    settings = Settings(keel_graph="tests.support.fault_graph:build", keel_lease_seconds=2.0)
    async with running_service(settings, db, workers=SLOTS) as service:
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


@pytest.fixture(scope="module")
def pg(database_url):
    return Sql(database_url)


GATES = ("gate", "g1", "g2")


@pytest.fixture(autouse=True)
async def slots_given_back(svc, tmp_path):
    """Each test ends with every slot of the worker free again: no run held, no reservation leaked."""
    yield
    for name in GATES:  # (a failed test's gated runs end too)
        (tmp_path / name).touch()
    deadline = time.monotonic() + 15
    while svc.worker.handles:
        assert time.monotonic() < deadline, f"worker still holds {list(svc.worker.handles)}"
        await asyncio.sleep(0.01)
    assert svc.worker.free_slots() == SLOTS


def run_row(pg: Sql, rid: str) -> dict[str, Any]:
    return pg.sql(
        "SELECT status, lease_owner, lease_expires_at, attempt, lease_epoch, created_at, started_at, "
        "finished_at, checkpoint_before FROM keel_runs WHERE run_id = %s",
        rid,
    )[0]


def claimed_at_creation(row: dict[str, Any]) -> bool:
    """Claimed by the transaction that created it: one `now()` for both (a later claim is a later transaction)."""
    return row["started_at"] is not None and row["started_at"] == row["created_at"]


async def create(client, tid: str, payload: dict[str, Any]) -> str:
    r = await client.post(f"/threads/{tid}/runs", json=payload)
    assert r.status_code == 200, r.text
    return str(r.json()["run_id"])


def gated(gate: Path, tag: str = "x", **extra: Any) -> dict[str, Any]:
    return body({"a": {"wait_for": str(gate)}}, tag=tag, **extra)


async def test_a_run_created_here_is_claimed_by_this_worker_in_its_creating_transaction(
    client, svc, pg, tmp_path
):
    gate = tmp_path / "gate"
    tid = await new_thread(client)
    r = await client.post(f"/threads/{tid}/runs", json=gated(gate))
    # The API answers with the run as created, as the reference server does.
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text
    rid = r.json()["run_id"]
    row = run_row(pg, rid)
    # Leased to this process's worker by the creating transaction, as the queue's claim leases a run.
    assert row["status"] == "running" and row["lease_owner"] == svc.worker.owner, row
    assert claimed_at_creation(row), row
    assert (row["attempt"], row["lease_epoch"], row["checkpoint_before"]) == (1, 1, ""), row
    assert row["lease_expires_at"] > row["created_at"]
    assert rid in svc.worker.handles
    gate.touch()
    assert (await wait_terminal(client, tid, rid))["status"] == "success"
    assert_event_log(pg, rid, "success")

    # The next run of the thread records where the thread stood before it (what a rollback returns to).
    head = pg.sql(
        "SELECT max(checkpoint_id) AS id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''", tid
    )[0]["id"]
    await wait_released(svc, rid)
    r = await client.post(f"/threads/{tid}/runs/wait", json=body(tag="y"))
    assert r.status_code == 200 and r.json()["inputs"] == ["x", "y"], r.text
    second = pg.sql("SELECT run_id::text FROM keel_runs WHERE thread_id = %s AND run_id <> %s", tid, rid)[0]
    row = run_row(pg, second["run_id"])
    assert claimed_at_creation(row) and row["checkpoint_before"] == head, row
    assert row["status"] == "success" and row["lease_owner"] is None


async def test_runs_enqueued_behind_a_running_one_wait_and_keep_their_order(client, svc, pg, tmp_path):
    gate = tmp_path / "gate"
    tid = await new_thread(client)
    first = await create(client, tid, gated(gate, "1"))
    later = [await create(client, tid, body(tag=t, multitask_strategy="enqueue")) for t in ("2", "3")]
    assert claimed_at_creation(run_row(pg, first))
    # A slot is free, yet the thread's later runs wait for the first one: queued, not claimed.
    assert svc.worker.free_slots() == SLOTS - 1
    for rid in later:
        row = run_row(pg, rid)
        assert row["status"] == "pending" and row["lease_owner"] is None and row["started_at"] is None, row
    gate.touch()
    rows = []
    for rid in (first, *later):
        assert (await wait_terminal(client, tid, rid))["status"] == "success"
        rows.append(run_row(pg, rid))
    for before, after in zip(rows, rows[1:], strict=False):
        assert before["finished_at"] <= after["started_at"], (before, after)
    state = (await client.get(f"/threads/{tid}/state")).json()
    assert state["values"]["inputs"] == ["1", "2", "3"]


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
async def test_reject_interrupt_and_rollback_meet_a_run_claimed_at_creation(
    client, svc, pg, tmp_path, strategy
):
    gate = tmp_path / "gate"
    tid = await new_thread(client)
    first = await create(client, tid, gated(gate, "1"))
    assert claimed_at_creation(run_row(pg, first))
    r = await client.post(f"/threads/{tid}/runs", json=body(tag="2", multitask_strategy="reject"))
    assert r.status_code == 409, r.text
    assert len(pg.sql("SELECT 1 FROM keel_runs WHERE thread_id = %s", tid)) == 1
    assert svc.worker.free_slots() == SLOTS - 1  # the refused run's reservation was given back
    third = await create(client, tid, body(tag="3", multitask_strategy=strategy))
    row = run_row(pg, third)
    assert not claimed_at_creation(row), "the cancelled run still held the thread"
    done = await wait_terminal(client, tid, first)
    assert done["status"] == ("interrupted" if strategy == "interrupt" else "deleted"), done
    assert (await wait_terminal(client, tid, third))["status"] == "success"
    state = (await client.get(f"/threads/{tid}/state")).json()
    assert state["values"]["inputs"][-1] == "3"
    if strategy == "rollback":
        assert state["values"]["inputs"] == ["3"]
    gate.touch()


async def test_without_a_free_slot_the_run_is_queued_and_claimed_when_one_frees(client, svc, pg, tmp_path):
    gates = [tmp_path / "g1", tmp_path / "g2"]
    busy = [(tid := await new_thread(client), await create(client, tid, gated(g))) for g in gates]
    assert all(claimed_at_creation(run_row(pg, rid)) for _, rid in busy)
    assert svc.worker.free_slots() == 0
    tid = await new_thread(client)
    rid = await create(client, tid, body())
    row = run_row(pg, rid)
    assert row["status"] == "pending" and row["lease_owner"] is None, row
    gates[0].touch()
    assert (await wait_terminal(client, tid, rid))["status"] == "success"
    row = run_row(pg, rid)
    assert not claimed_at_creation(row) and row["attempt"] == 1, row
    gates[1].touch()
    for t, r in busy:
        assert (await wait_terminal(client, t, r))["status"] == "success"


async def test_an_older_runnable_run_in_the_queue_keeps_its_turn(client, svc, pg, database_url, tmp_path):
    """A free slot, but the queue holds an older run the claim would take first: the new run is queued too."""
    gates = [tmp_path / "g1", tmp_path / "g2"]
    busy = [(tid := await new_thread(client), await create(client, tid, gated(g))) for g in gates]
    older_tid = await new_thread(client)
    older = await create(client, older_tid, body(tag="older"))  # no slot: queued
    assert run_row(pg, older)["status"] == "pending"
    # Held by another transaction, the older run stays queued when a slot frees (the claim skips locked rows).
    lock = await psycopg.AsyncConnection.connect(database_url)
    try:
        await lock.execute("SELECT 1 FROM keel_runs WHERE run_id = %s FOR UPDATE", (older,))
        gates[0].touch()
        assert (await wait_terminal(client, busy[0][0], busy[0][1]))["status"] == "success"
        await wait_released(svc, busy[0][1])
        assert svc.worker.free_slots() == 1 and run_row(pg, older)["status"] == "pending"
        tid = await new_thread(client)
        rid = await create(client, tid, body(tag="newer"))
        row = run_row(pg, rid)
        assert not claimed_at_creation(row), row
        assert (await wait_terminal(client, tid, rid))["status"] == "success"
    finally:
        await lock.rollback()
        await lock.close()
    assert (await wait_terminal(client, older_tid, older))["status"] == "success"
    gates[1].touch()
    assert (await wait_terminal(client, busy[1][0], busy[1][1]))["status"] == "success"


async def test_a_create_that_fails_after_the_claiming_insert_gives_its_slot_back(client, svc, pg):
    tid = await new_thread(client)
    r = await client.post(f"/threads/{tid}/runs/wait", json=body())
    assert r.status_code == 200, r.text
    taken = pg.sql("SELECT run_id::text, user_id FROM keel_runs WHERE thread_id = %s", tid)[0]
    await wait_released(svc, taken["run_id"])
    other = await new_thread(client)
    run = RunCreate.model_validate(body(tag="again"))
    # The same run id again: the insert fails and the transaction rolls back, thread update included.
    with pytest.raises(pg_errors.UniqueViolation):
        await svc.runs.create(User(taken["user_id"]), other, run, run_id=taken["run_id"])
    assert svc.worker.free_slots() == SLOTS
    assert pg.sql("SELECT status FROM keel_threads WHERE thread_id = %s", other)[0]["status"] == "idle"
    assert (
        pg.sql("SELECT thread_id::text FROM keel_runs WHERE run_id = %s", taken["run_id"])[0]["thread_id"]
        == tid
    )
    # Refused before any insert: an unknown thread.
    r = await client.post(f"/threads/{uuid.uuid4()}/runs", json=body())
    assert r.status_code == 404 and svc.worker.free_slots() == SLOTS
