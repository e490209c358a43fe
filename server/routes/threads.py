"""Threads: create, read, search, update, delete; state and history from the checkpointer."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
from fastapi import APIRouter, Query, Response
from langchain_core.runnables import RunnableConfig
from psycopg.types.json import Jsonb
from pydantic import Field

from server.auth import CurrentUser, User
from server.db import Connection, retry_transient
from server.deps import Service
from server.errors import ApiError, not_found, parse_uuid
from server.retention import delete_thread_everywhere, trim_checkpoints
from server.runs import store
from server.runs.store import ACTIVE, ThreadStatus
from server.schemas import (
    AUTHENTICATED,
    CheckpointQuery,
    HistoryQuery,
    StateUpdate,
    ThreadCreate,
    ThreadId,
    ThreadPatch,
    ThreadSearch,
    _Body,
    errors,
)
from server.serde import jsonable
from server.service import KeelService
from server.threadstate import snapshot_json

router = APIRouter(
    prefix="/threads", tags=["threads"], dependencies=AUTHENTICATED, responses=errors(401, 422)
)

THREAD_COLUMNS = store.THREAD_COLUMNS


def thread_json(row: dict[str, Any]) -> dict[str, Any]:
    """A keel_threads row as the API's Thread object."""
    return {
        "thread_id": str(row["thread_id"]),
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "state_updated_at": row["state_updated_at"].isoformat(),
        "metadata": row["metadata"] or {},
        "status": row["status"],
        "config": row["config"] or {},
        "values": row["values"],
        "interrupts": row["interrupts"] or {},
        "error": row["error"],
    }


async def owned_thread(svc: KeelService, user: User, thread_id: str) -> dict[str, Any]:
    """The caller's thread, or 404 (another user's thread is indistinguishable from a missing one)."""
    tid = parse_uuid(thread_id, "thread")
    async with svc.db.pool.connection() as conn:
        row = await store.get_thread(conn, tid)
    if row is None or row["user_id"] != user.id:
        raise not_found("Thread", tid)
    return row


def thread_config(thread_id: str, checkpoint: dict[str, Any] | None = None) -> RunnableConfig:
    configurable: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint and checkpoint.get("checkpoint_id"):
        configurable["checkpoint_id"] = checkpoint["checkpoint_id"]
        configurable["checkpoint_ns"] = checkpoint.get("checkpoint_ns") or ""
    return {"configurable": configurable}


@router.post("", responses=errors(400, 409, 413))
async def create(body: ThreadCreate, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """Create a thread (409 if the id exists, unless if_exists=do_nothing)."""
    tid = parse_uuid(body.thread_id, "thread") if body.thread_id else str(uuid.uuid4())
    metadata = jsonable(body.metadata or {})
    ttl_minutes = body.ttl_minutes()

    async def insert(attempt: int) -> tuple[dict[str, Any] | None, bool]:
        async with svc.db.pool.connection() as conn:
            row = await store.fetchone(
                conn, store.INSERT_THREAD_WITH_TTL, (tid, user.id, Jsonb(metadata), ttl_minutes, ttl_minutes)
            )
            return row, attempt > 0

    if body.thread_id and body.if_exists == "raise":
        row, retried = await insert(0)  # a repeat could not tell our own insert from a conflict: 503 instead
    else:  # an id chosen here, or do_nothing: a repeat after a lost connection is harmless
        row, retried = await retry_transient(insert)
    if row is None:
        if body.if_exists == "do_nothing" or retried:
            return thread_json(await owned_thread(svc, user, tid))
        raise ApiError(409, f"Thread with ID {tid} already exists")
    return thread_json(row)


def _filters(body: ThreadSearch, user: User) -> tuple[str, list[Any]]:
    """WHERE clause and parameters for the caller's threads matching metadata, values, ids and status."""
    where: list[str] = ["user_id = %s"]
    params: list[Any] = [user.id]
    if body.metadata:
        where.append("metadata @> %s")
        params.append(Jsonb(jsonable(body.metadata)))
    if body.values:
        where.append('"values" @> %s')
        params.append(Jsonb(jsonable(body.values)))
    if body.ids:
        where.append("thread_id = ANY(%s)")
        params.append([parse_uuid(i, "thread") for i in body.ids])
    if body.status:
        where.append("status = %s")
        params.append(body.status)
    return " AND ".join(where), params


async def _count(conn: Connection, sql_where: str, params: list[Any]) -> int:
    row = await store.fetchone(conn, store.count_threads_sql(sql_where), params)
    assert row is not None  # count(*) always returns one row
    n: int = row["n"]
    return n


@router.post("/search", responses=errors(400, 413))
async def search(
    body: ThreadSearch, svc: Service, user: CurrentUser, response: Response
) -> list[dict[str, Any]]:
    """The caller's threads filtered by metadata, values, ids and status."""
    sql_where, params = _filters(body, user)
    order = f"{body.sort_by or 'updated_at'} {(body.sort_order or 'desc').upper()}"
    async with svc.db.pool.connection() as conn:
        total = await _count(conn, sql_where, params)
        rows = await store.fetchall(
            conn, store.search_threads_sql(sql_where, order), [*params, body.limit, body.offset]
        )
    response.headers["x-pagination-total"] = str(total)
    out = [thread_json(r) for r in rows]
    if body.select:
        out = [{k: t[k] for k in body.select if k in t} for t in out]
    return out


@router.post("/count", responses=errors(400, 413))
async def count(body: ThreadSearch, svc: Service, user: CurrentUser) -> int:
    """How many of the caller's threads match (same filters as search)."""
    sql_where, params = _filters(body, user)
    async with svc.db.pool.connection() as conn:
        return await _count(conn, sql_where, params)


@router.get("/{thread_id}", responses=errors(404))
async def get(thread_id: ThreadId, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """One thread."""
    return thread_json(await owned_thread(svc, user, thread_id))


@router.post("/{thread_id}/copy", responses=errors(409))
async def copy(thread_id: ThreadId, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """A new thread with this one's metadata, state and checkpoint history (not its runs).

    An unknown thread is a 409, as the reference answers."""
    tid = parse_uuid(thread_id, "thread")
    async with svc.db.pool.connection() as conn:
        row = await store.get_thread(conn, tid)
        if row is None or row["user_id"] != user.id:
            raise ApiError(409, f"Thread with ID {tid} not found")
        new = await store.copy_thread(conn, tid, str(uuid.uuid4()))
    if new is None:  # deleted meanwhile
        raise ApiError(409, f"Thread with ID {tid} not found")
    return thread_json(new)


@router.patch("/{thread_id}", responses=errors(400, 404, 413))
async def patch(thread_id: ThreadId, body: ThreadPatch, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """Merge metadata into a thread; a `ttl` restarts its expiry from now."""
    row = await owned_thread(svc, user, thread_id)
    ttl = body.ttl_minutes()
    async with svc.db.pool.connection() as conn:
        updated = await store.fetchone(
            conn, store.PATCH_THREAD, (Jsonb(jsonable(body.metadata or {})), ttl, ttl, row["thread_id"])
        )
    if updated is None:  # deleted since we read it
        raise not_found("Thread", str(row["thread_id"]))
    return thread_json(updated)


@router.delete("/{thread_id}", status_code=204, responses=errors(404, 409))
async def delete(thread_id: ThreadId, svc: Service, user: CurrentUser) -> Response:
    """Delete a thread, its runs and its checkpoints."""
    row = await owned_thread(svc, user, thread_id)
    await _delete_thread(svc, str(row["thread_id"]))
    return Response(status_code=204)


async def _delete_thread(svc: KeelService, tid: str) -> None:
    """Stop the thread's runs (409 if one does not stop), then delete it everywhere."""
    async with svc.db.pool.connection() as conn:
        active = await store.fetchall(conn, store.THREAD_ACTIVE_RUN_IDS, (tid, list(ACTIVE)))
    for run in active:
        await svc.runs.cancel(run)
    for run in active:
        try:
            await asyncio.wait_for(svc.feed.wait_terminal(str(run["run_id"])), 30)
        except TimeoutError:
            raise ApiError(409, "The thread's run did not stop within 30 s; try again") from None
    await delete_thread_everywhere(svc.db, tid)


class ThreadPrune(_Body):
    thread_ids: list[str] = Field(..., max_length=1000)
    strategy: str = "delete"


@router.post("/prune", responses=errors(400, 409, 413))
async def prune(body: ThreadPrune, svc: Service, user: CurrentUser) -> dict[str, int]:
    """Delete threads (`delete`), or keep only their latest checkpoint (`keep_latest`); the caller's only."""
    ids = [parse_uuid(t, "thread") for t in body.thread_ids]
    if body.strategy not in ("delete", "keep_latest"):
        raise ApiError(422, f"Invalid strategy: {body.strategy}. Expected 'delete' or 'keep_latest'.")
    pruned = 0
    for tid in dict.fromkeys(ids):
        async with svc.db.pool.connection() as conn:
            row = await store.get_thread(conn, tid)
        if row is None or row["user_id"] != user.id:
            continue  # as the reference: a missing (or another user's) thread is skipped
        if body.strategy == "delete":
            await _delete_thread(svc, tid)
        else:
            await trim_checkpoints(svc.db, tid, keep=1)
        pruned += 1
    return {"pruned_count": pruned}


@router.get("/{thread_id}/state", responses=errors(404))
async def get_state(
    thread_id: ThreadId,
    svc: Service,
    user: CurrentUser,
    subgraphs: bool = False,
    select: list[str] | None = Query(None),
) -> dict[str, Any]:
    """The thread's latest state."""
    row = await owned_thread(svc, user, thread_id)
    snap = await _graph(svc, row).aget_state(thread_config(str(row["thread_id"])), subgraphs=subgraphs)
    return snapshot_json(snap, select=select)


@router.get("/{thread_id}/state/{checkpoint_id}", responses=errors(404))
async def get_state_at(
    thread_id: ThreadId, checkpoint_id: str, svc: Service, user: CurrentUser, subgraphs: bool = False
) -> dict[str, Any]:
    """The thread's state at one checkpoint."""
    row = await owned_thread(svc, user, thread_id)
    return await _state_at(svc, row, {"checkpoint_id": checkpoint_id}, subgraphs)


@router.post("/{thread_id}/state/checkpoint", responses=errors(400, 404, 413))
async def post_state_at(
    thread_id: ThreadId, body: CheckpointQuery, svc: Service, user: CurrentUser
) -> dict[str, Any]:
    """The thread's state at the checkpoint in the body."""
    row = await owned_thread(svc, user, thread_id)
    return await _state_at(svc, row, body.checkpoint, body.subgraphs, body.select)


def _graph(svc: KeelService, row: dict[str, Any]) -> Any:
    """The compiled graph that runs on this thread (its metadata's graph_id, as every run records it)."""
    return svc.graph_for((row["metadata"] or {}).get("graph_id"))


async def _state_at(
    svc: KeelService,
    row: dict[str, Any],
    checkpoint: dict[str, Any],
    subgraphs: bool,
    select: list[str] | None = None,
) -> dict[str, Any]:
    if not checkpoint.get("checkpoint_id"):
        raise ApiError(422, "checkpoint.checkpoint_id is required")
    # A checkpoint the thread does not have is an empty state (values {}, no next), as the reference answers.
    config = thread_config(str(row["thread_id"]), checkpoint)
    out = snapshot_json(await _graph(svc, row).aget_state(config, subgraphs=subgraphs), select=select)
    if out.get("checkpoint") and "checkpoint_ns" not in checkpoint:  # named as asked, as the reference
        out["checkpoint"].pop("checkpoint_ns", None)
    return out


@router.post("/{thread_id}/state", responses=errors(400, 404, 409, 413))
async def update_state(
    thread_id: ThreadId, body: StateUpdate, svc: Service, user: CurrentUser
) -> dict[str, Any]:
    """Write values as if a node produced them (or fork a checkpoint with as_node="__copy__")."""
    row = await owned_thread(svc, user, thread_id)
    tid = str(row["thread_id"])
    if row["status"] == "busy":
        raise ApiError(409, "Thread is busy; wait for its run to finish before updating state")
    if not (row["metadata"] or {}).get("graph_id"):  # every run (and a copy of a thread that ran) sets it
        raise ApiError(
            400,
            f"Thread '{tid}' has no assigned graph ID. This usually occurs when no runs have been made on "
            "this particular thread. Make a run on the thread, or set its metadata's 'graph_id', first.",
        )
    checkpoint = dict(body.checkpoint or {})
    if body.checkpoint_id:
        checkpoint["checkpoint_id"] = body.checkpoint_id
    config = thread_config(tid, checkpoint)
    config["configurable"]["graph_id"] = row["metadata"]["graph_id"]  # into the checkpoint's metadata
    graph = _graph(svc, row)
    nodes = set(graph.nodes) - {"__start__"}
    if body.as_node and body.as_node not in nodes and body.as_node not in ("__copy__", "__start__"):
        raise ApiError(400, f"Node {body.as_node} does not exist")  # the reference's status and words
    try:
        new_config = await graph.aupdate_state(config, body.values, as_node=body.as_node)
    except psycopg.Error:
        raise  # the database's trouble, not the request's: a logged 500 without its internals
    except Exception as exc:  # LangGraph raises InvalidUpdateError etc. for bad input
        raise ApiError(400, f"Could not update state: {exc}") from exc
    snap = await graph.aget_state(thread_config(tid))
    async with svc.db.pool.connection() as conn:
        await store.set_thread_state(
            conn, tid, jsonable(snap.values), ThreadStatus.INTERRUPTED if snap.next else ThreadStatus.IDLE
        )
    c = new_config["configurable"]
    checkpoint_out = {
        "thread_id": tid,
        "checkpoint_ns": c.get("checkpoint_ns", ""),
        "checkpoint_id": c["checkpoint_id"],
    }
    return {"checkpoint": checkpoint_out, "configurable": checkpoint_out, "checkpoint_id": c["checkpoint_id"]}


def _before(value: str | dict[str, Any] | None) -> RunnableConfig | None:
    """`before` arrives as an id string, a Checkpoint dict or a Config dict; accept all three."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"configurable": {"checkpoint_id": value}}
    configurable = value.get("configurable")
    if isinstance(configurable, dict) and isinstance(configurable.get("checkpoint_id", ""), str):
        return {"configurable": dict(configurable)}
    if isinstance(value.get("checkpoint_id"), str) and value["checkpoint_id"]:
        return {"configurable": {"checkpoint_id": value["checkpoint_id"]}}
    raise ApiError(422, "before must be a checkpoint id, a checkpoint or a config")


async def _history(svc: KeelService, row: dict[str, Any], q: HistoryQuery) -> list[dict[str, Any]]:
    config = thread_config(str(row["thread_id"]), q.checkpoint)
    out: list[dict[str, Any]] = []
    async for snap in _graph(svc, row).aget_state_history(
        config, limit=q.limit, before=_before(q.before), filter=q.metadata or None
    ):
        out.append(snapshot_json(snap, select=q.select))
    return out


@router.post("/{thread_id}/history", responses=errors(400, 404, 413))
async def history(
    thread_id: ThreadId, body: HistoryQuery, svc: Service, user: CurrentUser
) -> list[dict[str, Any]]:
    """Past states, newest first."""
    row = await owned_thread(svc, user, thread_id)
    if isinstance(body.before, str):  # the reference's schema: a checkpoint config object (GET takes the id)
        raise ApiError(422, 'before must be a checkpoint config object, e.g. {"configurable": {...}}')
    return await _history(svc, row, body)


@router.get("/{thread_id}/history", responses=errors(404))
async def history_get(
    thread_id: ThreadId,
    svc: Service,
    user: CurrentUser,
    limit: int = Query(10, ge=1, le=1000),
    before: str | None = None,
) -> list[dict[str, Any]]:
    """Past states, newest first (query-string form)."""
    row = await owned_thread(svc, user, thread_id)
    return await _history(svc, row, HistoryQuery(limit=limit, before=before))
