"""Pure policy decisions (ABAC): user attributes x tool spec x arguments -> allow, deny or ask a human.

No I/O here, so every rule is a unit test away from being trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

DecisionKind = Literal["allow", "deny", "approve"]


@dataclass(frozen=True)
class UserAttrs:
    """Who is asking, as the server authenticated them (never taken from the request body)."""

    user_id: str
    roles: frozenset[str] = field(default_factory=frozenset)
    tenant: str | None = None


@dataclass(frozen=True)
class Decision:
    """allow: run it; deny: never run it (the model is told why); approve: a human must decide first."""

    kind: DecisionKind
    reason: str = ""


def decide(user: UserAttrs, spec: Any, args: BaseModel, *, allowed: set[str] | None = None) -> Decision:
    """The decision for one call. `allowed` is the run's tool allowlist."""
    if allowed is not None and spec.name not in allowed:
        return Decision("deny", f"tool {spec.name!r} is not enabled for this run")
    if spec.allowed_roles is not None and not (user.roles & spec.allowed_roles):
        need = ", ".join(sorted(spec.allowed_roles))
        return Decision("deny", f"tool {spec.name!r} requires one of the roles: {need}")
    if spec.allowed_tenants is not None and user.tenant not in spec.allowed_tenants:
        return Decision("deny", f"tool {spec.name!r} is not available to your tenant")
    rule = spec.needs_approval
    needs = bool(rule(args, user)) if callable(rule) else bool(rule)
    if needs:
        return Decision(
            "approve", f"tool {spec.name!r} changes things outside the conversation; a human approves it"
        )
    return Decision("allow")
