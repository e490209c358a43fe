"""Pure routing functions: they read state only."""

from __future__ import annotations

from typing import Final, Literal

from langchain_core.messages import AIMessage

from agent.state import State

END: Final = "__end__"
"""langgraph's END, as the literal the routes' return types name (langgraph types its constant as a plain str)."""


def _stopped(state: State) -> bool:
    return state.get("status", "running") != "running"


def route_after_retrieve(state: State) -> Literal["summarize", "__end__"]:
    """Go on to the answer unless a budget already ended the turn."""
    return END if _stopped(state) else "summarize"


def route_after_summarize(state: State) -> Literal["execute_tools", "critique", "__end__"]:
    """Tool calls go to execute_tools; a draft goes to the critic."""
    if _stopped(state):
        return END
    last = state["messages"][-1] if state.get("messages") else None
    if isinstance(last, AIMessage) and last.tool_calls:
        return "execute_tools"
    return "critique"


def route_after_execute_tools(state: State) -> Literal["summarize", "__end__"]:
    """Back to the model with the tool results, unless a budget ran out."""
    return END if _stopped(state) else "summarize"


def route_after_critique(state: State) -> Literal["retrieve", "__end__"]:
    """Revise (retrieve again with the critic's query) or finish."""
    return "retrieve" if state.get("phase") == "revise" and not _stopped(state) else END
