"""A process's telemetry: its Prometheus metrics and, when an OTLP endpoint is configured, OpenTelemetry traces.

Runs are observed through a LangChain callback handler attached to the graph the worker executes: the graph's
top-level chain is the run (its callback run id is Keel's run id), its direct children are the nodes. Each
becomes a latency observation and, with tracing on, a span carrying the run's thread, run and assistant ids.
With no OTLP endpoint nothing of OpenTelemetry is imported and no span is made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from psycopg_pool import AsyncConnectionPool

from server.metrics import Metrics, Scope
from server.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("keel.telemetry")


def _outcome(error: BaseException) -> str:
    name = type(error).__name__
    if name in ("GraphInterrupt", "NodeInterrupt"):
        return "interrupted"
    if name == "GraphDrained":
        return "drained"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "error"


@dataclass
class _Open:
    """A run or node that started and has not ended yet."""

    started: float
    node: str | None  # None for the run itself
    span: Span | None
    parent: UUID | None = None
    interrupted: bool = False  # a node of this run called interrupt()


class RunObserver(BaseCallbackHandler):
    """Times runs and their nodes (histograms) and, with a tracer, turns them into spans."""

    run_inline = True  # called in the event loop, in order; it only reads a clock and touches a dict
    raise_error = False

    def __init__(self, metrics: Metrics, tracer: Tracer | None) -> None:
        self.metrics = metrics
        self.tracer = tracer
        self._open: dict[UUID, _Open] = {}

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        meta = metadata or {}
        if parent_run_id is None:
            if meta.get("run_id") != str(run_id):
                return  # not a Keel run (a state update, a tool's own chain)
            self._open[run_id] = _Open(time.perf_counter(), None, self._run_span(meta))
            return
        parent = self._open.get(parent_run_id)
        node = meta.get("langgraph_node") or kwargs.get("name")
        if parent is None or parent.node is not None or not isinstance(node, str) or node.startswith("__"):
            return  # only the run's own nodes (not what runs inside them)
        span = None
        if self.tracer is not None and parent.span is not None:
            from opentelemetry.trace import set_span_in_context

            span = self.tracer.start_span(
                f"node {node}",
                context=set_span_in_context(parent.span),
                attributes={
                    "langgraph.node": node,
                    "langgraph.step": int(meta.get("langgraph_step") or 0),
                    **_ids(meta),
                },
            )
        self._open[run_id] = _Open(time.perf_counter(), node, span, parent_run_id)

    def _run_span(self, meta: dict[str, Any]) -> Span | None:
        if self.tracer is None:
            return None
        from opentelemetry.trace import SpanKind

        return self.tracer.start_span(
            f"run {meta.get('graph_id') or 'graph'}", kind=SpanKind.CONSUMER, attributes=_ids(meta)
        )

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)

    def _close(self, run_id: UUID, error: BaseException | None) -> None:
        entry = self._open.pop(run_id, None)
        if entry is None:
            return
        seconds = time.perf_counter() - entry.started
        outcome = "success" if error is None else _outcome(error)
        if entry.node is None:
            if outcome == "success" and entry.interrupted:
                outcome = "interrupted"
            self.metrics.run_duration.labels(outcome).observe(seconds)
            for orphan in [k for k, v in self._open.items() if v.parent == run_id]:
                self._close(orphan, asyncio.CancelledError())  # a node the run ended without (never leaks)
        else:
            self.metrics.node_duration.labels(entry.node, outcome).observe(seconds)
            run = self._open.get(entry.parent) if entry.parent is not None else None
            if outcome == "interrupted" and run is not None:
                run.interrupted = True  # the graph itself ends normally; its run is interrupted
        if entry.span is not None:
            _end_span(entry.span, outcome, error)


def _ids(meta: dict[str, Any]) -> dict[str, str]:
    keys = ("thread_id", "run_id", "assistant_id", "graph_id")
    return {f"keel.{k}": str(meta[k]) for k in keys if meta.get(k) is not None}


def _end_span(span: Span, outcome: str, error: BaseException | None) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("keel.outcome", outcome)
    if outcome == "error" and error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
    span.end()


class Telemetry:
    """Metrics always; traces to an OTLP/HTTP collector when KEEL_OTEL_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT)
    is set. One per service: no global registry or tracer provider is touched."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool[Any]) -> None:
        self.metrics = Metrics(pool)
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        endpoint = settings.otel_traces_endpoint
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self.provider = TracerProvider(
                resource=Resource.create({"service.name": settings.otel_service_name})
            )
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
            self.tracer = self.provider.get_tracer("keel")
            log.info("OpenTelemetry traces go to %s", endpoint)
        self.observer = RunObserver(self.metrics, self.tracer)

    def instrument(self, graph: Any) -> Any:
        """The graph with this process's run observer attached (the worker executes this copy)."""
        return graph.with_config(callbacks=[self.observer])

    def start_http_span(self, scope: Scope) -> Span | None:
        if self.tracer is None:
            return None
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        parent = TraceContextTextMapPropagator().extract(headers)
        return self.tracer.start_span(
            f"{scope['method']}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope.get("path", "")},
        )

    @staticmethod
    def end_http_span(span: Span, method: str, route: str, status: int) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def close(self) -> None:
        """Flush and stop the span exporter (spans still queued are sent)."""
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None
