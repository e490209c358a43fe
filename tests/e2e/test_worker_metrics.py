"""Scraping several processes: an API (no in-process workers) and a `keel worker` with KEEL_METRICS_PORT.

Both report the same cluster-wide figures (from Postgres); only the worker, which executed the run, has its
latency; only the API has the run's HTTP requests.
"""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import Cluster
from tests.support.live import free_port

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def cluster(database_url):
    port = free_port()
    c = Cluster(database_url, env_extra={"KEEL_METRICS_PORT": str(port)})
    try:
        c.start_api()
        c.start_worker(1)
        c.worker_metrics = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield c
    finally:
        c.stop()


def test_each_process_exposes_its_own_metrics(cluster):
    worker_url = cluster.worker_metrics
    assert f"keel worker metrics: {worker_url}/metrics" in cluster.workers()[0].log()
    tid = cluster.thread()
    run = cluster.start_run(tid)
    assert cluster.wait_status(tid, run["run_id"])["status"] == "success"

    deadline = time.monotonic() + 30
    while True:  # the run's finish commits before the worker records its latency: wait for both
        api, worker = scrape(cluster.url), scrape(worker_url)
        if value(worker, "keel_run_duration_seconds_count", outcome="success") == 1:
            break
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.1)

    # Cluster-wide figures: the same from every process (aggregate with max, not sum).
    for samples in (api, worker):
        assert value(samples, "keel_database_up") == 1
        assert value(samples, "keel_runs", status="success") == 1
        assert value(samples, "keel_run_queue_depth") == 0
    # Process-local figures: the worker executed the run, the API served its requests.
    assert value(api, "keel_run_duration_seconds_count", outcome="success") == 0
    assert value(worker, "keel_node_duration_seconds_count", node="a", outcome="success") == 1
    assert (
        value(api, "keel_http_requests_total", method="POST", route="/threads/{thread_id}/runs", status="200")
        == 1
    )
    assert (
        value(
            worker, "keel_http_requests_total", method="POST", route="/threads/{thread_id}/runs", status="200"
        )
        == 0
    )
    assert value(worker, "keel_db_pool_requests_total") > 0
    # The worker's own /ok-less server answers nothing but /metrics.
    assert httpx.get(worker_url + "/threads", timeout=10).status_code == 404


def test_each_process_froze_its_start_up_heap(cluster):
    """`keel serve` and `keel worker` pause collection while they start and then freeze what start-up built
    (server/heap.py), so a full collection while serving never walks those objects again."""
    for url in (cluster.url, cluster.worker_metrics):
        samples = scrape(url)
        assert value(samples, "keel_gc_frozen_objects") > 50_000, url
        assert value(samples, "keel_gc_collections_total", generation="0") > 0, url  # collection resumed
