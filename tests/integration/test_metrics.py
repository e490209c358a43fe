"""GET /metrics over the real database: cluster figures from Postgres, process figures from this service.

The service starts without a worker so runs stay queued; a "dead worker" claims one with the queue's own
claim and never heartbeats, so its lease expires; then a real worker starts, reaps and retries it, and runs
the rest. Each scrape is parsed with prometheus_client's parser.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.runs.queue import claim
from server.service import KeelService
from server.settings import Settings
from tests.support.inprocess import api_client

KEY = {"x-api-key": "ka"}
Q = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client) -> dict:
    r = await client.get("/metrics", headers=KEY)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


async def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def svc(db):
    settings = Settings(keel_api_keys="ka:alice", keel_lease_seconds=1.0)
    service = KeelService(settings, db)
    await service.start_feed()
    try:
        yield service
    finally:
        if service.worker is not None:
            await service.worker.drain(5)
        await service.feed.stop()
        service.telemetry.close()


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


async def test_metrics_needs_the_api_key(client):
    r = await client.get("/metrics")
    assert r.status_code == 401 and r.json() == {"detail": "Missing or invalid API key"}
    assert (await client.get("/metrics", headers={"authorization": "Bearer ka"})).status_code == 200


async def test_queue_retries_and_latency_follow_real_runs(svc, client):
    before = await scrape(client)
    assert value(before, "keel_database_up") == 1
    assert value(before, "keel_run_queue_depth") == 0

    tids, rids = [], []
    for _ in range(2):
        tid = (await client.post("/threads", json={}, headers=KEY)).json()["thread_id"]
        r = await client.post(f"/threads/{tid}/runs", json={"assistant_id": "agent", "input": Q}, headers=KEY)
        assert r.status_code == 200, r.text
        tids.append(tid)
        rids.append(r.json()["run_id"])

    # No worker: both runs wait in the queue, and the oldest has been waiting for a measurable time.
    queued = await scrape(client)
    assert value(queued, "keel_run_queue_depth") == 2
    assert value(queued, "keel_runs", status="pending") == 2
    assert value(queued, "keel_run_queue_oldest_age_seconds") > 0

    # A worker claims one run and dies (never heartbeats): its lease expires.
    dead = await claim(svc.db.pool, "dead-worker", 0.6)
    assert dead is not None
    after_claim = await scrape(client)
    assert value(after_claim, "keel_run_queue_depth") == 1
    assert value(after_claim, "keel_runs", status="running") == 1

    async def lease_expired() -> bool:
        return value(await scrape(client), "keel_run_leases_expired") == 1

    await wait_for(lease_expired, what="the dead worker's lease to expire")

    # A real worker reaps it (attempt 2: one retry) and runs both to the end.
    await svc.start_worker(2)

    async def all_done() -> dict | None:
        s = await scrape(client)
        return s if value(s, "keel_runs", status="success") == 2 else None

    done = await wait_for(all_done, timeout=60, what="both runs to succeed")
    assert value(done, "keel_run_queue_depth") == 0
    assert value(done, "keel_run_queue_oldest_age_seconds") == 0
    assert value(done, "keel_run_leases_expired") == 0
    assert value(done, "keel_runs_retried") == 1
    assert value(done, "keel_run_retries") == 1

    # This process executed the runs: one latency observation per run, and per node of each run.
    assert value(done, "keel_run_duration_seconds_count", outcome="success") == 2
    assert value(done, "keel_run_duration_seconds_sum", outcome="success") > 0
    assert value(done, "keel_node_duration_seconds_count", node="retrieve", outcome="success") >= 2
    assert value(done, "keel_node_duration_seconds_count", node="summarize", outcome="success") >= 2
    assert not any(labels and dict(labels).get("node", "").startswith("__") for _, labels in done)


async def test_http_requests_by_route_template(client):
    before = await scrape(client)
    tid = (await client.post("/threads", json={}, headers=KEY)).json()["thread_id"]
    for _ in range(3):
        assert (await client.get(f"/threads/{tid}", headers=KEY)).status_code == 200
    assert (await client.get("/threads/00000000-0000-0000-0000-000000000000", headers=KEY)).status_code == 404
    assert (await client.get("/no/such/path", headers=KEY)).status_code == 404
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("keel_http_requests_total", method="GET", route="/threads/{thread_id}", status="200") == 3
    assert grew("keel_http_requests_total", method="GET", route="/threads/{thread_id}", status="404") == 1
    assert grew("keel_http_requests_total", method="POST", route="/threads", status="200") == 1
    assert grew("keel_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert grew("keel_http_request_duration_seconds_count", method="GET", route="/threads/{thread_id}") == 4
    # Ids never become label values.
    assert not any(tid in str(labels) for _, labels in after)


async def test_pool_statistics(svc, client):
    s = await scrape(client)
    assert value(s, "keel_db_pool_max") == svc.db.pool.max_size
    assert value(s, "keel_db_pool_min") == svc.db.pool.min_size
    assert 1 <= value(s, "keel_db_pool_size") <= svc.db.pool.max_size
    assert value(s, "keel_db_pool_requests_total") > 0
    first = value(s, "keel_db_pool_requests_total")
    assert value(await scrape(client), "keel_db_pool_requests_total") > first


async def test_each_service_has_its_own_registry(svc, db):
    other = KeelService(svc.settings, db)
    assert other.telemetry.metrics.registry is not svc.telemetry.metrics.registry
    text = (await other.telemetry.metrics.exposition())[0].decode()
    assert value(parse(text), "keel_run_duration_seconds_count", outcome="success") == 0
    # The same database, the same cluster figures.
    assert value(parse(text), "keel_runs", status="success") == 2
