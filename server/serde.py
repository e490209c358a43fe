"""JSON on the wire: LangChain messages, interrupts, UUIDs and datetimes, as langgraph-api sends them."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import orjson
from pydantic import BaseModel


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "node") and hasattr(obj, "arg") and type(obj).__name__ == "Send":
        return {"node": obj.node, "args": obj.arg}
    if isinstance(obj, BaseException):
        return {"error": type(obj).__name__, "message": str(obj)}
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    return repr(obj)


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes for anything a graph may hold."""
    return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def jsonable(obj: Any) -> Any:
    """The same value as plain JSON types (for JSONB columns and JSONResponse)."""
    return orjson.loads(dumps(obj))


# ------------------------------------------------------------------------------------------- input rules

MAX_DEPTH = 64
"""Deepest JSON nesting a request may carry (orjson and the checkpoint serializer stop at 255, and the
server wraps request values in a few levels of its own)."""

MIN_INT, MAX_INT = -(2**63), 2**63 - 1
"""Integers a request may carry: what orjson writes and a Postgres bigint holds."""

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE = "contains a NUL character or an unpaired surrogate, which Postgres cannot store"


def _label(key: Any) -> str:
    text = key if isinstance(key, str) else str(key)
    text = ascii(text)[1:-1] if _UNSTORABLE.search(text) else text
    return text if len(text) <= 64 else text[:61] + "..."


def _join(path: str, key: Any) -> str:
    return f"{path}.{_label(key)}" if path else _label(key)


def _at(path: str) -> str:
    return (path if len(path) <= 200 else "..." + path[-197:]) or "body"


def unstorable(value: Any, path: str = "") -> str | None:
    """Why `value` (parsed JSON) cannot be stored, as "<field path>: <reason>"; None when it can.

    Postgres text and jsonb refuse NUL and unpaired surrogates (Python's JSON parser turns "\\ud800" into
    one), orjson refuses integers beyond 64 bits and nesting past 255 levels, and jsonb has no NaN or
    Infinity. Checked at the edge, so nothing is half-written before the error.
    """
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return f"{_at(where)}: {UNSTORABLE}"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                return f"{_at(where)}: integer out of range (-2^63 to 2^63-1)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{_at(where)}: number out of range (NaN and Infinity cannot be stored)"
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                return f"{_at(where)}: nested deeper than {MAX_DEPTH} levels"
            if isinstance(item, dict):
                for k in item:
                    if isinstance(k, str) and _UNSTORABLE.search(k):
                        return f"{_at(_join(where, k))}: this key {UNSTORABLE}"
                pairs = list(item.items())
            else:
                pairs = list(enumerate(item))
            # Reversed onto the stack, so the first offending field in document order is the one named.
            stack.extend((v, _join(where, k), depth + 1) for k, v in reversed(pairs))
    return None
