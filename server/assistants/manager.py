"""Assistants as the LangGraph Server API defines them: a graph with its config, context and metadata, versioned.

Each served graph has a system assistant (id uuid5 of the graph id, as langgraph-api derives it; metadata
{"created_by": "system"}), created at start-up by every process at once without duplicates. Users create
their own; ownership, as Keel decides it (langgraph-api without auth handlers has none):
- system assistants are visible to every user; changing or deleting one needs the `admin` role when API keys
  are configured (without keys the single local user may, as with langgraph-api);
- an assistant a user creates is theirs: other users see a 404, as for threads.
A graph id works wherever an assistant id does (a Keel convenience langgraph-api only has in run requests).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from server.assistants import store
from server.assistants.schemas import AssistantCreate, AssistantPatch, AssistantSearch
from server.auth import User
from server.errors import ApiError
from server.runs.store import ACTIVE
from server.serde import jsonable

# langgraph-api derives system assistant ids this way, so ids match the official server's.
NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
ADMIN_ROLE = "admin"
BOTH_CONTEXTS = (
    "Cannot specify both configurable and context. Prefer setting context alone. Context was introduced in "
    "LangGraph 0.6.0 and is the long term planned replacement for configurable."
)


def system_id(graph_id: str) -> str:
    """The system assistant's id of a graph."""
    return str(uuid.uuid5(NAMESPACE_GRAPH, graph_id))


@dataclass(frozen=True)
class GraphEntry:
    """What the assistants need to know of a served graph."""

    name: str
    description: str | None = None


def assistant_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A keel_assistants (or keel_assistant_versions) row as the API's Assistant object."""
    out = {k: v for k, v in row.items() if k != "owner"}
    out["assistant_id"] = str(row["assistant_id"])
    for k in ("created_at", "updated_at"):
        if k in out and hasattr(out[k], "isoformat"):
            out[k] = out[k].isoformat()
    return out


def synced(config: dict[str, Any] | None, context: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """Config and context kept in step, as langgraph-api keeps them: configurable is the context."""
    config = dict(config or {})
    if config.get("configurable") and context:
        raise ApiError(400, BOTH_CONTEXTS)
    if config.get("configurable"):
        context = dict(config["configurable"])
    elif context:
        config["configurable"] = dict(context)
    return config, context


class Assistants:
    """The assistant store for requests and runs; `check` validates an assistant's config and context."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any] | None,
        graphs: Mapping[str, GraphEntry],
        *,
        keys_configured: bool = False,
        check: Callable[[User, str, dict[str, Any], dict[str, Any]], None] | None = None,
    ) -> None:
        self.pool = pool
        self.graphs = dict(graphs)
        self.keys_configured = keys_configured
        self.check = check
        self._system = {system_id(g): g for g in self.graphs}
        self._ready = False
        self._ready_lock = asyncio.Lock()

    # -- synchronous: the system assistants, known without the database (run replay, crons, the CLI) ----------

    def find(self, ident: str) -> dict[str, Any] | None:
        """A system assistant by graph id or id (ids and graph ids only; a user's assistant needs `get`)."""
        if ident in self.graphs:
            return self._system_stub(ident)
        gid = self._system.get(ident.lower())
        return self._system_stub(gid) if gid is not None else None

    def resolve(self, ident: str, *, for_run: bool = False) -> dict[str, Any]:
        found = self.find(ident)
        if found is None:
            if for_run:
                raise ApiError(422, self._invalid(ident))
            raise ApiError(404, f"Assistant with ID {ident} not found")
        return found

    def all(self) -> list[dict[str, Any]]:
        """The system assistants (as their graphs define them)."""
        return [self._system_stub(g) for g in self.graphs]

    def _system_stub(self, graph_id: str) -> dict[str, Any]:
        g = self.graphs[graph_id]
        return {
            "assistant_id": system_id(graph_id),
            "graph_id": graph_id,
            "config": {},
            "context": {},
            "metadata": {"created_by": "system"},
            "name": g.name,
            "description": g.description,
            "version": 1,
        }

    def _invalid(self, ident: str) -> str:
        return (
            f"Invalid assistant: '{ident}'. Use a graph name ({', '.join(self.graphs)}) or an assistant ID."
        )

    def assert_graph(self, graph_id: str) -> None:
        """404 for a graph this server does not serve, worded as langgraph-api words it."""
        if graph_id not in self.graphs:
            raise ApiError(404, f"Graph '{graph_id}' not found. Expected one of: {sorted(self.graphs)}")

    # -- start-up -------------------------------------------------------------------------------------------------

    async def ensure_system(self) -> None:
        """Create each graph's system assistant once, whichever process gets there first; keep its name and
        description in step with the graph (a new version when they changed, as langgraph-api does)."""
        async with self._pool().connection() as conn, conn.transaction():
            for gid, g in self.graphs.items():
                aid = system_id(gid)
                await store.insert(
                    conn,
                    aid,
                    graph_id=gid,
                    owner=None,
                    name=g.name,
                    description=g.description,
                    config={},
                    context={},
                    metadata={"created_by": "system"},
                )
                row = await store.fetchone(conn, store.LOCK, {"id": aid, "user": ""})
                if row is not None and (row["name"], row["description"]) != (g.name, g.description):
                    await store.new_version(conn, aid, {**row, "name": g.name, "description": g.description})

    # -- requests -------------------------------------------------------------------------------------------------

    def _pool(self) -> AsyncConnectionPool[Any]:
        assert self.pool is not None, "assistants without a database"
        return self.pool

    async def ready(self) -> None:
        """The system assistants exist (created on first use when start-up did not create them)."""
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                await self.ensure_system()
                self._ready = True

    def _id(self, ident: str, *, invalid: str = "Invalid assistant ID: must be a UUID") -> str:
        if ident in self.graphs:
            return system_id(ident)
        try:
            return str(uuid.UUID(ident))
        except ValueError:
            raise ApiError(422, invalid) from None

    async def get(self, user: User, ident: str) -> dict[str, Any]:
        """One assistant the user may see, by id or graph id; 404 otherwise."""
        await self.ready()
        aid = self._id(ident)
        async with self._pool().connection() as conn:
            row = await store.fetchone(conn, store.GET, {"id": aid, "user": user.id})
        if row is None or row["graph_id"] not in self.graphs:
            raise ApiError(404, f"Assistant {ident} not found")
        return assistant_json(row)

    async def for_run(
        self, user: User, ident: str, conn: AsyncConnection[Any] | None = None
    ) -> dict[str, Any]:
        """The assistant a run request names (422 when unknown, as Keel has always answered); read on `conn`
        when given (the run's own transaction: one transaction fewer per run)."""
        await self.ready()
        try:
            aid = self._id(ident)
        except ApiError:
            raise ApiError(422, self._invalid(ident)) from None
        if conn is not None:
            row = await store.fetchone(conn, store.GET, {"id": aid, "user": user.id})
        else:
            async with self._pool().connection() as own:
                row = await store.fetchone(own, store.GET, {"id": aid, "user": user.id})
        if row is None:
            raise ApiError(422, self._invalid(ident))
        if row["graph_id"] not in self.graphs:
            raise ApiError(422, f"Assistant {ident}'s graph '{row['graph_id']}' is not served here")
        return assistant_json(row)

    def _may_manage(self, user: User, row: Mapping[str, Any]) -> None:
        if row["owner"] is None and self.keys_configured and ADMIN_ROLE not in user.roles:
            raise ApiError(
                403, "System assistants are shared by every user; changing one needs the admin role"
            )

    async def create(self, user: User, body: AssistantCreate) -> dict[str, Any]:
        await self.ready()
        aid = self._id(body.assistant_id) if body.assistant_id else str(uuid.uuid4())
        self.assert_graph(body.graph_id)
        config, context = synced(body.config, body.context)
        self._check(user, body.graph_id, config, context)
        async with self._pool().connection() as conn, conn.transaction():
            row = await store.insert(
                conn,
                aid,
                graph_id=body.graph_id,
                owner=user.id,
                name=body.name or "Untitled",
                description=body.description,
                config=jsonable(config),
                context=jsonable(context or {}),
                metadata=jsonable(body.metadata or {}),
            )
            if row is None:
                existing = await store.fetchone(conn, store.GET, {"id": aid, "user": user.id})
                if existing is None or (body.if_exists or "raise") == "raise":
                    raise ApiError(409, f"Assistant {aid} already exists")
                row = existing
        return assistant_json(row)

    async def patch(self, user: User, ident: str, body: AssistantPatch) -> dict[str, Any]:
        """A new version from the changed fields (metadata merged); it becomes the current one."""
        await self.ready()
        aid = self._id(ident)
        if body.graph_id is not None:
            self.assert_graph(body.graph_id)
        config, context = synced(body.config, body.context)
        async with self._pool().connection() as conn, conn.transaction():
            row = await store.fetchone(conn, store.LOCK, {"id": aid, "user": user.id})
            if row is None:
                raise ApiError(404, f"Assistant {ident} not found")
            self._may_manage(user, row)
            fields = {
                "graph_id": body.graph_id if body.graph_id is not None else row["graph_id"],
                "config": jsonable(config) if config else row["config"],
                "context": jsonable(context) if context is not None else row["context"],
                "metadata": {**row["metadata"], **jsonable(body.metadata or {})},
                "name": body.name if body.name is not None else row["name"],
                "description": body.description if body.description is not None else row["description"],
            }
            self._check(user, fields["graph_id"], fields["config"], fields["context"])
            updated = await store.new_version(conn, aid, fields)
        assert updated is not None  # locked above
        return assistant_json(updated)

    def _check(self, user: User, graph_id: str, config: dict[str, Any], context: Any) -> None:
        if self.check is not None:
            self.check(user, graph_id, config, context or {})

    async def set_latest(self, user: User, ident: str, version: int) -> dict[str, Any]:
        """Make an earlier (or later) version the current one; no new version is recorded."""
        await self.ready()
        aid = self._id(ident)
        async with self._pool().connection() as conn, conn.transaction():
            row = await store.fetchone(conn, store.LOCK, {"id": aid, "user": user.id})
            if row is None:
                raise ApiError(404, f"Assistant {ident} not found")
            self._may_manage(user, row)
            v = await store.fetchone(conn, store.GET_VERSION, {"id": aid, "v": version})
            if v is None:
                raise ApiError(404, f"Version {version} not found for assistant {aid}")
            updated = await store.set_current(conn, aid, v, version)
        assert updated is not None
        return assistant_json(updated)

    async def versions(
        self, user: User, ident: str, metadata: dict[str, Any] | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        await self.ready()
        aid = self._id(ident)
        async with self._pool().connection() as conn:
            row = await store.fetchone(conn, store.GET, {"id": aid, "user": user.id})
            found = (
                []
                if row is None
                else await store.fetchall(
                    conn,
                    store.versions_sql(bool(metadata)),
                    {"id": aid, "metadata": Jsonb(metadata or {}), "limit": limit, "offset": offset},
                )
            )
        if not found:
            raise ApiError(404, f"Assistant {ident} not found")
        return [assistant_json(v) for v in found]

    async def delete(self, user: User, ident: str) -> tuple[list[dict[str, Any]], list[str]]:
        """Delete the assistant, its versions and its crons; return its active runs (for the caller to cancel)
        and the ids of the caller's threads it ran on."""
        await self.ready()
        aid = self._id(ident)
        async with self._pool().connection() as conn, conn.transaction():
            row = await store.fetchone(conn, store.LOCK, {"id": aid, "user": user.id})
            if row is None:
                raise ApiError(404, f"Assistant with ID {ident} not found")
            self._may_manage(user, row)
            runs = await store.fetchall(conn, store.ACTIVE_RUNS, {"id": aid, "statuses": list(ACTIVE)})
            threads = await store.fetchall(conn, store.THREADS_OF, {"id": aid, "user": user.id})
            await conn.execute(store.DELETE_CRONS, {"id": aid})
            await conn.execute(store.DELETE, {"id": aid, "user": user.id})
        return runs, [str(t["thread_id"]) for t in threads]

    async def search(self, user: User, q: AssistantSearch) -> tuple[list[dict[str, Any]], bool]:
        """One page of the assistants the user sees, and whether more follow."""
        await self.ready()
        if q.graph_id is not None:
            self.assert_graph(q.graph_id)
        where, params = store.filters(user.id, q.graph_id, q.name, q.metadata)
        where += " AND graph_id = ANY(%(served)s)"
        params.update(served=list(self.graphs), limit=q.limit + 1, offset=q.offset)
        sort_by = q.sort_by or "created_at"
        descending = q.sort_by is None or q.sort_order != "asc"
        async with self._pool().connection() as conn:
            rows = await store.fetchall(conn, store.search_sql(where, sort_by, descending), params)
        return [assistant_json(r) for r in rows[: q.limit]], len(rows) > q.limit

    async def count(
        self, user: User, graph_id: str | None, name: str | None, metadata: dict[str, Any] | None
    ) -> int:
        await self.ready()
        if graph_id is not None:
            self.assert_graph(graph_id)
        where, params = store.filters(user.id, graph_id, name, metadata)
        where += " AND graph_id = ANY(%(served)s)"
        params["served"] = list(self.graphs)
        async with self._pool().connection() as conn:
            row = await store.fetchone(conn, store.count_sql(where), params)
        return int(row["n"]) if row is not None else 0
