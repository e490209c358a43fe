"""Request planning, pure: a run request in, a validated plan out (or a 422). No database, no service.

The run manager plans a request once, when the run is created (so a bad request never reaches the queue), and
stores the request in the run's kwargs. The executor plans the same stored request again with the same
planner to get the graph input, context and LangGraph config back (Python objects a JSON column cannot hold);
the answer cannot differ, since nothing here reads anything but the request, the settings and the graph's
node names.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from langgraph.types import Command, Send

from agent.context import Context
from agent.graph import recursion_limit
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


class AssistantResolver(Protocol):
    def resolve(self, ident: str, *, for_run: bool = False) -> dict[str, Any]: ...


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

    def __init__(self, settings: Settings, assistants: AssistantResolver, node_names: set[str]) -> None:
        self.settings = settings
        self.assistants = assistants
        self.node_names = node_names

    @property
    def default_durability(self) -> str:
        return self.settings.keel_durability

    def plan(self, user: User, body: RunCreate) -> Plan:
        """Validate everything that can be validated before touching the database."""
        assistant = self.assistants.resolve(body.assistant_id, for_run=True)
        modes = body.modes()
        bad = [m for m in modes if m not in SUPPORTED_MODES]
        if bad:
            raise ApiError(
                422, f"Unsupported stream_mode {bad[0]!r}; supported: {', '.join(sorted(SUPPORTED_MODES))}"
            )
        context = self.build_context(user, body.context)
        self.check_config(body.config)
        command = command_of(body)
        graph_input = command if command is not None else body.input
        for name, nodes in (
            ("interrupt_before", body.interrupt_before),
            ("interrupt_after", body.interrupt_after),
        ):
            if isinstance(nodes, list):
                unknown = [n for n in nodes if n not in self.node_names]
                if unknown:
                    raise ApiError(422, f"{name}: unknown node {unknown[0]!r}")
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

    def build_context(self, user: User, overrides: dict[str, Any] | None) -> Context:
        """The run's Context: configuration defaults plus the request's allowed overrides."""
        ctx = self.default_context(user.id, user.roles, user.tenant)
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
