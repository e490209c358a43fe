"""Run one tool call: validate arguments, enforce the timeout, turn every failure into a result."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from tools.registry import ToolContext, ToolRegistry


@dataclass
class ToolResult:
    """The outcome of one call, ready to become a ToolMessage."""

    tool_call_id: str
    name: str
    version: str | None
    status: str  # "success" | "error"
    content: str
    output: Any = None


def _render(output: Any) -> tuple[str, Any]:
    if isinstance(output, BaseModel):
        data = output.model_dump(mode="json")
    else:
        data = output
    if isinstance(data, dict) and set(data) == {"result"}:
        return str(data["result"]), data
    return json.dumps(data, ensure_ascii=False, default=str), data


async def execute_tool_call(registry: ToolRegistry, call: dict[str, Any], ctx: ToolContext,
                            allowed: set[str] | None = None) -> ToolResult:
    """Execute a model's tool call; errors come back as results the model can read, never as crashes."""
    name, call_id = call.get("name", ""), call.get("id") or ""
    spec = registry.get(name)
    if spec is None or (allowed is not None and name not in allowed):
        return ToolResult(call_id, name, None, "error", f"Error: unknown tool {name!r}.")
    try:
        args = spec.input_model.model_validate(call.get("args") or {})
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors())
        return ToolResult(call_id, name, spec.version, "error", f"Error: invalid arguments for {name}: {errs}")
    try:
        output = await asyncio.wait_for(spec.func(args, ctx), timeout=spec.timeout_s)
    except TimeoutError:
        return ToolResult(call_id, name, spec.version, "error", f"Error: {name} timed out after {spec.timeout_s:g}s")
    except Exception as exc:  # noqa: BLE001 - the model sees the error and can recover
        return ToolResult(call_id, name, spec.version, "error", f"Error: {name} failed: {exc}")
    content, data = _render(output)
    return ToolResult(call_id, name, spec.version, "success", content, data)
