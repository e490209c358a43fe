"""The tools the graph uses, and the services they need (set once per process by the server).

Tools take everything explicitly; this module is the one place the graph finds the registry, the
database pool for the side-effect ledger, and tool settings such as the webhook URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools.builtin import default_registry
from tools.registry import ToolRegistry

_registry: ToolRegistry | None = None


@dataclass
class ToolServices:
    """Process-wide services for tools: None/empty under `langgraph dev` (no Keel database)."""

    pool: Any = None
    settings: dict[str, Any] = field(default_factory=dict)


services = ToolServices()


def registry() -> ToolRegistry:
    """The active registry (the built-in tools, plus the researcher specialist, unless replaced)."""
    global _registry
    if _registry is None:
        reg = default_registry()
        from agent.specialists.researcher import RESEARCHER

        reg.register(RESEARCHER)
        _registry = reg
    return _registry


def set_registry(reg: ToolRegistry | None) -> None:
    """Install a registry (None restores the built-in one)."""
    global _registry
    _registry = reg


def configure(*, pool: Any = None, settings: dict[str, Any] | None = None) -> None:
    """Called by the server at start-up."""
    services.pool = pool
    services.settings = dict(settings or {})
