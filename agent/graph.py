"""The agent graph, read top to bottom like a table of contents.

START -> retrieve -> summarize --(tool calls)--> execute_tools -> summarize
                        +--(draft)--> critique --(score < threshold, revisions left)--> retrieve
                                         +--(pass or budget exhausted)--> END

`graph` is compiled without a checkpointer or store (what `langgraph dev` / Studio expect); the server
compiles the same `builder` with the Postgres saver and store.
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from agent.context import Context
from agent.nodes.critique import critique
from agent.nodes.execute_tools import execute_tools
from agent.nodes.retrieve import retrieve
from agent.nodes.summarize import summarize
from agent.retry import MODEL_RETRY, STORE_RETRY
from agent.routing import (
    route_after_critique,
    route_after_execute_tools,
    route_after_retrieve,
    route_after_summarize,
)
from agent.state import InputState, OutputState, State

builder = StateGraph(State, context_schema=Context, input_schema=InputState, output_schema=OutputState)
builder.add_node("retrieve", retrieve, retry_policy=STORE_RETRY)
builder.add_node("summarize", summarize, retry_policy=MODEL_RETRY)
builder.add_node("execute_tools", execute_tools)
builder.add_node("critique", critique, retry_policy=MODEL_RETRY)

builder.add_edge(START, "retrieve")
builder.add_conditional_edges("retrieve", route_after_retrieve, ["summarize", END])
builder.add_conditional_edges("summarize", route_after_summarize, ["execute_tools", "critique", END])
builder.add_conditional_edges("execute_tools", route_after_execute_tools, ["summarize", END])
builder.add_conditional_edges("critique", route_after_critique, ["retrieve", END])

graph = builder.compile(name="agent")


def recursion_limit(max_steps: int) -> int:
    """A recursion limit the step budget always reaches first, so runs end cleanly, never by error."""
    return max_steps + 10
