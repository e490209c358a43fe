"""Assistants: one default per graph, searchable, with graph topology and schemas."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import Field

from server.auth import CurrentUser
from server.deps import Service
from server.schemas import AUTHENTICATED, AssistantSearch, errors

XrayDepth = Annotated[int, Field(ge=0, le=100)]

router = APIRouter(
    prefix="/assistants", tags=["assistants"], dependencies=AUTHENTICATED, responses=errors(401, 422)
)


def _matches(a: dict[str, Any], q: AssistantSearch) -> bool:
    if q.graph_id and a["graph_id"] != q.graph_id:
        return False
    if q.name and q.name not in a["name"]:
        return False
    return all(a["metadata"].get(k) == v for k, v in (q.metadata or {}).items())


@router.post("/search", responses=errors(400, 413))
async def search(
    body: AssistantSearch, svc: Service, user: CurrentUser, response: Response
) -> list[dict[str, Any]]:
    """Assistants matching metadata / graph_id / name."""
    found = [a for a in svc.assistants.all() if _matches(a, body)]
    found.sort(
        key=lambda a: str(a[body.sort_by or "created_at"]), reverse=(body.sort_order or "desc") == "desc"
    )
    response.headers["x-pagination-total"] = str(len(found))
    page = found[body.offset : body.offset + body.limit]
    if body.select:
        page = [{k: a[k] for k in body.select if k in a} for a in page]
    return page


@router.post("/count", responses=errors(400, 413))
async def count(body: AssistantSearch, svc: Service, user: CurrentUser) -> int:
    """How many assistants match."""
    return len([a for a in svc.assistants.all() if _matches(a, body)])


@router.get("/{assistant_id}", responses=errors(404))
async def get(assistant_id: str, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """One assistant, by id or graph name."""
    return svc.assistants.resolve(assistant_id)


@router.get("/{assistant_id}/graph", responses=errors(404))
async def graph(
    assistant_id: str,
    svc: Service,
    user: CurrentUser,
    xray: bool | XrayDepth = Query(False, description="true, or how many subgraph levels"),
) -> dict[str, Any]:
    """Nodes and edges, including __start__ and __end__."""
    svc.assistants.resolve(assistant_id)
    return svc.graph.get_graph(xray=xray).to_json()


@router.get("/{assistant_id}/subgraphs", responses=errors(404))
async def subgraphs(assistant_id: str, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """Schemas of subgraphs (this graph has none)."""
    svc.assistants.resolve(assistant_id)
    return {}


@router.get("/{assistant_id}/schemas", responses=errors(404))
async def schemas(assistant_id: str, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """JSON Schemas of input, output, state, config and context."""
    a = svc.assistants.resolve(assistant_id)
    g = svc.graph
    return {
        "graph_id": a["graph_id"],
        "input_schema": g.get_input_jsonschema(),
        "output_schema": g.get_output_jsonschema(),
        "state_schema": svc.state_jsonschema(),
        "config_schema": g.get_config_jsonschema(),
        "context_schema": g.get_context_jsonschema(),
    }
