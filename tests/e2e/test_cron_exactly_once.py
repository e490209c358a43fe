"""Crons across worker processes: three schedulers race for the same due crons; each tick fires exactly once.

A schedule's unit is a minute, so the test does not wait for the clock: the crons' schedule is yearly and the
test makes them due by moving `next_run_at` into the past through the cron store (`set_next_run_at`), all at
once, several rounds over. After each round every cron has been advanced, and each has exactly one run more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from server.crons import store as cron_store
from tests.support.cluster import TERMINAL, Cluster

pytestmark = pytest.mark.slow

CRONS = 12
ROUNDS = 4
YEARLY = "0 0 1 1 *"


@pytest.fixture(scope="module")
def cluster(database_url) -> Iterator[Cluster]:
    c = Cluster(database_url, env_extra={"KEEL_CRON_POLL_SECONDS": "0.05"})
    try:
        c.start_api()
        for _ in range(3):
            c.start_worker(concurrency=4)
        yield c
    finally:
        c.stop()


async def make_all_due(url: str, cron_ids: list[str]) -> None:
    """One transaction: every cron becomes due at the same instant, so the schedulers meet on all of them."""
    async with await psycopg.AsyncConnection.connect(url, row_factory=dict_row) as conn, conn.transaction():
        for cid in cron_ids:
            assert await cron_store.set_next_run_at(conn, cid, datetime.now(UTC) - timedelta(minutes=5))


def runs_per_cron(c: Cluster) -> dict[str, int]:
    rows = c.sql(
        "SELECT kwargs->'config'->'configurable'->>'cron_id' AS cron_id, count(*) AS n FROM keel_runs "
        "WHERE kwargs->'config'->'configurable' ? 'cron_id' GROUP BY 1"
    )
    return {r["cron_id"]: r["n"] for r in rows}


def wait_until(predicate, c: Cluster, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}\n" + c.logs()
        time.sleep(0.05)


def test_each_due_tick_fires_exactly_once_across_three_workers(cluster):
    c = cluster
    with c.client() as http:
        made = []
        for i in range(CRONS):
            r = http.post(
                "/runs/crons",
                json={
                    "assistant_id": "agent",
                    "schedule": YEARLY,
                    "input": {"plan": {}, "inputs": [f"cron-{i}"]},
                    "on_run_completed": "keep",
                },
            )
            assert r.status_code == 200, r.text
            made.append(r.json()["cron_id"])
    assert runs_per_cron(c) == {}

    for round_no in range(1, ROUNDS + 1):
        asyncio.run(make_all_due(c.database_url, made))

        def advanced() -> bool:
            rows = c.sql("SELECT count(*) AS n FROM keel_crons WHERE next_run_at <= now()")
            return rows[0]["n"] == 0

        wait_until(advanced, c, f"round {round_no}: every cron fired and advanced")
        assert runs_per_cron(c) == {cid: round_no for cid in made}, f"round {round_no}\n" + c.logs()

    # The runs are ordinary background runs: the workers execute them all.
    def all_done() -> bool:
        rows = c.sql("SELECT status FROM keel_runs")
        return len(rows) == CRONS * ROUNDS and all(r["status"] in TERMINAL for r in rows)

    wait_until(all_done, c, "every cron run to finish")
    assert {r["status"] for r in c.sql("SELECT DISTINCT status FROM keel_runs")} == {"success"}
    fired = [line for p in c.workers() for line in p.log().splitlines() if "fired run" in line]
    assert len(fired) == CRONS * ROUNDS, "\n".join(fired)
    c.assert_invariants()
