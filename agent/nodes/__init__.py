"""The agent graph's nodes."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from langgraph.runtime import Runtime

from agent.context import Context
from agent.state import State


class Node(Protocol):
    """A node built by a factory, as LangGraph calls it: the state, and the run's runtime by keyword."""

    def __call__(self, state: State, *, runtime: Runtime[Context]) -> Awaitable[dict[str, Any]]: ...
