"""Tools as data: one declaration per tool feeds the model binding, execution, MCP and `keel tools list`.

A tool is a `ToolSpec`: name, version, typed input/output, side-effect class, approval rule, roles,
timeout, retry policy, and optionally a compensator (undo, for sagas) and a reconcile function (did an
interrupted call take effect?). The registry is the single source of truth, so the model, the runtime
and MCP clients cannot see different tools.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from langchain_core.tools import StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from tools.policy import UserAttrs
from tools.transient import is_transient

SideEffect = Literal["none", "read", "write", "external"]


@dataclass
class ToolContext:
    """What a tool may use while it runs; passed explicitly, never read from globals."""

    user: UserAttrs
    namespace: str
    store: Any = None
    thread_id: str | None = None
    run_id: str | None = None
    idempotency_key: str | None = None
    pool: Any = None
    conn: Any = None  # set for transactional tools: their writes commit with the ledger entry
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def user_id(self) -> str:
        return self.user.user_id


class TransientToolError(Exception):
    """Raise from a tool for a failure worth retrying (rate limit, 5xx, network)."""


@dataclass(frozen=True)
class ToolRetry:
    """Retries of one call (same idempotency key) for transient errors."""

    max_attempts: int = 1
    initial_s: float = 0.2
    backoff: float = 2.0
    retry_on: Callable[[BaseException], bool] = is_transient


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
    needs_approval: bool | Callable[[Any, UserAttrs], bool] = False
    allowed_roles: frozenset[str] | None = None
    allowed_tenants: frozenset[str] | None = None
    timeout_s: float = 30.0
    retry: ToolRetry = field(default_factory=ToolRetry)
    compensator: Callable[[Any, Any, ToolContext], Awaitable[None]] | None = None
    reconcile: Callable[[Any, ToolContext], Awaitable[Any | None]] | None = None
    transactional: bool = False
    """The tool writes only through `ctx.conn`, inside the ledger's transaction: exactly once."""
    mcp: bool = True
    """Offered to MCP clients."""

    @property
    def has_effects(self) -> bool:
        return self.side_effect in ("write", "external")

    def schema(self) -> dict[str, Any]:
        """The public contract of this tool version (exported, and pinned by a test)."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "side_effect": self.side_effect,
            "needs_approval": bool(self.needs_approval),
            "input_schema": self.input_model.model_json_schema(),
            "output_schema": self.output_model.model_json_schema(),
        }

    def model_tool(self) -> dict[str, Any]:
        """The tool as a chat model is bound to it: the OpenAI tool format, which every LangChain chat model's
        `bind_tools` accepts. Built once per spec (deriving it creates a pydantic model and its JSON Schema,
        about 0.6 ms a tool) and copied on each call, so a provider that edits what it is given changes nothing."""
        return copy.deepcopy(self._model_tool)

    @cached_property
    def _model_tool(self) -> dict[str, Any]:
        return convert_to_openai_tool(self.as_langchain_tool())

    def as_langchain_tool(self) -> StructuredTool:
        """The schema the model is bound to (execution goes through tools.execute, not this object)."""

        async def _unbound(**kwargs: Any) -> Any:  # pragma: no cover - never called by the graph
            raise RuntimeError("tools run through tools.execute, not through the LangChain tool object")

        # Tools imported from MCP servers carry their JSON Schema as is (no pydantic fields to derive it from).
        schema = getattr(self.input_model, "__keel_json_schema__", None) or self.input_model
        return StructuredTool.from_function(
            coroutine=_unbound,
            name=self.name,
            description=self.description,
            args_schema=schema,
            metadata={"version": self.version, "side_effect": self.side_effect},
        )


def args_hash(args: Any) -> str:
    """A stable hash of validated arguments (audit rows record it instead of the arguments)."""
    data = args.model_dump(mode="json") if isinstance(args, BaseModel) else args
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


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

    def schemas(self) -> dict[str, Any]:
        """Every tool's public contract, by name."""
        return {name: spec.schema() for name, spec in self._specs.items()}
