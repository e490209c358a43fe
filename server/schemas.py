"""Request bodies of the LangGraph Server API (validated; unknown extra fields are ignored), and what the
OpenAPI document says about every route: the error body, the 4xx codes, id formats and the API-key schemes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Path, Security
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from server.auth import current_user
from server.errors import check_input
from server.serde import MAX_INT

MAX_OFFSET = MAX_INT
"""Largest page offset (a Postgres bigint)."""

MAX_TTL_MINUTES = 60 * 24 * 366 * 100
"""Longest TTL a thread or store item may ask for: a hundred years, in minutes."""


class ErrorBody(BaseModel):
    """Every error response: a status code and one human-readable sentence."""

    detail: str


_ERRORS = {
    400: "Malformed JSON body",
    401: "Missing or invalid API key (only when API keys are configured)",
    403: "The caller's role may not do this",
    404: "Not found (another user's thread, run or item is indistinguishable from a missing one)",
    409: "Conflict with the resource's current state",
    413: "Request body too large (KEEL_MAX_BODY_BYTES)",
    422: "Invalid request; the detail names the field",
    503: "The database is unavailable for the moment (e.g. Postgres restarting); retry after Retry-After seconds",
}


def errors(*codes: int, stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these status codes, all with the `{"detail": str}` body.

    With `stream`, for routes whose 200 is text/event-stream: spelled out as application/json, since FastAPI
    would file a `model` under the route's media type.
    """
    codes = (*codes, 503)  # any route that touches Postgres
    if stream:
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        return {code: {"description": _ERRORS[code], "content": body} for code in codes}
    return {code: {"model": ErrorBody, "description": _ERRORS[code]} for code in codes}


SSE_EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events: `event` is the stream mode (metadata, values, updates, ..., error, end), "
        "`data` one JSON value, `id` the event's sequence number when the run is resumable.",
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "properties": {
                        "event": {"type": "string"},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                        "id": {"type": "string"},
                    },
                }
            }
        },
    }
}


API_KEY = APIKeyHeader(
    name="x-api-key",
    scheme_name="ApiKey",
    auto_error=False,
    description="An API key from KEEL_API_KEYS (not needed when none are configured).",
)
BEARER = HTTPBearer(
    scheme_name="Bearer",
    auto_error=False,
    description="`Authorization: Bearer <key>`, the same keys as x-api-key.",
)


async def _api_key_schemes(
    _bearer: Annotated[Any, Security(BEARER)], _key: Annotated[Any, Security(API_KEY)]
) -> None:
    """Declares the two ways to send a key in the OpenAPI document; `current_user` does the checking."""


AUTHENTICATED = [Depends(_api_key_schemes), Depends(current_user), Depends(check_input)]
"""Router dependencies, in order: who is calling (401), then the input rule (422), before any handler."""
PUBLIC = [Depends(check_input)]

ThreadId = Annotated[str, Path(description="a thread's UUID", json_schema_extra={"format": "uuid"})]
RunId = Annotated[str, Path(description="a run's UUID", json_schema_extra={"format": "uuid"})]

StreamMode = Literal[
    "values",
    "updates",
    "messages",
    "messages-tuple",
    "custom",
    "events",
    "tasks",
    "checkpoints",
    "debug",
    "tools",
    "lifecycle",
]


def _values_mode() -> list[StreamMode]:
    """A run's stream_mode when the request gives none."""
    return ["values"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _checkpoint_ref(value: dict[str, Any]) -> dict[str, Any]:
    for key in ("checkpoint_id", "checkpoint_ns"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise ValueError(f"{key} must be a string")
    return value


def _run_config(value: dict[str, Any]) -> dict[str, Any]:
    shapes = {"configurable": dict, "metadata": dict, "tags": list}
    for key, kind in shapes.items():
        if value.get(key) is not None and not isinstance(value[key], kind):
            raise ValueError(f"{key} must be {'an object' if kind is dict else 'a list'}")
    if not all(isinstance(t, str) for t in value.get("tags") or ()):
        raise ValueError("tags must be strings")
    return value  # recursion_limit: checked against this server's ceiling when the run is created


CheckpointRef = Annotated[dict[str, Any], AfterValidator(_checkpoint_ref)]
"""A checkpoint as the API sends it: {"checkpoint_id": str, "checkpoint_ns": str, ...}."""
RunConfig = Annotated[dict[str, Any], AfterValidator(_run_config)]
"""LangGraph config: configurable (object), tags (strings), metadata (object), recursion_limit."""


def unsupported(value: Any, what: str, why: str) -> None:
    """Refuse a field this server accepts in the schema (for the SDKs) but cannot honour: never ignore it."""
    if value not in (None, [], {}, 0, 0.0):
        raise ValueError(f"{what} is not supported by this server: {why}")


class AssistantSearch(_Body):
    metadata: dict[str, Any] | None = None
    graph_id: str | None = None
    name: str | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None


TTLMinutes = Annotated[float, Field(gt=0, le=MAX_TTL_MINUTES, strict=True)]


class ThreadTTL(_Body):
    ttl: TTLMinutes
    strategy: Literal["delete"] = "delete"


class _WithTTL(_Body):
    ttl: ThreadTTL | TTLMinutes | None = Field(None, description="minutes until the thread is deleted")

    @field_validator("ttl", mode="wrap")
    @classmethod
    def _one_message(cls, value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(
                f"ttl must be a number of minutes above 0 and at most {MAX_TTL_MINUTES}, or "
                f'{{"ttl": minutes, "strategy": "delete"}}'
            ) from None

    def ttl_minutes(self) -> float | None:
        return self.ttl.ttl if isinstance(self.ttl, ThreadTTL) else self.ttl


class ThreadCreate(_WithTTL):
    thread_id: str | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    supersteps: list[dict[str, Any]] | None = None

    @field_validator("supersteps")
    @classmethod
    def _no_supersteps(cls, value: Any) -> Any:
        unsupported(
            value, "supersteps", "create the thread, then apply updates with POST /threads/{id}/state"
        )
        return value


class ThreadPatch(_WithTTL):
    metadata: dict[str, Any] | None = None


class ThreadSearch(_Body):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    ids: list[str] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    sort_by: Literal["thread_id", "status", "created_at", "updated_at", "state_updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None
    extract: dict[str, Any] | None = None

    @field_validator("extract")
    @classmethod
    def _no_extract(cls, value: Any) -> Any:
        unsupported(value, "extract", "use select, and read values from each thread")
        return value


class HistoryQuery(_Body):
    limit: int = Field(10, ge=1, le=1000)
    before: str | dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: CheckpointRef | None = None
    select: list[str] | None = None


class CheckpointQuery(_Body):
    checkpoint: CheckpointRef
    subgraphs: bool = False
    select: list[str] | None = None


class StateUpdate(_Body):
    values: dict[str, Any] | list[Any] | None = None
    as_node: str | None = None
    checkpoint: CheckpointRef | None = None
    checkpoint_id: str | None = None


def _send(value: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(value.get("node"), str):
        raise ValueError('a Send is {"node": str, "input": ...}')
    return value


SendIn = Annotated[dict[str, Any], AfterValidator(_send)]


# A [channel, value] pair. Documented without `prefixItems`: schemathesis (the fuzz suite) turns prefixItems of
# an array-rooted body (/runs/batch) into a draft-4 tuple that its 2020-12 validator refuses. Pydantic still
# checks the pair's types.
ChannelValue = Annotated[
    tuple[str, Any],
    WithJsonSchema({"type": "array", "minItems": 2, "maxItems": 2, "description": "[channel, value]"}),
]


class CommandIn(_Body):
    resume: Any = None
    update: dict[str, Any] | list[ChannelValue] | None = Field(
        None, description="values to write: an object, or a list of [channel, value] pairs"
    )
    goto: str | SendIn | list[str | SendIn] | None = None


class RunCreate(_Body):
    assistant_id: str = Field(..., description="a graph name or an assistant id", examples=["agent"])
    input: dict[str, Any] | list[Any] | str | int | float | bool | None = Field(
        None, examples=[{"messages": [{"role": "user", "content": "How do workers scale out?"}]}]
    )
    command: CommandIn | None = None
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    stream_mode: StreamMode | list[StreamMode] = Field(default_factory=_values_mode)
    stream_subgraphs: bool = False
    stream_resumable: bool = False
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    checkpoint: CheckpointRef | None = None
    checkpoint_id: str | None = None
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] = "enqueue"
    if_not_exists: Literal["reject", "create"] = "reject"
    on_disconnect: Literal["cancel", "continue"] = "continue"
    on_completion: Literal["delete", "keep"] = "delete"
    durability: Literal["sync", "async", "exit"] | None = None
    after_seconds: float | None = None
    webhook: str | None = None
    feedback_keys: list[str] | None = None

    @field_validator("after_seconds")
    @classmethod
    def _no_delay(cls, value: Any) -> Any:
        unsupported(value, "after_seconds", "runs start as soon as a worker is free")
        return value

    @field_validator("webhook")
    @classmethod
    def _no_webhook(cls, value: Any) -> Any:
        unsupported(value, "webhook", "join the run, or stream it, to learn when it ends")
        return value

    @field_validator("feedback_keys")
    @classmethod
    def _no_feedback_keys(cls, value: Any) -> Any:
        unsupported(value, "feedback_keys", "LangSmith feedback tokens are not issued")
        return value

    record_modes: list[StreamMode] | None = None
    """Modes the event log records besides `stream_mode` (set by the server for background runs)."""

    def modes(self) -> list[str]:
        """Requested stream modes as a de-duplicated list."""
        raw = [self.stream_mode] if isinstance(self.stream_mode, str) else list(self.stream_mode)
        return list(dict.fromkeys(raw)) or ["values"]
