"""Tools as data: one declaration per tool feeds the model binding, execution and (later) MCP.

A tool is a `ToolSpec`: name, version, typed input/output, side-effect class, approval rule, timeout and
the async function that does the work. The registry is the single source of truth.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.tools import StructuredTool
from pydantic import BaseModel

SideEffect = Literal["none", "read", "write", "external"]


@dataclass
class ToolContext:
    """What a tool may use while it runs; passed explicitly, never read from globals."""

    user_id: str
    namespace: str
    store: Any = None
    thread_id: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """One tool, declared once."""

    name: str
    version: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    func: Callable[[Any, ToolContext], Awaitable[Any]]
    side_effect: SideEffect = "none"
    needs_approval: bool = False
    timeout_s: float = 30.0
    tags: tuple[str, ...] = field(default_factory=tuple)

    def as_langchain_tool(self) -> StructuredTool:
        """The schema the model is bound to (execution goes through `execute`, not this object)."""

        async def _unbound(**kwargs: Any) -> Any:  # pragma: no cover - never called by the graph
            raise RuntimeError("tools run through tools.execute, not through the LangChain tool object")

        return StructuredTool.from_function(
            coroutine=_unbound, name=self.name, description=self.description, args_schema=self.input_model,
            metadata={"version": self.version, "side_effect": self.side_effect},
        )


class ToolRegistry:
    """An ordered set of tool specs, looked up by name."""

    def __init__(self, specs: Iterable[ToolSpec] = ()) -> None:
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ToolSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"tool {spec.name!r} is already registered")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return list(self._specs)

    def select(self, allow: Iterable[str] | None) -> list[ToolSpec]:
        """Specs in registration order, limited to `allow` when given."""
        if allow is None:
            return list(self._specs.values())
        allowed = set(allow)
        return [s for s in self._specs.values() if s.name in allowed]
