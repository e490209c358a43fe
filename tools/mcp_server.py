"""The tool registry as an MCP server (official `mcp` SDK 2.x, low-level Server).

Stack choice: mcp==2.3.0 alone. Keel implements both ends itself on the low-level API, so it needs
neither langchain-mcp-adapters (pinned to mcp<2) nor fastmcp; tool schemas come from the same
ToolSpecs the model is bound to, and every call goes through the same policy, ledger and audit path.

Approval-gated tools are refused over MCP (there is no human in the loop of an MCP call) unless the
server is built with `allow_approval=True` (KEEL_MCP_APPROVAL=true): then the MCP caller's request
counts as the approval, and the audit trail records it as such.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from tools.execute import execute_tool_call
from tools.registry import ToolContext, ToolRegistry, ToolSpec


def tool_definition(spec: ToolSpec) -> types.Tool:
    """An MCP Tool from a ToolSpec (same JSON Schemas as the model binding)."""
    return types.Tool(
        name=spec.name,
        description=f"{spec.description} (v{spec.version}; side effects: {spec.side_effect}"
        f"{'; needs approval' if spec.needs_approval else ''})",
        input_schema=spec.input_model.model_json_schema(),
        output_schema=spec.output_model.model_json_schema(),
        annotations=types.ToolAnnotations(
            title=spec.name,
            read_only_hint=spec.side_effect in ("none", "read"),
            destructive_hint=spec.side_effect == "write",
            idempotent_hint=spec.has_effects,
            open_world_hint=spec.side_effect == "external",
        ),
    )


def build_mcp_server(
    registry: ToolRegistry | Callable[[], ToolRegistry],
    context_for: Callable[[Any], ToolContext],
    *,
    allow_approval: bool = False,
    name: str = "keel",
) -> Server:
    """An MCP server over `registry` (or the registry a function returns at each request, for a server built
    before its registry); `context_for(request)` authenticates (raise PermissionError to refuse)."""

    def current() -> ToolRegistry:
        return registry if isinstance(registry, ToolRegistry) else registry()

    def offered() -> list[ToolSpec]:
        return [s for s in current().select(None) if s.mcp]

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        context_for(getattr(ctx, "request", None))  # authenticate: an unknown caller sees no tools
        return types.ListToolsResult(tools=[tool_definition(s) for s in offered()])

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        reg = current()
        spec = reg.get(params.name)
        if spec is None or not spec.mcp:
            return _error(f"unknown tool {params.name!r}")
        try:
            tctx = context_for(getattr(ctx, "request", None))
        except PermissionError as exc:
            return _error(str(exc))
        raw = getattr(params, "meta", None)
        meta = raw if isinstance(raw, dict) else (raw.model_dump() if raw is not None else {})
        # The caller may pass its own idempotency key (retries of one logical call then dedupe).
        call_id = str(meta.get("idempotency_key") or meta.get("idempotencyKey") or f"mcp-{uuid.uuid4()}")
        call = {"name": params.name, "args": params.arguments or {}, "id": call_id}
        result = await execute_tool_call(
            reg,
            call,
            tctx,
            caller_approves=allow_approval,
            refusal=(
                f"Error: {params.name} needs a human's approval; MCP calls cannot give it "
                "(set KEEL_MCP_APPROVAL=true to let MCP callers approve their own calls)."
            ),
        )
        structured = result.output if isinstance(result.output, dict) else None
        return types.CallToolResult(
            content=[types.TextContent(text=result.content)],
            structured_content=structured,
            is_error=result.status == "error",
        )

    return Server(name, version="1", on_list_tools=on_list_tools, on_call_tool=on_call_tool)


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=f"Error: {text}")], is_error=True)
