"""The tool registry the graph uses. One per process; applications may install their own."""

from __future__ import annotations

from tools.builtin import default_registry
from tools.registry import ToolRegistry

_registry: ToolRegistry | None = None


def registry() -> ToolRegistry:
    """The active registry (the built-in tools unless replaced)."""
    global _registry
    if _registry is None:
        _registry = default_registry()
    return _registry


def set_registry(reg: ToolRegistry | None) -> None:
    """Install a registry (None restores the built-in one)."""
    global _registry
    _registry = reg
