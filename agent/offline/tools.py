"""Tool calls: the `/tool` command, bound tool specs, forced tool choice, call ids, reporting tool results,
and default arguments for a forced schema."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent.offline.messages import message_text

TOOL_COMMAND = "/tool"
"""Prefix of the explicit tool-call command in a human message: `/tool NAME {json args}`."""

_FORCING_CHOICES = {"any", "required"}

_NOT_FORCING_CHOICES = {"auto", "none"}

_TOOL_RE = re.compile(r"^\s*/tool(?![\w-])(?:[ \t]+(?P<name>[^\s{]+))?\s*(?P<args>.*)$", re.S)


@dataclass(frozen=True)
class ToolCommand:
    name: str
    args: dict[str, Any] | None
    error: str | None


def parse_tool_command(text: str) -> ToolCommand | None:
    match = _TOOL_RE.match(text)
    if match is None:
        return None
    name, raw = match.group("name") or "", match.group("args").strip()
    usage = (
        f"Write `{TOOL_COMMAND} NAME {{json args}}`, where the arguments are one JSON object, "
        f'e.g. {TOOL_COMMAND} calculator {{"expression": "2 + 2"}}.'
    )
    if not name:
        return ToolCommand("", None, f"The {TOOL_COMMAND} command needs a tool name. {usage}")
    if not raw:
        return ToolCommand(name, {}, None)
    try:
        args = json.loads(raw)
    except json.JSONDecodeError as exc:
        return ToolCommand(
            name, None, f"Could not call '{name}': the arguments are not valid JSON ({exc}). {usage}"
        )
    if not isinstance(args, dict):
        kind = type(args).__name__
        return ToolCommand(
            name, None, f"Could not call '{name}': the arguments must be a JSON object, got {kind}. {usage}"
        )
    return ToolCommand(name, args, None)


def tool_specs(tools: Any) -> list[dict[str, Any]]:
    """Bound tools as OpenAI function specs: [{"name", "description", "parameters"}]."""
    specs = []
    for tool in tools or []:
        converted = convert_to_openai_tool(tool)
        specs.append(converted.get("function", converted))
    return specs


def forced_tool(specs: list[dict[str, Any]], tool_choice: Any) -> dict[str, Any] | None:
    """The tool spec that `tool_choice` forces, or None when the model may answer in text."""
    if tool_choice is None or tool_choice is False or not specs:
        return None
    name: Any = None
    if tool_choice is True:
        return specs[0]
    if isinstance(tool_choice, str):
        if tool_choice in _NOT_FORCING_CHOICES:
            return None
        if tool_choice in _FORCING_CHOICES:
            return specs[0]
        name = tool_choice
    elif isinstance(tool_choice, dict):
        kind = tool_choice.get("type")
        if kind in _NOT_FORCING_CHOICES:
            return None
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if name is None:
            return specs[0]
    for spec in specs:
        if spec.get("name") == name:
            return spec
    raise ValueError(
        f"tool_choice forces tool {name!r}, which is not bound; bound: {[s.get('name') for s in specs]}"
    )


def call_id(name: str, args: dict[str, Any], n_messages: int) -> str:
    digest = hashlib.sha1((name + json.dumps(args, sort_keys=True) + str(n_messages)).encode()).hexdigest()
    return "call_" + digest[:16]


def _tool_result(message: BaseMessage) -> str:
    """The tool's output as text; a one-key JSON object such as {"result": 42} shows just its value."""
    content = message.content
    text = (
        content
        if isinstance(content, str)
        else message_text(message) or json.dumps(content, ensure_ascii=False)
    )
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text.strip()
    if isinstance(value, dict) and len(value) == 1:
        (value,) = value.values()
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.strip()


def summarise_tool_messages(messages: Sequence[BaseMessage], tool_messages: Sequence[BaseMessage]) -> str:
    names = {}
    for message in messages:
        for call in getattr(message, "tool_calls", None) or []:
            names[call.get("id")] = call.get("name")
    lines = []
    for message in tool_messages:
        name = message.name or names.get(getattr(message, "tool_call_id", None)) or "tool"
        result = _tool_result(message)
        verb = "failed" if getattr(message, "status", "success") == "error" else "returned"
        lines.append(f"{name} {verb}: {result}")
    return "\n".join(lines)


def trailing_tool_messages(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for message in reversed(messages):
        if message.type != "tool":
            break
        out.append(message)
    return out[::-1]


def last_tool_run(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    for end in range(len(messages), 0, -1):
        if messages[end - 1].type == "tool":
            return trailing_tool_messages(messages[:end])
    return []


def default_for(schema: dict[str, Any]) -> Any:
    """A value that satisfies simple JSON schemas: the default, else an empty value of the type."""
    if "default" in schema:
        return deepcopy(schema["default"])
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if options:
            if any(o.get("type") == "null" for o in options):
                return None
            return default_for(options[0])
    kind = schema.get("type")
    if isinstance(kind, list):
        if "null" in kind:
            return None
        kind = kind[0] if kind else None
    if kind == "object":
        return {k: default_for(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return []
    if kind == "string":
        return "-" * int(schema.get("minLength", 0))
    if kind in ("number", "integer"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return False
    return None
