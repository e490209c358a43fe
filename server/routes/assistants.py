"""Assistants: create, version, search and delete them; the topology and schemas of each one's graph.

Shaped as langgraph-api 0.16.7 serves them; who sees and changes which assistant is in server.assistants.manager.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import Field, TypeAdapter, create_model

from server.assistants.schemas import (
    AssistantCount,
    AssistantCreate,
    AssistantPatch,
    AssistantSearch,
    AssistantVersionChange,
    AssistantVersions,
    SelectField,
)
from server.auth import CurrentUser
from server.deps import Service
from server.errors import ApiError
from server.schemas import AUTHENTICATED, errors
from server.service import KeelService

XrayDepth = Annotated[int, Field(ge=0, le=100)]
SELECTABLE = set(SelectField.__args__)  # type: ignore[attr-defined]

router = APIRouter(
    prefix="/assistants", tags=["assistants"], dependencies=AUTHENTICATED, responses=errors(401, 422)
)


@router.post("", responses=errors(400, 404, 409, 413))
async def create(body: AssistantCreate, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """Create an assistant of a served graph (409 when the id exists, unless if_exists is do_nothing)."""
    return await svc.assistants.create(user, body)


@router.post("/search", responses=errors(400, 404, 413))
async def search(
    body: AssistantSearch, svc: Service, user: CurrentUser, response: Response
) -> list[dict[str, Any]]:
    """Assistants matching metadata / graph_id / name, sorted and paged."""
    if body.select:
        invalid = [c for c in body.select if c not in SELECTABLE]
        if invalid:
            raise ApiError(422, f"Invalid select columns: {invalid}. Expected: {sorted(SELECTABLE)}")
    page, more = await svc.assistants.search(user, body)
    if more:
        response.headers["x-pagination-total"] = str(body.offset + body.limit + 1)
        response.headers["x-pagination-next"] = str(body.offset + body.limit)
    else:
        response.headers["x-pagination-total"] = str(body.offset + len(page))
    if body.select:
        page = [{k: a[k] for k in body.select if k in a} for a in page]
    return page


@router.post("/count", responses=errors(400, 404, 413))
async def count(body: AssistantCount, svc: Service, user: CurrentUser) -> int:
    """How many assistants match."""
    return await svc.assistants.count(user, body.graph_id, body.name, body.metadata)


@router.get("/{assistant_id}", responses=errors(404))
async def get(assistant_id: str, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """One assistant, by id (or graph id, for its system assistant)."""
    return await svc.assistants.get(user, assistant_id)


@router.patch("/{assistant_id}", responses=errors(400, 403, 404, 413))
async def patch(assistant_id: str, body: AssistantPatch, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """Change an assistant: a new version (metadata merged into the current one's) becomes its latest."""
    return await svc.assistants.patch(user, assistant_id, body)


@router.delete("/{assistant_id}", status_code=204, responses=errors(403, 404, 409))
async def delete(
    assistant_id: str,
    svc: Service,
    user: CurrentUser,
    delete_threads: bool = Query(False, description="also delete the caller's threads this assistant ran on"),
) -> Response:
    """Delete an assistant with its versions and crons; its active runs are cancelled."""
    runs, threads = await svc.assistants.delete(user, assistant_id)
    for run in runs:
        await svc.runs.cancel(run)
    if delete_threads:
        # The thread route's own path: stop the thread's runs, then delete it everywhere.
        from server.routes.threads import _delete_thread

        for tid in threads:
            await _delete_thread(svc, tid)
    return Response(status_code=204)


@router.post("/{assistant_id}/versions", responses=errors(400, 404, 413))
async def versions(
    assistant_id: str, body: AssistantVersions, svc: Service, user: CurrentUser
) -> list[dict[str, Any]]:
    """The assistant's versions, newest first, filtered by metadata."""
    return await svc.assistants.versions(user, assistant_id, body.metadata, body.limit, body.offset)


@router.post("/{assistant_id}/latest", responses=errors(400, 403, 404, 413))
async def latest(
    assistant_id: str, body: AssistantVersionChange, svc: Service, user: CurrentUser
) -> dict[str, Any]:
    """Make one of the assistant's versions its current one (runs use it from now on)."""
    return await svc.assistants.set_latest(user, assistant_id, body.version)


async def _graph_of(svc: KeelService, user: Any, assistant_id: str) -> Any:
    a = await svc.assistants.get(user, assistant_id)
    return svc.graphs[a["graph_id"]]


@router.get("/{assistant_id}/graph", responses=errors(404))
async def graph(
    assistant_id: str,
    svc: Service,
    user: CurrentUser,
    xray: bool | XrayDepth = Query(False, description="true, or how many subgraph levels"),
) -> dict[str, Any]:
    """Nodes and edges, including __start__ and __end__."""
    g = await _graph_of(svc, user, assistant_id)
    drawn: dict[str, Any] = g.get_graph(xray=xray).to_json()
    for node in drawn.get("nodes", []):
        if isinstance(node.get("data"), dict):
            node["data"].pop("id", None)  # langgraph-api leaves out the runnable's class path
    return drawn


@router.get("/{assistant_id}/subgraphs", responses=errors(404))
@router.get("/{assistant_id}/subgraphs/{namespace}", responses=errors(404))
async def subgraphs(
    assistant_id: str,
    svc: Service,
    user: CurrentUser,
    namespace: str | None = None,
    recurse: bool = Query(False, description="include subgraphs of subgraphs"),
) -> dict[str, Any]:
    """Schemas of the graph's subgraphs, by namespace (Keel's agent has none)."""
    g = await _graph_of(svc, user, assistant_id)
    return {ns: _schemas(sub) async for ns, sub in g.aget_subgraphs(namespace=namespace, recurse=recurse)}


@router.get("/{assistant_id}/schemas", responses=errors(404))
async def schemas(assistant_id: str, svc: Service, user: CurrentUser) -> dict[str, Any]:
    """JSON Schemas of input, output, state, config and context."""
    a = await svc.assistants.get(user, assistant_id)
    g = svc.graphs[a["graph_id"]]
    return {"graph_id": a["graph_id"], **_schemas(g)}


def _schemas(g: Any) -> dict[str, Any]:
    return {
        "input_schema": g.get_input_jsonschema(),
        "output_schema": g.get_output_jsonschema(),
        "state_schema": state_jsonschema(g),
        "config_schema": configurable_jsonschema(g),
        "context_schema": g.get_context_jsonschema(),
    }


EXCLUDED_CONFIGURABLE = (
    "__pregel_checkpointer",
    "__pregel_store",
    "checkpoint_id",
    "checkpoint_ns",
    "thread_id",
)


def configurable_jsonschema(g: Any) -> dict[str, Any]:
    """The schema of the graph's `configurable` alone (what an assistant's config sets), as langgraph-api
    answers it: the config's other keys and the ids the server sets are left out; {} when there is none."""
    import warnings

    with warnings.catch_warnings():  # deprecated in LangGraph 1.0 for context, still what the API serves
        warnings.simplefilter("ignore")
        full: dict[str, Any] = g.get_config_jsonschema()
    conf = (full.get("properties") or {}).get("configurable")
    if not isinstance(conf, dict):
        return {}
    defs = dict(full.get("$defs") or {})
    ref = conf.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        schema = dict(defs.pop(name, {}))
        if defs:
            schema["$defs"] = defs
    else:
        schema = dict(conf)
    if isinstance(schema.get("properties"), dict):
        schema["properties"] = {
            k: v for k, v in schema["properties"].items() if k not in EXCLUDED_CONFIGURABLE
        }
    return schema


def state_jsonschema(g: Any) -> dict[str, Any]:
    """JSON Schema of a graph's full state as langgraph-api describes it: one optional property per channel
    the graph streams, typed by what the channel accepts (any value when that type has no JSON Schema)."""
    fields: dict[str, Any] = {}
    for name in g.stream_channels_list:
        kind: Any = g.channels[name].UpdateType
        try:
            TypeAdapter(kind).json_schema()
        except Exception:  # e.g. a callable: the property is left untyped rather than failing the route
            kind = Any
        fields[name] = (kind, None)
    model = create_model(g.get_name("State"), **fields)
    schema: dict[str, Any] = model.model_json_schema()
    return schema
