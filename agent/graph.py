"""The agent graph, read top to bottom like a table of contents.

START -> retrieve -> summarize --(tool calls)--> execute_tools -> summarize
                        +--(draft)--> critique --(score < threshold, revisions left)--> retrieve
                                         +--(pass or budget exhausted)--> END

`build(toolbox)` wires the nodes to a `Toolbox` (the tools and the services they need). `graph` is the
default toolbox's graph compiled without a checkpointer or store (what `langgraph dev` / Studio expect);
the server builds its own with its pool and settings, then compiles it with the Postgres saver and store.
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from agent.context import Context
from agent.nodes.critique import make_critique
from agent.nodes.execute_tools import make_execute_tools
from agent.nodes.retrieve import retrieve
from agent.nodes.summarize import make_summarize
from agent.retry import MODEL_RETRY, STORE_RETRY
from agent.routing import (
    route_after_critique,
    route_after_execute_tools,
    route_after_retrieve,
    route_after_summarize,
)
from agent.state import InputState, OutputState, State
from agent.toolbox import Toolbox


def build(toolbox: Toolbox | None = None) -> StateGraph[State, Context, InputState, OutputState]:
    """The uncompiled agent graph, its tool nodes using `toolbox` (default: Keel's tools, no services)."""
    toolbox = toolbox if toolbox is not None else Toolbox()
    b = StateGraph(State, context_schema=Context, input_schema=InputState, output_schema=OutputState)
    b.add_node("retrieve", retrieve, retry_policy=STORE_RETRY)
    b.add_node(
        "summarize", make_summarize(toolbox.registry, toolbox.embedding_cache), retry_policy=MODEL_RETRY
    )
    b.add_node("execute_tools", make_execute_tools(toolbox))
    b.add_node("critique", make_critique(toolbox.embedding_cache), retry_policy=MODEL_RETRY)

    b.add_edge(START, "retrieve")
    b.add_conditional_edges("retrieve", route_after_retrieve, ["summarize", END])
    b.add_conditional_edges("summarize", route_after_summarize, ["execute_tools", "critique", END])
    b.add_conditional_edges("execute_tools", route_after_execute_tools, ["summarize", END])
    b.add_conditional_edges("critique", route_after_critique, ["retrieve", END])
    return b


builder = build()
"""The graph with the default toolbox: no database pool, so tools with side effects refuse (tests, Studio)."""
graph = builder.compile(name="agent")


def recursion_limit(max_steps: int) -> int:
    """A recursion limit the step budget always reaches first, so runs end cleanly, never by error."""
    return max_steps + 10
