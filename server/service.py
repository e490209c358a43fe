"""The running Keel: settings, database, compiled graph, assistants and runs, wired once at start-up."""

from __future__ import annotations

import importlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from langgraph.graph import StateGraph
from psycopg_pool import AsyncConnectionPool

from agent.context import Context
from agent.graph import build
from agent.toolbox import Toolbox
from memory.embeddings import DEFAULT_EMBEDDINGS, EMBED_DIMS, get_embeddings
from server.auth import User
from server.crons.scheduler import CronScheduler
from server.db import Database, DatabaseUnavailable, embedded_server, open_database
from server.errors import ApiError
from server.runs.events import EventFeed
from server.runs.executor import RunExecutor
from server.runs.manager import RunManager
from server.runs.planner import Planner
from server.runs.worker import Worker
from server.settings import Settings
from server.telemetry import Telemetry

log = logging.getLogger("keel")

# langgraph-api derives default assistant ids this way, so ids match the official server's.
NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
GRAPH_ID = "agent"
_STARTED = datetime.now(UTC).isoformat()


def load_builder(spec: str | None, toolbox: Toolbox) -> StateGraph[Any, Any, Any, Any]:
    """The graph builder: Keel's agent, or `module:attr` from KEEL_GRAPH (tests, custom agents) naming an
    uncompiled `StateGraph`, or a function that builds one from the service's `Toolbox`."""
    if not spec:
        return build(toolbox)
    module, _, attr = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr or "builder")
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"KEEL_GRAPH={spec!r}: cannot load the graph builder ({exc})") from exc
    built = found if isinstance(found, StateGraph) or not callable(found) else found(toolbox)
    return cast(StateGraph[Any, Any, Any, Any], built)  # user code named by KEEL_GRAPH, imported by name


class Assistants:
    """One default assistant per graph; the graph id works wherever an assistant id does."""

    def __init__(self, graph_ids: list[str]) -> None:
        self._by_id: dict[str, dict[str, Any]] = {}
        for gid in graph_ids:
            aid = str(uuid.uuid5(NAMESPACE_GRAPH, gid))
            self._by_id[aid] = {
                "assistant_id": aid,
                "graph_id": gid,
                "config": {},
                "context": {},
                "metadata": {"created_by": "system"},
                "name": gid,
                "description": None,
                "version": 1,
                "created_at": _STARTED,
                "updated_at": _STARTED,
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
                raise ApiError(
                    422, f"Invalid assistant: '{ident}'. Use a graph name ({GRAPH_ID}) or an assistant ID."
                )
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
    return await open_database(
        url,
        embeddings=embeddings,
        dims=dims,
        pool_min=settings.keel_pool_min,
        pool_max=settings.keel_pool_max,
        max_idle=settings.keel_pool_max_idle,
        max_lifetime=settings.keel_pool_max_lifetime,
        server=server,
        embeddings_name=settings.keel_embeddings or DEFAULT_EMBEDDINGS,
        check_embeddings=check_embeddings,
        hnsw_ef_search=settings.keel_hnsw_ef_search,
    )


class KeelService:
    """Everything a request handler needs, created by the app's lifespan."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.toolbox = Toolbox(pool=db.pool, settings={"webhook_url": settings.keel_webhook_url})
        """The tools runs and MCP callers use, and their services."""
        self.graph = load_builder(settings.keel_graph, self.toolbox).compile(
            checkpointer=db.checkpointer, store=db.store, name=GRAPH_ID
        )
        self.node_names = set(self.graph.nodes) - {"__start__"}
        self.assistants = Assistants([GRAPH_ID])
        self.planner = Planner(settings, self.assistants, self.node_names)
        # server.runs still annotates its pool with the default (tuple) rows; the pool hands out dict rows.
        runs_pool = cast(AsyncConnectionPool, db.pool)
        self.runs = RunManager(runs_pool, db.checkpointer, self.planner)
        self.feed = EventFeed(db.url, runs_pool)
        self.worker: Worker | None = None
        self.crons: CronScheduler | None = None
        self.telemetry = Telemetry(settings, runs_pool)
        """This process's metrics registry (GET /metrics) and, when configured, its OTLP tracer."""

    async def start_feed(self) -> None:
        """Follow the run event log (API processes)."""
        await self.feed.start()

    async def start_worker(self, concurrency: int, name: str | None = None) -> Worker:
        """Execute queued runs in this process."""
        s = self.settings
        graph = self.telemetry.instrument(self.graph)  # run and node latency, spans when tracing is on
        executor = RunExecutor(self.db, graph, self.planner, s, self.toolbox)
        worker = Worker(
            self.db,
            executor,
            s,
            concurrency=concurrency,
            lease_s=s.keel_lease_seconds,
            max_attempts=s.keel_max_attempts,
            name=name,
        )
        self.worker = worker
        await worker.start()
        # Every worker process also fires due crons (claims are SKIP LOCKED: each tick fires once in the cluster).
        self.crons = CronScheduler(self.runs.pool, self.runs, poll_s=s.keel_cron_poll_seconds)
        await self.crons.start()
        return worker

    async def stop_crons(self) -> None:
        """Stop this process's cron scheduler (a tick in progress commits or rolls back first)."""
        if self.crons is not None:
            await self.crons.stop()
            self.crons = None

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
        await self.stop_crons()
        if self.worker is not None:
            await self.worker.drain(self.settings.keel_drain_seconds)
        await self.feed.stop()
        await self.db.close()
        self.telemetry.close()

    # Request planning lives in server.runs.planner (pure); these delegates serve the CLI, benchmarks and tests.
    def default_context(
        self, user_id: str, roles: tuple[str, ...] = (), tenant: str | None = None
    ) -> Context:
        """Run settings from configuration, for the authenticated user."""
        return self.planner.default_context(user_id, roles, tenant)

    def build_context(self, user: User, overrides: dict[str, Any] | None) -> Context:
        """The run's Context: configuration defaults plus the request's allowed overrides."""
        return self.planner.build_context(user, overrides)

    def ceilings(self) -> dict[str, tuple[int, str]]:
        """Highest value a request may give each integer budget, and the setting that sets it."""
        return self.planner.ceilings()

    def check_config(self, config: dict[str, Any] | None) -> None:
        """Refuse a request's `config` that would buy more work than this deployment allows."""
        self.planner.check_config(config)

    @staticmethod
    def state_jsonschema() -> dict[str, Any]:
        """JSON Schema of the full graph state (a one-node graph whose input is the whole State)."""
        from langgraph.graph import START

        from agent.state import State

        sg = StateGraph(State)
        sg.add_node("noop", lambda s: {})
        sg.add_edge(START, "noop")
        return sg.compile().get_input_jsonschema()
