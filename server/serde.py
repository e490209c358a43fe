"""JSON on the wire: LangChain messages, interrupts, UUIDs and datetimes, as langgraph-api sends them."""

from __future__ import annotations

import dataclasses
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
        return {"node": obj.node, "input": obj.arg}
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
