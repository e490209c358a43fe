"""External MCP servers as registry entries: their tools get the same policies, ledger and audit.

KEEL_MCP_SERVERS is JSON, one entry per server:
    {"files": {"url": "http://127.0.0.1:9000/mcp", "headers": {"x-api-key": "..."}},
     "local": {"command": "/usr/bin/some-mcp-server", "args": ["--stdio"], "env": {}, "approval": "always"}}
Each tool becomes `<server>_<tool>`. Side effects come from the server's annotations (read-only ->
read, destructive -> write, otherwise external); anything not read-only needs approval unless the
entry says "approval": "never". The idempotency key travels in the call's `_meta`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jsonschema
from pydantic import BaseModel, ConfigDict, model_validator

from tools.registry import SideEffect, ToolContext, ToolRegistry, ToolSpec

if TYPE_CHECKING:
    from mcp import StdioServerParameters
    from mcp.client import Transport
    from mcp_types import RequestParamsMeta, Tool

    Target = Callable[[], Transport | StdioServerParameters | str]
    """How to reach one MCP server, made anew for each connection (a transport is used once)."""


class McpResult(BaseModel):
    content: str
    structured: dict[str, Any] | None = None


def input_model_for(name: str, schema: dict[str, Any]) -> type[BaseModel]:
    """A pydantic model that validates against an MCP tool's JSON Schema and reports that schema."""
    schema = {"type": "object", **(schema or {})}

    class McpInput(BaseModel):
        model_config = ConfigDict(extra="allow")

        @model_validator(mode="before")
        @classmethod
        def _validate(cls, data: Any) -> Any:
            try:
                jsonschema.validate(data, schema)
            except jsonschema.ValidationError as exc:
                raise ValueError(exc.message) from None
            return data

        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return schema

    McpInput.__name__ = McpInput.__qualname__ = re.sub(r"\W", "_", name)
    McpInput.__keel_json_schema__ = schema  # type: ignore[attr-defined]
    return McpInput


def _target(entry: dict[str, Any]) -> Target:
    from mcp import StdioServerParameters

    if entry.get("url"):
        if entry.get("headers"):
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            return lambda: streamable_http_client(
                entry["url"],
                http_client=httpx2.AsyncClient(headers=entry["headers"], timeout=entry.get("timeout", 60)),
            )
        return lambda: entry["url"]
    params = StdioServerParameters(
        command=entry["command"],
        args=list(entry.get("args") or []),
        env=entry.get("env") or None,
        cwd=entry.get("cwd"),
    )
    return lambda: params


async def load_mcp_tools(servers: dict[str, dict[str, Any]]) -> list[ToolSpec]:
    """Connect to each configured server once, list its tools, and declare them as ToolSpecs."""
    from mcp import Client

    specs: list[ToolSpec] = []
    for server, entry in servers.items():
        target = _target(entry)
        async with Client(target(), read_timeout_seconds=entry.get("timeout", 60)) as c:
            tools = (await c.list_tools()).tools
        for t in tools:
            specs.append(_spec(server, entry, target, t))
    return specs


def _spec(server: str, entry: dict[str, Any], target: Target, tool: Tool) -> ToolSpec:
    from mcp import Client

    name = re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}_{tool.name}")[:64]
    ann = tool.annotations
    side: SideEffect = (
        "read" if ann and ann.read_only_hint else ("write" if ann and ann.destructive_hint else "external")
    )
    approval = entry.get("approval", "auto")
    needs = approval == "always" or (approval == "auto" and side != "read")

    async def call(args: BaseModel, ctx: ToolContext) -> McpResult:
        meta: RequestParamsMeta | None = None
        if ctx.idempotency_key:
            # RequestParamsMeta is an open map (PEP 728 extra_items=Any), which mypy does not support yet.
            meta = {}
            meta["idempotency_key"] = ctx.idempotency_key  # type: ignore[typeddict-unknown-key]
        async with Client(target(), read_timeout_seconds=entry.get("timeout", 60)) as c:
            r = await c.call_tool(tool.name, args.model_dump(), meta=meta)
        text = "\n".join(getattr(b, "text", "") for b in r.content if getattr(b, "text", None))
        if r.is_error:
            raise RuntimeError(text or f"{tool.name} failed on MCP server {server!r}")
        structured = r.structured_content if isinstance(r.structured_content, dict) else None
        return McpResult(content=text, structured=structured)

    return ToolSpec(
        name=name,
        version=f"mcp:{server}",
        description=tool.description or tool.name,
        input_model=input_model_for(name, dict(tool.input_schema)),
        output_model=McpResult,
        func=call,
        side_effect=side,
        needs_approval=needs,
        timeout_s=float(entry.get("timeout", 60)),
        mcp=False,
    )


def register_all(registry: ToolRegistry, specs: list[ToolSpec]) -> None:
    for s in specs:
        if registry.get(s.name) is None:
            registry.register(s)
