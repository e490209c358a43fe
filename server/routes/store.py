"""The LangGraph Server store API over Keel's long-term memory, scoped to the caller.

A caller's namespace ["memories", ...] is stored as ("memories", <user id>, ...): the user id is always
inserted by the server from authentication, never taken from the request, so one user can never read
or write another's items (and the shared document corpus is not reachable through this API).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import Field

from memory.search import CORPUS_LABELS
from server.auth import CurrentUser, User
from server.deps import Service
from server.errors import ApiError
from server.schemas import AUTHENTICATED, MAX_OFFSET, MAX_TTL_MINUTES, _Body, errors
from server.serde import jsonable
from tools.memory_tools import memories_namespace

router = APIRouter(prefix="/store", tags=["store"], dependencies=AUTHENTICATED, responses=errors(401, 422))

FILTER_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
RESERVED_ROOT = "langgraph"  # the store refuses it as a first label


class PutItem(_Body):
    namespace: list[str] = Field(..., min_length=1, max_length=10)
    key: str = Field(..., min_length=1, max_length=512)
    value: dict[str, Any]
    index: bool | list[str] | None = None
    ttl: float | None = Field(
        None,
        ge=1 / 60,
        le=MAX_TTL_MINUTES,
        description="minutes until the item expires (at least one second)",
    )


class DeleteItem(_Body):
    namespace: list[str] = Field(..., min_length=1, max_length=10)
    key: str = Field(..., min_length=1, max_length=512)


class SearchItems(_Body):
    namespace_prefix: list[str] = Field(default_factory=list, max_length=10)
    filter: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    query: str | None = None
    refresh_ttl: bool | None = None


class ListNamespaces(_Body):
    prefix: list[str] | None = None
    suffix: list[str] | None = None
    max_depth: int | None = Field(None, ge=1, le=10)
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


def _check_labels(labels: list[str]) -> None:
    for label in labels:
        if not label or "." in label:
            raise ApiError(
                422, f"Invalid namespace label {label!r}: labels are non-empty and contain no periods"
            )


def real(user: User, namespace: list[str]) -> tuple[str, ...]:
    """The stored namespace: the caller's id goes in as the second label."""
    _check_labels(namespace)
    if namespace and namespace[0] in CORPUS_LABELS:
        # ("docs", <user id>) would be the corpus named like the user: corpora are managed via /knowledge only.
        raise ApiError(
            422, f"Namespace label {namespace[0]!r} is reserved for document corpora; use /knowledge"
        )
    if namespace and namespace[0] == RESERVED_ROOT:
        raise ApiError(422, f"Namespace label {RESERVED_ROOT!r} is reserved by LangGraph as a first label")
    return (namespace[0], memories_namespace(user.id)[1], *namespace[1:])


def visible(user: User, namespace: tuple[str, ...]) -> list[str]:
    """The namespace as the caller sees it (their id removed)."""
    return [namespace[0], *namespace[2:]]


def item_json(user: User, item: Any) -> dict[str, Any]:
    out = {
        "namespace": visible(user, tuple(item.namespace)),
        "key": item.key,
        "value": jsonable(item.value),
        "created_at": item.created_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
    }
    return out


def _check_filter(flt: dict[str, Any] | None) -> None:
    """Store filters: {field: value} for equality, or {field: {"$op": value}} with the store's operators."""
    for field, cond in (flt or {}).items():
        if isinstance(cond, dict):
            for op in cond:
                if op not in FILTER_OPERATORS:
                    raise ApiError(
                        422, f"filter.{field}: unknown operator {op!r}; use {', '.join(FILTER_OPERATORS)}"
                    )


@router.put("/items", status_code=204, responses=errors(400, 413))
async def put_item(body: PutItem, svc: Service, user: CurrentUser) -> Response:
    """Create or replace an item in one of the caller's namespaces."""
    index: Literal[False] | list[str] | None = (
        False if body.index is False else (body.index if isinstance(body.index, list) else None)
    )
    await svc.db.store.aput(real(user, body.namespace), body.key, body.value, index=index, ttl=body.ttl)
    return Response(status_code=204)


@router.get("/items")
async def get_item(
    svc: Service, user: CurrentUser, key: str, namespace: str = Query(""), refresh_ttl: bool | None = None
) -> dict[str, Any] | None:
    """One item, or `null` when there is none (as the reference answers); the namespace is dot-separated."""
    labels = [p for p in namespace.split(".") if p] if namespace else []
    if not labels:
        raise ApiError(422, "namespace is required")
    item = await svc.db.store.aget(real(user, labels), key, refresh_ttl=refresh_ttl)
    return None if item is None else item_json(user, item)


@router.delete("/items", status_code=204, responses=errors(400))
async def delete_item(body: DeleteItem, svc: Service, user: CurrentUser) -> Response:
    """Delete one of the caller's items."""
    await svc.db.store.adelete(real(user, body.namespace), body.key)
    return Response(status_code=204)


@router.post("/items/search", responses=errors(400, 413))
async def search_items(body: SearchItems, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """Filter and/or semantic search within the caller's namespaces (default: ["memories"])."""
    prefix = body.namespace_prefix or ["memories"]
    _check_filter(body.filter)
    items = await _search(svc.db.store, real(user, prefix), body)
    return {"items": [{**item_json(user, i), "score": getattr(i, "score", None)} for i in items]}


SCAN_PAGE = 100


async def _search(store: Any, prefix: tuple[str, ...], body: SearchItems) -> list[Any]:
    """A page of the search. With a query, as langgraph-api's store orders it: the items with an embedded
    `text` by similarity, then the matching items with nothing to embed (score null); the vector search
    alone would hide those."""
    common: dict[str, Any] = {"filter": body.filter, "refresh_ttl": body.refresh_ttl}
    if not body.query:
        return list(await store.asearch(prefix, limit=body.limit, offset=body.offset, **common))
    want = body.offset + body.limit
    scored = list(await store.asearch(prefix, query=body.query, limit=want, offset=0, **common))
    if len(scored) >= want:
        return scored[body.offset :]
    seen = {(tuple(i.namespace), i.key) for i in scored}
    out, skip, at = scored[body.offset :], max(0, body.offset - len(scored)), 0
    while len(out) < body.limit:
        page = await store.asearch(prefix, limit=SCAN_PAGE, offset=at, **common)
        for item in page:
            if (tuple(item.namespace), item.key) in seen:
                continue
            if skip:
                skip -= 1
                continue
            out.append(item)
            if len(out) == body.limit:
                break
        if len(page) < SCAN_PAGE:
            break
        at += SCAN_PAGE
    return out


@router.post("/namespaces", responses=errors(400, 413))
async def list_namespaces(body: ListNamespaces, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """The caller's namespaces."""
    me = memories_namespace(user.id)[1]
    prefix = ("*", me) if not body.prefix else real(user, body.prefix)
    _check_labels(body.suffix or [])
    found = await svc.db.store.alist_namespaces(
        prefix=prefix,
        suffix=tuple(body.suffix) if body.suffix else None,
        max_depth=body.max_depth + 1 if body.max_depth else None,
        limit=body.limit,
        offset=body.offset,
    )
    return {
        "namespaces": [
            visible(user, ns) for ns in found if len(ns) > 1 and ns[1] == me and ns[0] not in CORPUS_LABELS
        ]
    }
