"""A one-node graph whose state cannot be described as JSON Schema (a callable field).

Used through `KEEL_GRAPH=tests.support.broken_schema_graph:builder`: runs and threads work, but
GET /assistants/{id}/schemas fails inside the server (pydantic refuses to render the schema), which is how
the tests get a genuine unexpected error out of a real `keel serve` without touching its database.
"""

from __future__ import annotations

from collections.abc import Callable

from langgraph.graph import START, StateGraph
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    text: str
    """What the caller sent."""
    hook: Callable[[], None]
    """Not representable in JSON Schema: the schema endpoint raises PydanticInvalidForJsonSchema."""


def echo(state: State) -> dict:
    return {"text": state.get("text", "")}


builder = StateGraph(State)
builder.add_node("echo", echo)
builder.add_edge(START, "echo")
