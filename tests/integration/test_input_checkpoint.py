"""A run's input checkpoint, and step 0 that applies its input, commit without waiting for the WAL flush
(server.db.saver), and a Postgres crash that loses them sends the run back to its input (or to its input
checkpoint): it is never continued on top of a lost checkpoint, and its input lands once. A run that a request
streams or waits for is created without waiting for the flush too, and the request answers only once a
synchronous commit has followed (server.routes.runs).

In process (ASGI client, in-process worker) on the real embedded Postgres, with the 4-node fault graph. A Postgres
crash that loses the unflushed commit is played by a trigger that deletes what that commit wrote.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from server.db import is_transient_error
from server.db.saver import CheckpointLost, confirm_checkpoint
from server.routes.runs import LOST_CREATION
from server.runs.events import EventWriter
from server.settings import Settings
from tests.integration.test_hardening_runs import Sql, assert_one_chain, body, new_thread, wait_terminal
from tests.support.cluster import assert_event_log
from tests.support.inprocess import api_client, running_service


def trigger(
    name: str, table: str, body: str, *, events: str = "INSERT", at_commit: bool = False
) -> tuple[str, str]:
    """(install, remove): a row trigger `name` on `table` running the plpgsql `body`; `at_commit`: deferred to the
    transaction's commit (a constraint trigger), where it sees what the transaction committed with."""
    kind, when = ("CONSTRAINT TRIGGER", "DEFERRABLE INITIALLY DEFERRED ") if at_commit else ("TRIGGER", "")
    install = f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{body}
END $$;
DROP TRIGGER IF EXISTS {name} ON {table};
CREATE {kind} {name} AFTER {events} ON {table} {when}FOR EACH ROW EXECUTE FUNCTION {name}();
"""
    return install, f"DROP TRIGGER IF EXISTS {name} ON {table}"


LOST_TABLE = "CREATE TABLE IF NOT EXISTS keel_test_lost (thread_id text PRIMARY KEY);"

# The setting each checkpoint's transaction committed with.
PROBE, UNPROBE = trigger(
    "keel_test_commit_probe",
    "checkpoints",
    """    INSERT INTO keel_test_commit_probe VALUES (NEW.thread_id, NEW.metadata->>'source',
        (NEW.metadata->>'step')::int, current_setting('synchronous_commit'));
    RETURN NEW;""",
)
PROBE = (
    "CREATE TABLE IF NOT EXISTS keel_test_commit_probe (thread_id text, source text, step int, sync text);"
    + PROBE
)
# The setting each run's creating transaction committed with (at the commit), and its confirmations (an update
# that leaves a pending run pending).
RUN_PROBE, RUN_UNPROBE = trigger(
    "keel_test_run_probe",
    "keel_runs",
    """    IF TG_OP = 'INSERT' OR (OLD.status = 'pending' AND NEW.status = 'pending') THEN
        INSERT INTO keel_test_run_probe VALUES (NEW.thread_id::text, NEW.run_id::text, TG_OP = 'UPDATE',
            current_setting('synchronous_commit'));
    END IF;
    RETURN NEW;""",
    events="INSERT OR UPDATE",
    at_commit=True,
)
RUN_PROBE = (
    "CREATE TABLE IF NOT EXISTS keel_test_run_probe (thread_id text, run_id text, updated bool, sync text);"
    + RUN_PROBE
)


# A Postgres crash that loses the input checkpoint's commit (it did not wait for the WAL flush), played once per
# thread: the commit goes through without what it wrote (the thread is new: its checkpoint rows, and the run's
# events, are all that transaction's), while the worker goes on as if it had not happened (as its pool would,
# reconnecting to the restarted Postgres).
def lose_once(name: str, condition: str, deletes: str) -> tuple[str, str]:
    """(install, remove): a trigger on checkpoints that plays a lost commit once per thread: for the first
    checkpoint row meeting `condition`, the `deletes` run as the commit goes through (keel_test_lost records it)."""
    install, remove = trigger(
        name,
        "checkpoints",
        f"""    IF ({condition}) AND NEW.checkpoint_ns = '' THEN
        INSERT INTO keel_test_lost VALUES (NEW.thread_id) ON CONFLICT DO NOTHING;
        IF FOUND THEN
{deletes}
        END IF;
    END IF;
    RETURN NULL;""",
    )
    return LOST_TABLE + install, remove


LOSE, UNLOSE = lose_once(
    "keel_test_lose",
    "NEW.metadata->>'source' = 'input'",
    """            DELETE FROM checkpoint_writes WHERE thread_id = NEW.thread_id;
            DELETE FROM checkpoint_blobs WHERE thread_id = NEW.thread_id;
            DELETE FROM checkpoints WHERE thread_id = NEW.thread_id;
            DELETE FROM keel_run_events WHERE run_id = (NEW.metadata->>'run_id')::uuid;""",
)
# The same crash losing only step 0's commit (the input checkpoint before it was flushed): its checkpoint row is
# gone (the blobs it wrote may stay: later writes of the same versions overwrite them).
LOSE_STEP0, UNLOSE_STEP0 = lose_once(
    "keel_test_lose_step0",
    "NEW.metadata->>'source' = 'loop' AND NEW.metadata->>'step' = '0'",
    "            DELETE FROM checkpoints WHERE thread_id = NEW.thread_id AND checkpoint_id = NEW.checkpoint_id;",
)
# A Postgres crash that loses a run's creation (it did not wait for the WAL flush) before anything followed it:
# the row of a run whose input is tagged so is gone when its transaction commits.
LOSE_CREATION, UNLOSE_CREATION = trigger(
    "keel_test_lose_creation",
    "keel_runs",
    """    IF NEW.kwargs::text LIKE '%keel-test-lost-creation%' THEN
        DELETE FROM keel_runs WHERE run_id = NEW.run_id;
    END IF;
    RETURN NULL;""",
    at_commit=True,
)


@pytest.fixture(scope="module")
def database_url(database_url, pg_admin_url):
    """This module's database commits as production does, waiting for the WAL flush (the suite's do not)."""
    name = conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
    return database_url


@pytest.fixture(scope="module")
async def svc(db):
    settings = Settings(keel_graph="tests.support.fault_graph:build", keel_durability="sync")
    async with running_service(settings, db, workers=2) as service:
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


@pytest.fixture(scope="module")
def pg(database_url):
    return Sql(database_url)


async def test_only_the_input_checkpoint_and_step_0_commit_without_waiting_for_the_flush(client, pg):
    """The setting each checkpoint's transaction committed with, as Postgres saw it (a trigger records it)."""
    await pg.run(PROBE)
    try:
        tid = await new_thread(client)
        r = await client.post(f"/threads/{tid}/runs/wait", json=body(tag="probe"))
        assert r.status_code == 200 and r.json()["inputs"] == ["probe"], r.text
    finally:
        await pg.run(UNPROBE)
    rows = pg.sql("SELECT source, step, sync FROM keel_test_commit_probe WHERE thread_id = %s", tid)
    got = sorted(((r["step"], r["source"], r["sync"]) for r in rows), key=lambda x: x[0])
    assert len(got) > 3, rows
    assert got[:2] == [(-1, "input", "off"), (0, "loop", "off")], rows
    assert all(sync == "on" for _, _, sync in got[2:]), rows


async def test_a_streamed_or_waited_for_run_is_created_without_waiting_for_the_flush(client, pg):
    """A background run's creation waits for the flush (its answer names the run at once); one the request streams
    or waits for does not, and that request answers once a synchronous commit has followed: the run's claim or
    end, or, when no worker claims the run in time (its thread is busy), a confirmation of its own."""
    await pg.run(RUN_PROBE)
    try:
        background, waited, streamed, busy = [await new_thread(client) for _ in range(4)]
        r = await client.post(f"/threads/{background}/runs", json=body(tag="bg"))
        assert r.status_code == 200, r.text
        await wait_terminal(client, background, r.json()["run_id"])
        r = await client.post(f"/threads/{waited}/runs/wait", json=body(tag="w"))
        assert r.status_code == 200 and r.json()["inputs"] == ["w"], r.text
        async with client.stream("POST", f"/threads/{streamed}/runs/stream", json=body(tag="s")) as r:
            assert r.status_code == 200
            text = (await r.aread()).decode()
        assert "event: values" in text and '"s"' in text, text

        # A run queued behind a running one on its thread: nothing about it is notified while the request waits.
        first = await client.post(f"/threads/{busy}/runs", json=body({"a": {"sleep": 2}}, tag="first"))
        assert first.status_code == 200, first.text
        queued = body(tag="queued", multitask_strategy="enqueue")
        async with client.stream("POST", f"/threads/{busy}/runs/stream", json=queued) as r:
            assert r.status_code == 200  # (the answer has begun: the creation was made durable)
            second = r.headers["content-location"].rsplit("/", 1)[1]
            confirmed = pg.sql(
                "SELECT sync FROM keel_test_run_probe WHERE thread_id = %s AND run_id = %s AND updated",
                busy,
                second,
            )
            assert confirmed == [{"sync": "on"}], confirmed
        for rid in (first.json()["run_id"], second):
            assert (await wait_terminal(client, busy, rid))["status"] == "success"
    finally:
        await pg.run(RUN_UNPROBE)
    created = pg.sql("SELECT thread_id, sync FROM keel_test_run_probe WHERE NOT updated")
    rows = {r["thread_id"]: r["sync"] for r in created}
    assert rows[background] == "on" and rows[waited] == "off" and rows[streamed] == "off", rows
    assert rows[busy] == "off", rows
    confirmations = pg.sql("SELECT thread_id FROM keel_test_run_probe WHERE updated")
    assert [r["thread_id"] for r in confirmations] == [busy], "a run that started in time was confirmed"


async def test_a_lost_creation_is_refused_with_a_503_before_the_client_hears_of_the_run(client, pg):
    """Nothing about the run is notified in time, and the confirmation finds no run: the request answers 503 (the
    client may create it again), not a stream or a wait about a run that does not exist."""
    await pg.run(LOSE_CREATION)
    try:
        for route in ("stream", "wait"):
            tid = await new_thread(client)
            r = await client.post(f"/threads/{tid}/runs/{route}", json=body(tag="keel-test-lost-creation"))
            assert r.status_code == 503, (route, r.status_code, r.text)
            assert r.json() == {"detail": LOST_CREATION}
            assert "content-location" not in r.headers
            assert pg.sql("SELECT 1 FROM keel_runs WHERE thread_id = %s", tid) == []
    finally:
        await pg.run(UNLOSE_CREATION)


async def _run_through_a_loss(client, pg, install: str, remove: str, what: str) -> tuple[str, str]:
    """A background run with a lost commit played (`install`): it succeeds on its second attempt, with its input
    applied once and every node's work in the thread. Returns (thread id, run id)."""
    await pg.run(install)
    try:
        tid = await new_thread(client)
        r = await client.post(f"/threads/{tid}/runs", json=body(tag="once"))
        assert r.status_code == 200, r.text
        rid = r.json()["run_id"]
        run = await wait_terminal(client, tid, rid)
    finally:
        await pg.run(remove)
    assert pg.sql("SELECT 1 FROM keel_test_lost WHERE thread_id = %s", tid), f"{what} was not lost"
    assert run["status"] == "success" and run["attempt"] == 2, run
    state = (await client.get(f"/threads/{tid}/state")).json()
    assert state["values"]["inputs"] == ["once"], state["values"]
    assert state["values"]["log"] == ["a", "b", "c", "d"], state["values"]
    return tid, rid


async def test_a_lost_input_checkpoint_sends_the_run_back_to_its_input(client, svc, pg):
    """Lost before the next checkpoint: that checkpoint finds it gone, the attempt ends (a database failure) and
    the run starts over from its input, which lands once. Without the check the attempt would go on, on top of the
    lost checkpoint (its history would start at a checkpoint whose parent is missing)."""
    tid, rid = await _run_through_a_loss(client, pg, LOSE, UNLOSE, "the input checkpoint")
    sources = pg.sql(
        "SELECT metadata->>'source' AS s, metadata->>'run_id' AS run FROM checkpoints WHERE thread_id = %s "
        "AND checkpoint_ns = '' ORDER BY checkpoint_id",
        tid,
    )
    assert [r["s"] for r in sources] == ["input"] + ["loop"] * (len(sources) - 1), sources
    assert {r["run"] for r in sources} == {rid}, sources
    assert_one_chain(pg, tid)
    assert_event_log(pg, rid, "success")


async def test_a_lost_step_0_sends_the_run_back_to_its_input_checkpoint(client, pg):
    """Step 0 lost (its input checkpoint not): the next checkpoint finds it gone, the attempt ends, and the next one
    resumes from the input checkpoint, derives step 0 again and applies the input once."""
    tid, rid = await _run_through_a_loss(client, pg, LOSE_STEP0, UNLOSE_STEP0, "step 0")
    steps = pg.sql(
        "SELECT (metadata->>'step')::int AS step FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' "
        "ORDER BY checkpoint_id",
        tid,
    )
    assert [r["step"] for r in steps] == list(range(-1, len(steps) - 1)), steps
    assert_one_chain(pg, tid)
    assert_event_log(pg, rid, "success")


async def test_a_run_ending_on_its_unconfirmed_checkpoint_confirms_it_first(client, db, pg):
    """Before a run's outcome is recorded, its unconfirmed checkpoint (when no checkpoint followed it) is written
    again in a synchronous commit of its own; gone, it ends the attempt as a database failure would."""
    r = await client.post("/threads", json={"metadata": {"graph_id": "agent"}})
    tid = r.json()["thread_id"]
    r = await client.post(f"/threads/{tid}/state", json={"values": {"inputs": ["kept"]}, "as_node": "a"})
    assert r.status_code == 200, r.text
    checkpoint_id = r.json()["checkpoint"]["checkpoint_id"]
    writer = EventWriter(db.pool, str(uuid.uuid4()), 1, 1, 0)
    writer.unconfirmed_checkpoint = checkpoint_id
    await confirm_checkpoint(db.pool, writer, tid)
    assert writer.unconfirmed_checkpoint is None
    pg.sql("DELETE FROM checkpoints WHERE thread_id = %s RETURNING 1", tid)
    writer.unconfirmed_checkpoint = checkpoint_id
    with pytest.raises(CheckpointLost) as lost:
        await confirm_checkpoint(db.pool, writer, tid)
    assert is_transient_error(lost.value), "the executor hands the run back to the queue"
    assert writer.unconfirmed_checkpoint == checkpoint_id
