"""Small graphs that report what a run gave them: its context and the ids in its configurable.

- `graph`: a compiled one-node graph with a context schema of its own (`EchoContext`), listed by the multi-graph
  tests' langgraph.json next to Keel's agent (Keel compiles its builder again with Postgres).
- `agent_echo(toolbox)`: a KEEL_GRAPH-style factory; the graph runs with Keel's agent `Context` (identity,
  budgets and settings as the server builds them) and reports it.
Both answer `{"answer": ..., "seen": {...}}`, so a test reads the run's context from `/runs/wait`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from agent.context import Context
from agent.toolbox import Toolbox

IDS = ("graph_id", "assistant_id", "flavour")


class EchoState(TypedDict, total=False):
    question: str
    answer: str
    seen: dict[str, Any]


@dataclass
class EchoContext:
    """The echo graph's own run settings."""

    topic: str = "none"
    tone: str = "plain"
    user_id: str = ""


def _configurable() -> dict[str, Any]:
    conf = get_config().get("configurable") or {}
    return {k: conf[k] for k in IDS if k in conf}


async def echo(state: EchoState, runtime: Runtime[EchoContext]) -> dict[str, Any]:
    ctx = runtime.context
    seen = {"context": dataclasses.asdict(ctx) if dataclasses.is_dataclass(ctx) else ctx, **_configurable()}
    return {"answer": f"{ctx.tone}: {state.get('question', '')} about {ctx.topic}", "seen": seen}


builder = StateGraph(EchoState, context_schema=EchoContext)
builder.add_node("echo", echo)
builder.add_edge(START, "echo")
builder.add_edge("echo", END)
graph = builder.compile(name="echo")


async def agent_context(state: EchoState, runtime: Runtime[Context]) -> dict[str, Any]:
    c = runtime.context
    fields = ("user_id", "tenant", "namespace", "max_steps", "retrieve_k", "model")
    return {"answer": "ok", "seen": {"context": {f: getattr(c, f) for f in fields}, **_configurable()}}


def agent_echo(toolbox: Toolbox) -> StateGraph[EchoState, Context, EchoState, EchoState]:
    """A graph run with Keel's agent Context (as KEEL_GRAPH's graphs are), reporting it."""
    b = StateGraph(EchoState, context_schema=Context)
    b.add_node("report", agent_context)
    b.add_edge(START, "report")
    b.add_edge("report", END)
    return b
