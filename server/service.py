"""The running Keel: settings, database, compiled graph, assistants and runs, wired once at start-up."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from langgraph.graph import StateGraph

from agent.context import Context
from agent.graph import build, recursion_limit
from agent.toolbox import Toolbox
from memory.embeddings import DEFAULT_EMBEDDINGS, EMBED_DIMS, get_embeddings
from server.auth import User
from server.db import Database, DatabaseUnavailable, embedded_server, open_database
from server.errors import ApiError
from server.runs.events import EventFeed
from server.runs.manager import RunManager
from server.schemas import RunCreate
from server.settings import Settings

log = logging.getLogger("keel")

# langgraph-api derives default assistant ids this way, so ids match the official server's.
NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
GRAPH_ID = "agent"
_STARTED = datetime.now(UTC).isoformat()

# Run settings a request may change through `context`; identity and models come from the server only.
REQUEST_CONTEXT_FIELDS = {"namespace", "retrieve_k", "critic_threshold", "max_revisions", "max_steps",
                          "max_tool_calls", "tools", "history_tokens", "history"}


def load_builder(spec: str | None, toolbox: Toolbox):
    """The graph builder: Keel's agent, or `module:attr` from KEEL_GRAPH (tests, custom agents) naming an
    uncompiled `StateGraph`, or a function that builds one from the service's `Toolbox`."""
    if not spec:
        return build(toolbox)
    module, _, attr = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr or "builder")
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"KEEL_GRAPH={spec!r}: cannot load the graph builder ({exc})") from exc
    return found if isinstance(found, StateGraph) or not callable(found) else found(toolbox)


class Assistants:
    """One default assistant per graph; the graph id works wherever an assistant id does."""

    def __init__(self, graph_ids: list[str]) -> None:
        self._by_id = {}
        for gid in graph_ids:
            aid = str(uuid.uuid5(NAMESPACE_GRAPH, gid))
            self._by_id[aid] = {
                "assistant_id": aid, "graph_id": gid, "config": {}, "context": {},
                "metadata": {"created_by": "system"}, "name": gid, "description": None, "version": 1,
                "created_at": _STARTED, "updated_at": _STARTED,
            }

    def all(self) -> list[dict[str, Any]]:
        return list(self._by_id.values())

    def find(self, ident: str) -> dict[str, Any] | None:
        if ident in self._by_id:
            return self._by_id[ident]
        for a in self._by_id.values():
            if a["graph_id"] == ident:
                return a
        try:
            return self._by_id.get(str(uuid.UUID(ident)))
        except ValueError:
            return None

    def resolve(self, ident: str, *, for_run: bool = False) -> dict[str, Any]:
        found = self.find(ident)
        if found is None:
            if for_run:
                raise ApiError(422, f"Invalid assistant: '{ident}'. Use a graph name ({GRAPH_ID}) or an assistant ID.")
            raise ApiError(404, f"Assistant with ID {ident} not found")
        return found


async def open_db(settings: Settings, *, check_embeddings: bool = True) -> Database:
    """The database from configuration: DATABASE_URL, or the embedded Postgres under KEEL_HOME."""
    server = None
    url = settings.database_url
    if not url:
        server = embedded_server(settings.keel_home)
        url = server.get_uri()
        log.info("using the embedded Postgres in %s", settings.keel_home.resolve() / "pgdata")
    embeddings = get_embeddings(settings.keel_embeddings)
    dims = settings.keel_embed_dims or (EMBED_DIMS if not settings.keel_embeddings else None)
    if dims is None:
        raise DatabaseUnavailable("KEEL_EMBED_DIMS must be set together with KEEL_EMBEDDINGS")
    return await open_database(url, embeddings=embeddings, dims=dims, pool_min=settings.keel_pool_min,
                               pool_max=settings.keel_pool_max, max_idle=settings.keel_pool_max_idle,
                               max_lifetime=settings.keel_pool_max_lifetime, server=server,
                               embeddings_name=settings.keel_embeddings or DEFAULT_EMBEDDINGS,
                               check_embeddings=check_embeddings, hnsw_ef_search=settings.keel_hnsw_ef_search)


class KeelService:
    """Everything a request handler needs, created by the app's lifespan."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.toolbox = Toolbox(pool=db.pool, settings={"webhook_url": settings.keel_webhook_url})
        """The tools runs and MCP callers use, and their services."""
        self.graph = load_builder(settings.keel_graph, self.toolbox).compile(
            checkpointer=db.checkpointer, store=db.store, name=GRAPH_ID)
        self.node_names = set(self.graph.nodes) - {"__start__"}
        self.assistants = Assistants([GRAPH_ID])
        self.runs = RunManager(self)
        self.feed = EventFeed(db.url, db.pool)
        self.worker = None

    async def start_feed(self) -> None:
        """Follow the run event log (API processes)."""
        await self.feed.start()

    async def start_worker(self, concurrency: int, name: str | None = None):
        """Execute queued runs in this process."""
        from server.runs.worker import Worker

        s = self.settings
        self.worker = Worker(self, concurrency=concurrency, lease_s=s.keel_lease_seconds,
                             max_attempts=s.keel_max_attempts, name=name)
        await self.worker.start()
        return self.worker

    @classmethod
    async def start(cls, settings: Settings) -> KeelService:
        """Connect (starting the embedded Postgres when DATABASE_URL is unset), migrate, compile."""
        svc = cls(settings, await open_db(settings))
        await svc.import_mcp_tools()
        return svc

    async def import_mcp_tools(self) -> int:
        """Register the tools of the external MCP servers in KEEL_MCP_SERVERS (fails start-up if unreachable)."""
        import json

        if not self.settings.keel_mcp_servers.strip():
            return 0
        from tools.mcp_client import load_mcp_tools, register_all

        try:
            servers = json.loads(self.settings.keel_mcp_servers)
            assert isinstance(servers, dict)
        except (ValueError, AssertionError) as exc:
            raise ValueError(f"KEEL_MCP_SERVERS must be a JSON object of servers: {exc}") from None
        specs = await load_mcp_tools(servers)
        register_all(self.toolbox.registry, specs)
        log.info("imported %d tool(s) from %d MCP server(s)", len(specs), len(servers))
        return len(specs)

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.drain(self.settings.keel_drain_seconds)
        await self.feed.stop()
        await self.db.close()

    def default_context(self, user_id: str, roles: tuple[str, ...] = (), tenant: str | None = None) -> Context:
        """Run settings from configuration, for the authenticated user."""
        s = self.settings
        return Context(user_id=user_id, roles=list(roles), tenant=tenant, model=s.keel_model, critic_model=s.keel_critic_model,
                       namespace=s.keel_namespace, retrieve_k=s.keel_retrieve_k,
                       critic_threshold=s.keel_critic_threshold, max_revisions=s.keel_max_revisions,
                       max_steps=s.keel_max_steps, max_tool_calls=s.keel_max_tool_calls,
                       history=s.keel_history)

    def build_context(self, user: User, overrides: dict[str, Any] | None) -> Context:
        """The run's Context: configuration defaults plus the request's allowed overrides."""
        ctx = self.default_context(user.id, user.roles, user.tenant)
        if not overrides:
            return ctx
        unknown = sorted(set(overrides) - REQUEST_CONTEXT_FIELDS)
        if unknown:
            raise ApiError(422, f"context.{unknown[0]} cannot be set by a request; allowed: "
                                f"{', '.join(sorted(REQUEST_CONTEXT_FIELDS))}")
        clean: dict[str, Any] = {}
        for key, value in overrides.items():
            if key == "tools":
                if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise ApiError(422, "context.tools must be a list of tool names or null")
            elif key == "namespace":
                if not isinstance(value, str) or not value or "." in value:
                    raise ApiError(422, "context.namespace must be a non-empty string without dots")
            elif key == "critic_threshold":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise ApiError(422, "context.critic_threshold must be a number between 0 and 1")
            elif key == "history":
                if value not in ("summarize", "trim"):
                    raise ApiError(422, 'context.history must be "summarize" or "trim"')
            else:
                ceiling, setting = self.ceilings()[key]
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= ceiling:
                    raise ApiError(422, f"context.{key} must be an integer between 0 and {ceiling} "
                                        f"(this server's ceiling, {setting})")
            clean[key] = value
        return dataclasses.replace(ctx, **clean)

    def ceilings(self) -> dict[str, tuple[int, str]]:
        """Highest value a request may give each integer budget, and the setting that sets it."""
        s = self.settings
        return {"max_steps": (s.keel_limit_steps, "KEEL_LIMIT_STEPS"),
                "max_revisions": (s.keel_limit_revisions, "KEEL_LIMIT_REVISIONS"),
                "max_tool_calls": (s.keel_limit_tool_calls, "KEEL_LIMIT_TOOL_CALLS"),
                "retrieve_k": (s.keel_limit_retrieve_k, "KEEL_LIMIT_RETRIEVE_K"),
                "history_tokens": (s.keel_limit_history_tokens, "KEEL_LIMIT_HISTORY_TOKENS")}

    def check_config(self, config: dict[str, Any] | None) -> None:
        """Refuse a request's `config` that would buy more work than this deployment allows."""
        limit = (config or {}).get("recursion_limit")
        if limit is None:
            return
        ceiling = self.settings.keel_limit_recursion
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= ceiling:
            raise ApiError(422, f"config.recursion_limit must be an integer between 1 and {ceiling} "
                                "(this server's ceiling, KEEL_LIMIT_RECURSION)")

    def run_config(self, body: RunCreate, *, thread_id: str, run_id: str, user: User, assistant: dict[str, Any],
                   run_metadata: dict[str, Any]) -> dict[str, Any]:
        """LangGraph config: thread, checkpoint, limits, and trace metadata (thread_id, run_id, user)."""
        cfg = body.config or {}
        configurable = {k: v for k, v in (cfg.get("configurable") or {}).items()
                        if k not in ("thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map")}
        configurable["thread_id"] = thread_id
        checkpoint = dict(body.checkpoint or {})
        if body.checkpoint_id:
            checkpoint["checkpoint_id"] = body.checkpoint_id
        if checkpoint.get("checkpoint_id"):
            configurable["checkpoint_id"] = checkpoint["checkpoint_id"]
            configurable["checkpoint_ns"] = checkpoint.get("checkpoint_ns", "")
        max_steps = self.default_context(user.id).max_steps
        if body.context and isinstance(body.context.get("max_steps"), int):
            max_steps = body.context["max_steps"]
        limit = cfg.get("recursion_limit")  # validated against KEEL_LIMIT_RECURSION when the run was created
        metadata = {**run_metadata, **(cfg.get("metadata") or {}), "thread_id": thread_id, "run_id": run_id,
                    "user_id": user.id, "assistant_id": assistant["assistant_id"], "graph_id": assistant["graph_id"]}
        return {
            "configurable": configurable,
            "run_id": uuid.UUID(run_id),
            "recursion_limit": limit if isinstance(limit, int) and limit > 0 else recursion_limit(max_steps),
            "tags": list(cfg.get("tags") or []),
            "metadata": metadata,
        }


def _state_schema() -> dict[str, Any]:
    """JSON Schema of the full graph state (a one-node graph whose input is the whole State)."""
    from langgraph.graph import START, StateGraph

    from agent.state import State

    sg = StateGraph(State)
    sg.add_node("noop", lambda s: {})
    sg.add_edge(START, "noop")
    return sg.compile().get_input_jsonschema()


KeelService.state_jsonschema = staticmethod(_state_schema)  # type: ignore[attr-defined]
