"""Crons: create (stateless or on a thread), get, update, delete, search and count; workers fire them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Response
from pydantic import Field

from server.auth import CurrentUser, User
from server.crons import store
from server.crons.schedule import RUN_FIELDS, check_schedule, check_timezone, next_fire, run_request
from server.deps import Service
from server.errors import ApiError, not_found, parse_uuid
from server.routes.threads import owned_thread
from server.runs import store as runs_store
from server.schemas import (
    AUTHENTICATED,
    MAX_OFFSET,
    RunConfig,
    RunCreate,
    StreamMode,
    ThreadId,
    _Body,
    errors,
)
from server.serde import jsonable
from server.service import KeelService

CronId = Annotated[str, Path(description="a cron's UUID", json_schema_extra={"format": "uuid"})]

router = APIRouter(tags=["crons"], dependencies=AUTHENTICATED, responses=errors(401, 422))

CRON_FIELDS = (
    "cron_id",
    "assistant_id",
    "thread_id",
    "on_run_completed",
    "end_time",
    "schedule",
    "timezone",
    "created_at",
    "updated_at",
    "user_id",
    "payload",
    "next_run_date",
    "metadata",
    "enabled",
)


class _CronFields(RunCreate):
    schedule: str = Field(
        ..., description="cron expression, five fields, in `timezone`", examples=["*/5 * * * *"]
    )
    timezone: str | None = Field(None, description="IANA timezone of the schedule; null = UTC")
    end_time: datetime | None = Field(None, description="no run is created after this time")
    enabled: bool = True


class CronCreate(_CronFields):
    on_run_completed: Literal["delete", "keep"] = Field(
        "delete", description="delete each run's new thread when the run ends, or keep it"
    )


class ThreadCronCreate(_CronFields):
    pass


class CronPatch(_Body):
    schedule: str | None = None
    timezone: str | None = None
    end_time: datetime | None = None
    input: Any = None
    metadata: dict[str, Any] | None = None
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    webhook: str | None = None
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    on_run_completed: Literal["delete", "keep"] | None = None
    enabled: bool | None = None
    stream_mode: StreamMode | list[StreamMode] | None = None
    stream_subgraphs: bool | None = None
    stream_resumable: bool | None = None
    durability: Literal["sync", "async", "exit"] | None = None


class CronSearch(_Body):
    assistant_id: str | None = None
    thread_id: str | None = None
    enabled: bool | None = None
    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    sort_by: Literal[
        "cron_id", "assistant_id", "thread_id", "next_run_date", "end_time", "created_at", "updated_at"
    ] = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    select: list[str] | None = None


class CronCount(_Body):
    assistant_id: str | None = None
    thread_id: str | None = None
    metadata: dict[str, Any] | None = None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def cron_json(row: dict[str, Any]) -> dict[str, Any]:
    """A keel_crons row as the API's Cron object."""
    return {
        "cron_id": str(row["cron_id"]),
        "assistant_id": str(row["assistant_id"]),
        "thread_id": str(row["thread_id"]) if row["thread_id"] is not None else None,
        "on_run_completed": row["on_run_completed"],
        "end_time": _iso(row["end_time"]),
        "schedule": row["schedule"],
        "timezone": row["timezone"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "user_id": row["user_id"],
        "payload": row["payload"] or {},
        "next_run_date": _iso(row["next_run_at"]),
        "metadata": row["metadata"] or {},
        "enabled": row["enabled"],
    }


async def _assistant(svc: KeelService, user: User, ident: str) -> dict[str, Any]:
    """The assistant a cron runs (a system one or the caller's), or 404 as langgraph-api answers it."""
    found = svc.assistants.find(ident)
    if found is None:
        try:
            found = await svc.assistants.get(user, ident)
        except ApiError:
            raise ApiError(404, f"Assistant '{ident}' not found") from None
    return found


async def _checked_request(
    svc: KeelService, user: User, payload: dict[str, Any], on_completion: str | None
) -> None:
    """Plan the runs the cron will create now, so a request `POST /runs` would refuse is refused here (422)."""
    await svc.planner.aplan(user, run_request(payload, on_completion=on_completion))


async def _create(
    svc: KeelService, user: User, body: _CronFields, thread_id: str | None, on_run_completed: str | None
) -> dict[str, Any]:
    assistant = await _assistant(svc, user, body.assistant_id)
    timezone = check_timezone(body.timezone)
    check_schedule(body.schedule)
    cron_id = str(uuid.uuid4())
    payload: dict[str, Any] = jsonable(body.model_dump(include=set(RUN_FIELDS), exclude_unset=True))
    payload["assistant_id"] = assistant["assistant_id"]
    config = dict(payload.get("config") or {})
    config["configurable"] = {**(config.get("configurable") or {}), "cron_id": cron_id}
    payload["config"] = config
    for key in ("schedule", "timezone", "end_time", "enabled"):  # as langgraph-api keeps them, for clients
        if key in body.model_fields_set:
            payload[key] = jsonable(getattr(body, key))
    if on_run_completed is not None and "on_run_completed" in body.model_fields_set:
        payload["on_run_completed"] = on_run_completed
    await _checked_request(svc, user, payload, on_run_completed)
    async with svc.db.pool.connection() as conn, conn.transaction():
        if thread_id is not None:  # locked: the thread cannot go before the cron that references it commits
            row = await runs_store.fetchone(conn, runs_store.LOCK_THREAD_OWNER, (thread_id,))
            if row is None or row["user_id"] != user.id:
                raise not_found("Thread", thread_id)
        cron = await store.insert_cron(
            conn,
            cron_id=cron_id,
            assistant_id=assistant["assistant_id"],
            thread_id=thread_id,
            user_id=user.id,
            owner={"roles": list(user.roles), "tenant": user.tenant},
            schedule=body.schedule,
            timezone=timezone,
            end_time=body.end_time,
            on_run_completed=on_run_completed,
            enabled=body.enabled,
            payload=payload,
            metadata=jsonable(body.metadata or {}),
            next_run_at=next_fire(body.schedule, timezone, datetime.now(UTC)),
        )
    return cron_json(cron)


@router.post("/runs/crons", responses=errors(400, 404, 413))
async def create_cron(body: CronCreate, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """Schedule runs that each start on a new thread."""
    return await _create(svc, user, body, None, body.on_run_completed)


@router.post("/threads/{thread_id}/runs/crons", responses=errors(400, 404, 413))
async def create_thread_cron(
    thread_id: ThreadId, body: ThreadCronCreate, svc: Service, user: CurrentUser
) -> dict[str, Any]:
    """Schedule runs on one thread."""
    tid = parse_uuid(thread_id, "thread")
    await owned_thread(svc, user, tid)
    return await _create(svc, user, body, tid, None)


@router.post("/runs/crons/search", responses=errors(400, 413))
async def search_crons(
    body: CronSearch, svc: Service, user: CurrentUser, response: Response
) -> list[dict[str, Any]]:
    """The caller's crons, filtered by assistant, thread, enabled and metadata."""
    if body.select:
        invalid = [c for c in body.select if c not in CRON_FIELDS]
        if invalid:
            raise ApiError(422, f"Invalid select columns: {invalid}. Expected: {sorted(CRON_FIELDS)}")
    where, params = _filters(
        svc, user, body.assistant_id, body.thread_id, body.metadata, enabled=body.enabled
    )
    async with svc.db.pool.connection() as conn:
        rows = await store.search(
            conn, where, params, body.sort_by, body.sort_order, body.limit + 1, body.offset
        )
    # Pagination headers as langgraph-api sends them: a further page is announced, not counted.
    if len(rows) > body.limit:
        rows = rows[: body.limit]
        response.headers["x-pagination-total"] = str(body.offset + body.limit + 1)
        response.headers["x-pagination-next"] = str(body.offset + body.limit)
    else:
        response.headers["x-pagination-total"] = str(body.offset + len(rows))
    out = [cron_json(r) for r in rows]
    if body.select:
        out = [{k: c[k] for k in body.select} for c in out]
    return out


@router.post("/runs/crons/count", responses=errors(400, 413))
async def count_crons(body: CronCount, svc: Service, user: CurrentUser) -> int:
    """How many of the caller's crons match (same filters as search)."""
    where, params = _filters(svc, user, body.assistant_id, body.thread_id, body.metadata)
    async with svc.db.pool.connection() as conn:
        return await store.count(conn, where, params)


def _filters(
    svc: KeelService,
    user: User,
    assistant_id: str | None,
    thread_id: str | None,
    metadata: dict[str, Any] | None,
    *,
    enabled: bool | None = None,
) -> tuple[str, list[Any]]:
    return store.filters_sql(
        user.id,
        assistant_id=_assistant_filter(svc, assistant_id) if assistant_id else None,
        thread_id=parse_uuid(thread_id, "thread") if thread_id else None,
        enabled=enabled,
        metadata=jsonable(metadata) if metadata else None,
    )


def _assistant_filter(svc: KeelService, ident: str) -> str:
    """An assistant id, or a graph name as Keel accepts wherever an assistant id goes (langgraph-api: UUIDs only)."""
    found = svc.assistants.find(ident)
    return str(found["assistant_id"]) if found is not None else parse_uuid(ident, "assistant")


@router.get("/runs/crons/{cron_id}", responses=errors(404))
async def get_cron(cron_id: CronId, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """One cron."""
    cid = parse_uuid(cron_id, "cron")
    async with svc.db.pool.connection() as conn:
        row = await store.get_cron(conn, cid)
    if row is None or row["user_id"] != user.id:
        raise ApiError(404, f"Cron '{cid}' not found")
    return cron_json(row)


@router.patch("/runs/crons/{cron_id}", responses=errors(400, 404, 413))
async def patch_cron(cron_id: CronId, body: CronPatch, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """Change a cron's schedule, settings or run payload (fields given are replaced; metadata is merged)."""
    cid = parse_uuid(cron_id, "cron")
    fields = body.model_fields_set
    if not fields:
        raise ApiError(400, "Request body cannot be empty")
    timezone = check_timezone(body.timezone)
    if body.schedule is not None:
        check_schedule(body.schedule)
    async with svc.db.pool.connection() as conn, conn.transaction():
        row = await store.lock_user_cron(conn, cid, user.id)
        if row is None:
            raise ApiError(404, f"Cron '{cid}' not found")
        new = dict(row)
        if body.schedule is not None:
            new["schedule"] = body.schedule
        if timezone is not None:
            new["timezone"] = timezone
        if "end_time" in fields:  # an explicit null clears it
            new["end_time"] = body.end_time
        if body.enabled is not None:
            new["enabled"] = body.enabled
        if body.on_run_completed is not None:
            if row["thread_id"] is not None:
                raise ApiError(
                    422, "on_run_completed: a thread's cron runs on its thread, which is always kept"
                )
            new["on_run_completed"] = body.on_run_completed
        if body.metadata is not None:
            new["metadata"] = {**(row["metadata"] or {}), **jsonable(body.metadata)}
        changed = {k: v for k, v in body.model_dump(include=set(RUN_FIELDS), exclude_unset=True).items()}
        payload = {**(row["payload"] or {}), **jsonable(changed)}
        payload["assistant_id"] = str(row["assistant_id"])
        config = dict(payload.get("config") or {})
        config["configurable"] = {**(config.get("configurable") or {}), "cron_id": cid}
        payload["config"] = config
        for key in ("schedule", "timezone", "end_time", "enabled", "on_run_completed"):
            if key in fields and key not in RUN_FIELDS:
                payload[key] = jsonable(getattr(body, key))
        new["payload"] = payload
        await _checked_request(svc, user, payload, new["on_run_completed"])
        if body.schedule is not None or timezone is not None:
            new["next_run_at"] = next_fire(new["schedule"], new["timezone"], datetime.now(UTC))
        out = await store.update_cron(conn, cid, new)
    return cron_json(out)


@router.delete("/runs/crons/{cron_id}", status_code=204, responses=errors(404))
async def delete_cron(cron_id: CronId, svc: Service, user: CurrentUser) -> Response:
    """Delete a cron (runs it already created are not touched)."""
    cid = parse_uuid(cron_id, "cron")
    async with svc.db.pool.connection() as conn:
        deleted = await store.delete_user_cron(conn, cid, user.id)
    if not deleted:
        raise ApiError(404, f"Cron '{cid}' not found")
    return Response(status_code=204)
