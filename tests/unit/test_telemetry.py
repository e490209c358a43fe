"""The run observer on a real (in-memory checkpointed) graph: latency by outcome, spans per run and node."""

from __future__ import annotations

import threading
import uuid
from typing import Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.metrics import Metrics
from server.settings import Settings
from server.telemetry import RunObserver, Telemetry


class S(TypedDict):
    x: int


def _graph(observer: RunObserver) -> Any:
    def a(s: S) -> dict:
        return {"x": s["x"] + 1}

    def ask(s: S) -> dict:
        return {"x": s["x"] + int(interrupt("how much?"))}

    g = StateGraph(S)
    g.add_node("a", a)
    g.add_node("ask", ask)
    g.add_edge(START, "a")
    g.add_edge("a", "ask")
    g.add_edge("ask", END)
    return g.compile(checkpointer=InMemorySaver(), name="agent").with_config(callbacks=[observer])


def _config(thread_id: str) -> dict[str, Any]:
    rid = str(uuid.uuid4())
    meta = {"thread_id": thread_id, "run_id": rid, "assistant_id": "aid", "graph_id": "agent"}
    return {"configurable": {"thread_id": thread_id}, "run_id": uuid.UUID(rid), "metadata": meta}


def _count(metrics: Metrics, name: str, **labels: str) -> float:
    """A histogram's observation count (read from the instrument: the registry also holds the database's)."""
    family, _, _ = name.removeprefix("keel_").rpartition("_seconds_count")
    histogram = {"run_duration": metrics.run_duration, "node_duration": metrics.node_duration}[family]
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def test_runs_and_nodes_become_observations_and_spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = Metrics(pool=None)  # type: ignore[arg-type]  # the pool is only read at scrape time
    graph = _graph(RunObserver(metrics, provider.get_tracer("test")))

    first = _config("t1")
    await graph.ainvoke({"x": 0}, first)  # interrupts in "ask"
    second = _config("t1")
    await graph.ainvoke(Command(resume=2), second)
    await graph.aget_state({"configurable": {"thread_id": "t1"}})  # not a run: observes nothing

    assert _count(metrics, "keel_run_duration_seconds_count", outcome="interrupted") == 1
    assert _count(metrics, "keel_run_duration_seconds_count", outcome="success") == 1
    assert _count(metrics, "keel_node_duration_seconds_count", node="a", outcome="success") == 1
    assert _count(metrics, "keel_node_duration_seconds_count", node="ask", outcome="interrupted") == 1
    assert _count(metrics, "keel_node_duration_seconds_count", node="ask", outcome="success") == 1

    spans = exporter.get_finished_spans()
    runs = [s for s in spans if s.name == "run agent"]
    assert [s.attributes["keel.outcome"] for s in runs] == ["interrupted", "success"]
    assert [s.attributes["keel.run_id"] for s in runs] == [
        first["metadata"]["run_id"],
        second["metadata"]["run_id"],
    ]
    for run in runs:
        assert run.parent is None and run.attributes["keel.thread_id"] == "t1"
        assert run.attributes["keel.assistant_id"] == "aid"
    nodes = [s for s in spans if s.name.startswith("node ")]
    assert sorted(s.name for s in nodes) == ["node a", "node ask", "node ask"]
    for node in nodes:
        parent = next(r for r in runs if r.context.span_id == node.parent.span_id)
        assert node.context.trace_id == parent.context.trace_id
    assert len(spans) == len(runs) + len(nodes)  # nothing inside a node, nothing for the state read


async def test_a_chain_that_is_not_a_keel_run_is_ignored():
    metrics = Metrics(pool=None)  # type: ignore[arg-type]
    graph = _graph(RunObserver(metrics, None))
    await graph.ainvoke({"x": 0}, {"configurable": {"thread_id": "t2"}})  # no Keel run id in the metadata
    assert _count(metrics, "keel_run_duration_seconds_count", outcome="interrupted") == 0
    assert _count(metrics, "keel_node_duration_seconds_count", node="a", outcome="success") == 0


def test_tracing_is_off_without_an_endpoint():
    off = Telemetry(Settings(), pool=None)  # type: ignore[arg-type]
    assert off.tracer is None and off.provider is None and off.observer.tracer is None
    assert not any("OtelBatchSpanProcessor" in t.name for t in threading.enumerate())
    assert Settings().otel_traces_endpoint is None
    assert Settings(keel_otel_endpoint="http://c:4318/").otel_traces_endpoint == "http://c:4318/v1/traces"
    assert (
        Settings(
            otel_exporter_otlp_endpoint="http://o:4318", keel_otel_endpoint="http://k:4318"
        ).otel_traces_endpoint
        == "http://k:4318/v1/traces"
    )
