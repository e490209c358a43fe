"""Request planning, pure: a run request in, a validated plan out (or a 422). No database, no service.

The run manager plans a request once, when the run is created (so a bad request never reaches the queue), and
stores the request in the run's kwargs. The executor plans the same stored request again with the same
planner to get the graph input, context and LangGraph config back (Python objects a JSON column cannot hold);
the answer cannot differ, since nothing here reads anything but the request, the settings and the graphs.

Only `aplan` (run creation) reads the database: it loads the run's assistant and merges the assistant's
config and context under the request's, as langgraph-api does; the merged request is what the run stores,
so the executor's replay needs no assistant lookup (the stored configurable names the graph).

Context: a graph's runs get the context fields its context schema defines; other keys are dropped, as
langgraph-api drops them. Keel's agent (and KEEL_GRAPH's graph) gets its `Context` built by the server:
identity (user_id, roles, tenant) from the API key, models and the other server-only fields from settings,
budgets capped by the KEEL_LIMIT_* ceilings; a request or an assistant setting one of those is a 422.
Other graphs may not be given user_id/roles/tenant either; when their schema has such a field, Keel fills
it from the caller. Unknown interrupt_before/after nodes are accepted and never interrupt, as in LangGraph.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from langgraph.types import Command, Send

from agent.context import Context
from agent.graph import recursion_limit
from server.assistants.manager import BOTH_CONTEXTS
from server.auth import User
from server.errors import ApiError
from server.schemas import RunCreate
from server.settings import Settings

SUPPORTED_MODES = {
    "values",
    "updates",
    "messages",
    "messages-tuple",
    "custom",
    "tasks",
    "checkpoints",
    "debug",
    "events",
}

# Run settings a request may change through `context`; identity and models come from the server only.
REQUEST_CONTEXT_FIELDS = {
    "namespace",
    "retrieve_k",
    "critic_threshold",
    "max_revisions",
    "max_steps",
    "max_tool_calls",
    "tools",
    "history_tokens",
    "history",
}


IDENTITY_FIELDS = ("user_id", "roles", "tenant")
"""Context fields only the server sets, from the API key's user, in any graph."""
AGENT_CONTEXT_FIELDS = frozenset(f.name for f in dataclasses.fields(Context))


class AssistantResolver(Protocol):
    def resolve(self, ident: str, *, for_run: bool = False) -> dict[str, Any]: ...

    async def for_run(self, user: User, ident: str, conn: Any = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GraphInfo:
    """What planning needs to know of a served graph."""

    keel_context: bool = False
    """Runs get Keel's agent `Context` (settings, identity, ceilings) rather than the request's dict."""
    context_fields: frozenset[str] | None = None
    """The fields of the graph's context schema; None when it has none (a request's context passes as is)."""
    node_names: frozenset[str] = field(default_factory=frozenset)


AGENT_GRAPH = GraphInfo(keel_context=True, context_fields=AGENT_CONTEXT_FIELDS)


def context_fields(graph: Any) -> frozenset[str] | None:
    """The property names of a compiled graph's context schema (None when it has no schema)."""
    try:
        schema = graph.get_context_jsonschema()
    except Exception:  # a schema pydantic cannot render: pass the request's context as is
        return None
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return None
    return frozenset(schema["properties"])


class _FixedGraph:
    """The resolver of a planner bound to one graph: whatever the run's assistant id, it runs that graph."""

    def __init__(self, inner: AssistantResolver, graph_id: str) -> None:
        self.inner = inner
        self.graph_id = graph_id

    def resolve(self, ident: str, *, for_run: bool = False) -> dict[str, Any]:
        return {"assistant_id": ident, "graph_id": self.graph_id}

    async def for_run(self, user: User, ident: str, conn: Any = None) -> dict[str, Any]:
        return await self.inner.for_run(user, ident, conn)


def merge_assistant(body: RunCreate, assistant: Mapping[str, Any]) -> RunCreate:
    """The request with its assistant's config and context under it (the request wins, key by key), and the
    run's graph and assistant named in its configurable, as langgraph-api records them."""
    a_cfg = assistant.get("config") or {}
    r_cfg = body.config or {}
    config = {**a_cfg, **r_cfg}
    config["configurable"] = {
        **(a_cfg.get("configurable") or {}),
        **(r_cfg.get("configurable") or {}),
        "graph_id": assistant["graph_id"],
        "assistant_id": str(assistant["assistant_id"]),
    }
    update: dict[str, Any] = {"config": config}
    context = {**(assistant.get("context") or {}), **(body.context or {})}
    if context:
        update["context"] = context
    return body.model_copy(update=update)


@dataclass
class Plan:
    """A validated run request, ready to record and execute."""

    body: RunCreate
    assistant: dict[str, Any]
    context: Any
    modes: list[str]
    graph_input: Any


def command_of(body: RunCreate) -> Command[Any] | None:
    """The request's `command` as a LangGraph Command (Send for goto objects), or None."""
    if body.command is None:
        return None
    goto = body.command.goto

    def one(g: Any) -> Any:
        if isinstance(g, dict):
            if "node" not in g:
                raise ApiError(422, "command.goto: a Send needs a 'node'")
            return Send(g["node"], g.get("input"))
        return g

    if isinstance(goto, list):
        goto = [one(g) for g in goto]
    elif goto is not None:
        goto = one(goto)
    kwargs: dict[str, Any] = {}
    fields = body.command.model_fields_set
    if "resume" in fields:
        kwargs["resume"] = body.command.resume
    if body.command.update is not None:
        update = body.command.update
        kwargs["update"] = [tuple(p) for p in update] if isinstance(update, list) else update
    if goto is not None:
        kwargs["goto"] = goto
    if not kwargs:
        raise ApiError(422, "command must set at least one of resume, update or goto")
    return Command(**kwargs)


class Planner:
    """Validates run requests against this deployment's settings, assistants and graph."""

    def __init__(
        self, settings: Settings, assistants: AssistantResolver, graphs: Mapping[str, GraphInfo]
    ) -> None:
        self.settings = settings
        self.assistants = assistants
        self.graphs = dict(graphs)

    def for_graph(self, graph_id: str) -> Planner:
        """This planner for the runs of one graph (an executor's: the run's graph was chosen at creation)."""
        return Planner(self.settings, _FixedGraph(self.assistants, graph_id), self.graphs)

    async def aplan(self, user: User, body: RunCreate, conn: Any = None) -> Plan:
        """Plan a new run: load its assistant (the caller's or a system one) and merge it into the request.
        `conn`: read the assistant on this connection (in the caller's transaction)."""
        # The request's own configurable, as langgraph-api checks it (a cron's run carries its cron_id there).
        own = {k for k in ((body.config or {}).get("configurable") or {}) if k != "cron_id"}
        if own and body.context:
            raise ApiError(400, BOTH_CONTEXTS)
        assistant = await self.assistants.for_run(user, body.assistant_id, conn)
        return self.plan(user, merge_assistant(body, assistant), assistant)

    @property
    def default_durability(self) -> str:
        return self.settings.keel_durability

    def plan(self, user: User, body: RunCreate, assistant: dict[str, Any] | None = None) -> Plan:
        """Validate everything that can be validated before touching the database."""
        if assistant is None:
            assistant = self.assistants.resolve(body.assistant_id, for_run=True)
        modes = body.modes()
        bad = [m for m in modes if m not in SUPPORTED_MODES]
        if bad:
            raise ApiError(
                422, f"Unsupported stream_mode {bad[0]!r}; supported: {', '.join(sorted(SUPPORTED_MODES))}"
            )
        context = self.graph_context(user, assistant["graph_id"], body.context)
        self.check_config(body.config)
        command = command_of(body)
        graph_input = command if command is not None else body.input
        return Plan(body=body, assistant=assistant, context=context, modes=modes, graph_input=graph_input)

    def default_context(
        self, user_id: str, roles: tuple[str, ...] = (), tenant: str | None = None
    ) -> Context:
        """Run settings from configuration, for the authenticated user."""
        s = self.settings
        return Context(
            user_id=user_id,
            roles=list(roles),
            tenant=tenant,
            model=s.keel_model,
            critic_model=s.keel_critic_model,
            namespace=s.keel_namespace,
            retrieve_k=s.keel_retrieve_k,
            critic_threshold=s.keel_critic_threshold,
            max_revisions=s.keel_max_revisions,
            max_steps=s.keel_max_steps,
            max_tool_calls=s.keel_max_tool_calls,
            history=s.keel_history,
        )

    def graph_context(self, user: User, graph_id: str, overrides: dict[str, Any] | None) -> Any:
        """The context a run of this graph gets (see the module docstring)."""
        info = self.graphs.get(graph_id, AGENT_GRAPH)
        if info.keel_context:
            return self.build_context(user, overrides)
        overrides = dict(overrides or {})
        identity = sorted(set(overrides) & set(IDENTITY_FIELDS))
        if identity:
            raise ApiError(422, f"context.{identity[0]} cannot be set by a request; the server sets it")
        if info.context_fields is not None:
            overrides = {k: v for k, v in overrides.items() if k in info.context_fields}
            given = {"user_id": user.id, "roles": list(user.roles), "tenant": user.tenant}
            overrides.update({k: v for k, v in given.items() if k in info.context_fields})
        return overrides

    def check_assistant(
        self, user: User, graph_id: str, config: dict[str, Any], context: dict[str, Any]
    ) -> None:
        """Refuse an assistant whose config or context a run request could not have (422)."""
        self.check_config(config)
        self.graph_context(user, graph_id, context)

    def build_context(self, user: User, overrides: dict[str, Any] | None) -> Context:
        """The run's Context: configuration defaults plus the request's allowed overrides (keys that are no
        field of Context are dropped, as langgraph-api drops keys outside a graph's context schema)."""
        ctx = self.default_context(user.id, user.roles, user.tenant)
        overrides = {k: v for k, v in (overrides or {}).items() if k in AGENT_CONTEXT_FIELDS}
        if not overrides:
            return ctx
        unknown = sorted(set(overrides) - REQUEST_CONTEXT_FIELDS)
        if unknown:
            raise ApiError(
                422,
                f"context.{unknown[0]} cannot be set by a request; allowed: "
                f"{', '.join(sorted(REQUEST_CONTEXT_FIELDS))}",
            )
        clean: dict[str, Any] = {}
        for key, value in overrides.items():
            if key == "tools":
                if value is not None and not (
                    isinstance(value, list) and all(isinstance(v, str) for v in value)
                ):
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
                    raise ApiError(
                        422,
                        f"context.{key} must be an integer between 0 and {ceiling} "
                        f"(this server's ceiling, {setting})",
                    )
            clean[key] = value
        return dataclasses.replace(ctx, **clean)

    def ceilings(self) -> dict[str, tuple[int, str]]:
        """Highest value a request may give each integer budget, and the setting that sets it."""
        s = self.settings
        return {
            "max_steps": (s.keel_limit_steps, "KEEL_LIMIT_STEPS"),
            "max_revisions": (s.keel_limit_revisions, "KEEL_LIMIT_REVISIONS"),
            "max_tool_calls": (s.keel_limit_tool_calls, "KEEL_LIMIT_TOOL_CALLS"),
            "retrieve_k": (s.keel_limit_retrieve_k, "KEEL_LIMIT_RETRIEVE_K"),
            "history_tokens": (s.keel_limit_history_tokens, "KEEL_LIMIT_HISTORY_TOKENS"),
        }

    def check_config(self, config: dict[str, Any] | None) -> None:
        """Refuse a request's `config` that would buy more work than this deployment allows."""
        limit = (config or {}).get("recursion_limit")
        if limit is None:
            return
        ceiling = self.settings.keel_limit_recursion
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= ceiling:
            raise ApiError(
                422,
                f"config.recursion_limit must be an integer between 1 and {ceiling} "
                "(this server's ceiling, KEEL_LIMIT_RECURSION)",
            )

    def run_config(
        self,
        body: RunCreate,
        *,
        thread_id: str,
        run_id: str,
        user: User,
        assistant: dict[str, Any],
        run_metadata: dict[str, Any],
    ) -> dict[str, Any]:
        """LangGraph config: thread, checkpoint, limits, and trace metadata (thread_id, run_id, user)."""
        cfg = body.config or {}
        configurable = {
            k: v
            for k, v in (cfg.get("configurable") or {}).items()
            if k not in ("thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map")
        }
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
        metadata = {
            **run_metadata,
            **(cfg.get("metadata") or {}),
            "thread_id": thread_id,
            "run_id": run_id,
            "user_id": user.id,
            "assistant_id": assistant["assistant_id"],
            "graph_id": assistant["graph_id"],
        }
        return {
            "configurable": configurable,
            "run_id": uuid.UUID(run_id),
            "recursion_limit": limit if isinstance(limit, int) and limit > 0 else recursion_limit(max_steps),
            "tags": list(cfg.get("tags") or []),
            "metadata": metadata,
        }
