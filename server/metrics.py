"""Prometheus metrics of one Keel process: one `CollectorRegistry` per service, rendered by `GET /metrics`.

Two kinds of figures (docs/operations.md lists every metric):

- Cluster-wide, from Postgres at scrape time: runs by status, queue depth and wait, expired leases and
  retries. Every process reports the same values (aggregate them with `max`, not `sum`).
- Process-local: HTTP requests of this API process, its connection pool, and the run and node latency of
  the runs this process executed (a worker's), kept in histograms.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("keel.metrics")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# One round trip, every part served by an index (migration 10 adds two): keel_runs_status_idx (by status), the
# partial indexes on pending and on running runs (queue, expired leases) and keel_runs_retried_idx (attempt > 1).
CLUSTER_FIGURES = """
SELECT
  (SELECT coalesce(jsonb_object_agg(status, n), '{}'::jsonb)
     FROM (SELECT status, count(*) AS n FROM keel_runs GROUP BY status) s) AS by_status,
  (SELECT count(*) FROM keel_runs WHERE status = 'pending') AS pending,
  (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
     FROM keel_runs WHERE status = 'pending') AS oldest_pending_s,
  (SELECT count(*) FROM keel_runs WHERE status = 'running' AND lease_expires_at < now()) AS lease_expired,
  (SELECT count(*) FROM keel_runs WHERE attempt > 1) AS retried_runs,
  (SELECT coalesce(sum(attempt - 1), 0)::bigint FROM keel_runs WHERE attempt > 1) AS retries
"""
# A scrape must not hang on a busy or unreachable database: the process figures are still worth having.
SCRAPE_TIMEOUT_S = 2.0
RUN_STATUSES = ("pending", "running", "success", "error", "interrupted", "timeout")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# psycopg_pool.get_stats(): the counters (missing while zero) and the gauges this exports.
POOL_COUNTERS = {
    "requests_num": ("keel_db_pool_requests", "connections requested from the pool", 1),
    "requests_queued": ("keel_db_pool_requests_queued", "requests that had to wait for a connection", 1),
    "requests_errors": ("keel_db_pool_requests_errors", "requests that failed (timeout, pool closed)", 1),
    "requests_wait_ms": ("keel_db_pool_requests_wait_seconds", "time requests spent waiting", 1000),
    "usage_ms": ("keel_db_pool_usage_seconds", "time connections were lent out", 1000),
    "connections_num": ("keel_db_pool_connections", "connections opened to Postgres", 1),
    "connections_errors": ("keel_db_pool_connections_errors", "failed attempts to connect", 1),
    "connections_lost": ("keel_db_pool_connections_lost", "connections found broken and dropped", 1),
}
POOL_GAUGES = {
    "pool_size": ("keel_db_pool_size", "connections the pool holds (lent out or idle)"),
    "pool_available": ("keel_db_pool_available", "idle connections ready to lend"),
    "requests_waiting": ("keel_db_pool_requests_waiting", "requests waiting for a connection now"),
    "pool_min": ("keel_db_pool_min", "KEEL_POOL_MIN"),
    "pool_max": ("keel_db_pool_max", "KEEL_POOL_MAX"),
}


@dataclass
class ClusterFigures:
    """The last scrape's answer from Postgres (`up` False when the database did not answer)."""

    up: bool = False
    by_status: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    oldest_pending_s: float = 0.0
    lease_expired: int = 0
    retried_runs: int = 0
    retries: int = 0


class _DatabaseCollector(Collector):
    """Yields the cluster figures of the last refresh and the pool's statistics, as they are at render time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # no describe-time collection (that would need the database)

    def collect(self) -> Iterator[Metric]:
        f = self.metrics.cluster
        yield GaugeMetricFamily(
            "keel_database_up", "1 if Postgres answered this scrape's queries", value=int(f.up)
        )
        if f.up:
            runs = GaugeMetricFamily(
                "keel_runs", "runs in the database by status (cluster-wide)", labels=["status"]
            )
            for status in sorted(set(RUN_STATUSES) | set(f.by_status)):
                runs.add_metric([status], f.by_status.get(status, 0))
            yield runs
            yield GaugeMetricFamily(
                "keel_run_queue_depth", "pending runs waiting for a worker (cluster-wide)", value=f.pending
            )
            yield GaugeMetricFamily(
                "keel_run_queue_oldest_age_seconds",
                "age of the oldest pending run, 0 when none (cluster-wide queue wait)",
                value=f.oldest_pending_s,
            )
            yield GaugeMetricFamily(
                "keel_run_leases_expired",
                "running runs whose lease expired (worker died or stalled), not yet re-queued by a reaper",
                value=f.lease_expired,
            )
            yield GaugeMetricFamily(
                "keel_runs_retried",
                "runs claimed more than once (after a lease expiry or database loss)",
                value=f.retried_runs,
            )
            yield GaugeMetricFamily(
                "keel_run_retries",
                "extra attempts over all runs in the database: sum(attempt - 1)",
                value=f.retries,
            )
        stats = self.metrics.pool.get_stats()
        for key, (name, doc) in POOL_GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=stats.get(key, 0))
        for key, (name, doc, per_unit) in POOL_COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0) / per_unit)


class _HeapCollector(Collector):
    """The garbage collector's figures: collections per generation, and what start-up froze (server/heap.py)."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "keel_gc_frozen_objects",
            "objects frozen once the process started (never walked by a collection; 0 before)",
            value=gc.get_freeze_count(),
        )
        runs = CounterMetricFamily(
            "keel_gc_collections", "garbage collections by generation (2 = full)", labels=["generation"]
        )
        for generation, stats in enumerate(gc.get_stats()):
            runs.add_metric([str(generation)], stats["collections"])
        yield runs


class Metrics:
    """This process's registry and instruments; owned by the service, passed to whoever records."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self.registry = CollectorRegistry()
        self.cluster = ClusterFigures()
        r = self.registry
        self.http_requests = Counter(
            "keel_http_requests",
            "HTTP requests served by this process, by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "keel_http_request_duration_seconds",
            "HTTP request latency (until the response is complete; a stream lasts as long as its run)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.run_duration = Histogram(
            "keel_run_duration_seconds",
            "graph execution time of run attempts executed by this process, by outcome",
            ["outcome"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.node_duration = Histogram(
            "keel_node_duration_seconds",
            "execution time of graph nodes in runs executed by this process, by node and outcome",
            ["node", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_DatabaseCollector(self))
        r.register(_HeapCollector())

    async def refresh(self) -> ClusterFigures:
        """Ask Postgres for the cluster-wide figures (bounded by SCRAPE_TIMEOUT_S)."""
        try:
            async with self.pool.connection(timeout=SCRAPE_TIMEOUT_S) as conn:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL statement_timeout = {int(SCRAPE_TIMEOUT_S * 1000)}")
                    row: Any = await (await conn.execute(CLUSTER_FIGURES)).fetchone()
        except (
            Exception
        ) as exc:  # the process figures still render; keel_database_up says why the rest is missing
            log.warning("metrics: the cluster figures are unavailable: %s", exc)
            self.cluster = ClusterFigures(up=False)
            return self.cluster
        self.cluster = ClusterFigures(
            up=True,
            by_status={str(k): int(v) for k, v in (row["by_status"] or {}).items()},
            pending=int(row["pending"]),
            oldest_pending_s=float(row["oldest_pending_s"]),
            lease_expired=int(row["lease_expired"]),
            retried_runs=int(row["retried_runs"]),
            retries=int(row["retries"]),
        )
        return self.cluster

    async def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type, with fresh cluster figures."""
        await self.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/threads/{thread_id}`), so ids never become label values."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class HttpTelemetry:
    """ASGI middleware: counts and times every HTTP request by route template and status, and (when OTLP
    tracing is on) wraps it in a server span. Finds the service's telemetry at request time (lifespan)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        telemetry = _telemetry_of(scope) if scope["type"] == "http" else None
        if telemetry is None:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        span = telemetry.start_http_span(scope)
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_template(scope)
            telemetry.metrics.observe_http(scope["method"], route, status, time.perf_counter() - started)
            if span is not None:
                telemetry.end_http_span(span, scope["method"], route, status)


def _telemetry_of(scope: Scope) -> Any:
    app = scope.get("app")
    svc = getattr(getattr(app, "state", None), "keel", None)
    return getattr(svc, "telemetry", None)
