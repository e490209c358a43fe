"""Graph state. JSON-ish values only; reducers sit next to their fields."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict


class InputState(TypedDict):
    """What a caller sends."""

    messages: Annotated[list[AnyMessage], add_messages]
    """The conversation; the last human message is this turn's question."""


class OutputState(TypedDict):
    """What a caller gets back."""

    messages: Annotated[list[AnyMessage], add_messages]
    """The conversation, ending with the answer."""
    answer: NotRequired[str]
    """The final answer text of this turn."""
    sources: NotRequired[list[dict[str, Any]]]
    """Passages the answer may cite: index, source, heading, score."""
    status: NotRequired[str]
    """running | done | not_found (the documents do not answer the question) | budget_exhausted:<budget>."""


class Fields(TypedDict, total=False):
    """Every field of the state but `messages`: what a node sets as is (no reducer). Typed on its own so a node
    can hold part of an update, and see the state as it will be (`{**state, **fields}` is a `State`)."""

    answer: str
    """The final answer text of this turn."""
    sources: list[dict[str, Any]]
    """Passages the answer may cite: index, source, heading, score."""
    status: str
    """running | done | not_found (the documents do not answer the question) | budget_exhausted:<budget>."""

    turn_of: str
    """Id of the human message this turn answers; with `question`, how retrieve tells a new message from a
    revision (agent/nodes/retrieve.py)."""
    question: str
    """This turn's question (the text of that human message)."""
    query: str
    """The current retrieval query; the critic may revise it."""
    passages: list[dict[str, Any]]
    """Retrieved passages: index, text, source, heading, score."""
    draft: str
    """The latest draft answer."""
    draft_id: str
    """Message id of the latest draft, so a rejected draft can be removed from `messages`."""
    best_answer: str
    """The best-scoring draft of this turn."""
    best_score: float
    """The critic's score of `best_answer` (-1 before any critique)."""
    critique: dict[str, Any]
    """The last critique: score, reasons, revised_query."""
    revisions: int
    """Quality retries used in this turn."""
    steps: int
    """Node executions used in this turn."""
    tool_calls: int
    """Tool executions used in this turn."""
    phase: str
    """Where the turn is: "answer" after retrieve, "revise" while the critic sends it back, "done" at the end."""
    summary: str
    """Running summary of earlier turns folded out of `messages` (history mode "summarize")."""


class State(InputState, Fields):
    """Everything the nodes read and write: the messages and the fields."""
