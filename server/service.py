"""The running Keel: settings, database, compiled graphs, assistants and runs, wired once at start-up."""

from __future__ import annotations

import logging
from typing import Any, cast

from langgraph.graph import StateGraph
from psycopg_pool import AsyncConnectionPool

from agent.context import Context
from agent.toolbox import Toolbox
from memory.embeddings import DEFAULT_EMBEDDINGS, EMBED_DIMS, DeferredEmbeddings, get_embeddings
from server.assistants.graphs import AGENT, build_agent, config_path, load_graphs, load_keel_graph
from server.assistants.manager import NAMESPACE_GRAPH, Assistants, GraphEntry, system_id
from server.auth import User
from server.crons.scheduler import CronScheduler
from server.db import Database, DatabaseUnavailable, embedded_server, open_database
from server.runs.attempt import RunHandle
from server.runs.events import EventFeed
from server.runs.executor import RunExecutor
from server.runs.manager import RunManager
from server.runs.planner import GraphInfo, Planner, context_fields
from server.runs.store import Outcome
from server.runs.worker import Worker
from server.settings import Settings
from server.telemetry import Telemetry

log = logging.getLogger("keel")

__all__ = ["NAMESPACE_GRAPH", "Assistants", "GraphEntry", "KeelService", "load_builder", "system_id"]

GRAPH_ID = AGENT
"""The graph id of Keel's agent, served by every deployment unless langgraph.json leaves it out."""


def load_builder(spec: str | None, toolbox: Toolbox) -> StateGraph[Any, Any, Any, Any]:
    """The `agent` graph's builder: Keel's agent, or what KEEL_GRAPH (`module:attr`) names, an uncompiled
    `StateGraph` or a function that builds one from the service's `Toolbox`."""
    return load_keel_graph(spec, toolbox) if spec else build_agent(toolbox)


class GraphExecutor(RunExecutor):
    """Executes each claimed run with the graph chosen when it was created (its configurable names it; runs
    recorded before that, or on a graph no longer served, fall back to the system assistant's graph, then to
    the default graph)."""

    def __init__(self, by_graph: dict[str, RunExecutor], default: str, assistants: Assistants) -> None:
        first = by_graph[default]
        super().__init__(first.db, first.graph, first.planner, first.settings, first.toolbox)
        self.by_graph = by_graph
        self.default = default
        self.assistants = assistants

    def graph_id(self, run: dict[str, Any]) -> str:
        request = (run.get("kwargs") or {}).get("request") or {}
        gid = ((request.get("config") or {}).get("configurable") or {}).get("graph_id")
        if isinstance(gid, str) and gid in self.by_graph:
            return gid
        system = self.assistants.find(str(run.get("assistant_id")))
        return system["graph_id"] if system is not None else self.default

    async def execute(self, h: RunHandle) -> Outcome:
        return await self.by_graph[self.graph_id(h.claim.run)].execute(h)


async def open_db(
    settings: Settings, *, check_embeddings: bool = True, embed_load: str = "start"
) -> Database:
    """The database from configuration: DATABASE_URL, or the embedded Postgres under KEEL_HOME.

    embed_load (KEEL_EMBED_LOAD for a server): "start" loads the embedding model before returning;
    "background" starts loading it in a thread once the database is open; "first-use" at the first embedding.
    """
    server = None
    url = settings.database_url
    if not url:
        server = embedded_server(settings.keel_home)
        url = server.get_uri()
        log.info("using the embedded Postgres in %s", settings.keel_home.resolve() / "pgdata")
    embeddings = get_embeddings(
        settings.keel_embeddings,
        cache_dir=settings.keel_model_cache or settings.keel_home / "models",
        deferred=embed_load != "start",
    )
    dims = settings.keel_embed_dims or (EMBED_DIMS if not settings.keel_embeddings else None)
    if dims is None:
        raise DatabaseUnavailable("KEEL_EMBED_DIMS must be set together with KEEL_EMBEDDINGS")
    db = await open_database(
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
    if embed_load == "background" and isinstance(embeddings, DeferredEmbeddings):
        embeddings.start()
    return db


class KeelService:
    """Everything a request handler needs, created by the app's lifespan."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.toolbox = Toolbox(pool=db.pool, settings={"webhook_url": settings.keel_webhook_url})
        """The tools runs and MCP callers use, and their services."""
        loaded = load_graphs(config_path(settings.keel_config), settings.keel_graph, self.toolbox)
        self.graphs: dict[str, Any] = {
            gid: g.builder.compile(
                checkpointer=db.checkpointer,
                store=db.store,
                name=g.name,
                interrupt_before=g.interrupt_before or None,
                interrupt_after=g.interrupt_after or None,
            )
            for gid, g in loaded.items()
        }
        """Every served graph, compiled with the Postgres checkpointer and store, by graph id."""
        self.default_graph_id = AGENT if AGENT in self.graphs else next(iter(self.graphs))
        self.graph = self.graphs[self.default_graph_id]
        """The default graph (Keel's agent, or KEEL_GRAPH's), for routes that do not yet pick a thread's graph."""
        self.node_names = set(self.graph.nodes) - {"__start__"}
        runs_pool = cast(AsyncConnectionPool, db.pool)
        self.assistants = Assistants(
            runs_pool,
            {gid: GraphEntry(g.name, g.description) for gid, g in loaded.items()},
            keys_configured=bool(settings.api_users),
        )
        self.planner = Planner(
            settings,
            self.assistants,
            {
                gid: GraphInfo(
                    keel_context=loaded[gid].keel_context,
                    context_fields=context_fields(g),
                    node_names=frozenset(g.nodes) - {"__start__"},
                )
                for gid, g in self.graphs.items()
            },
        )
        self.assistants.check = self.planner.check_assistant
        # server.runs still annotates its pool with the default (tuple) rows; the pool hands out dict rows.
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
        by_graph = {
            # run and node latency, spans when tracing is on
            gid: RunExecutor(
                self.db, self.telemetry.instrument(g), self.planner.for_graph(gid), s, self.toolbox
            )
            for gid, g in self.graphs.items()
        }
        executor = GraphExecutor(by_graph, self.default_graph_id, self.assistants)
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
        svc = cls(settings, await open_db(settings, embed_load=settings.keel_embed_load))
        await svc.assistants.ready()  # each graph's system assistant (every process; one row each)
        await svc.import_mcp_tools()
        return svc

    def graph_for(self, graph_id: str | None) -> Any:
        """The compiled graph of this graph id (a thread's metadata names it), else the default graph."""
        return self.graphs.get(graph_id or "", self.graph)

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
