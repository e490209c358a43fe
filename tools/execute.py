"""Run tool calls: validate, decide (policy), ask humans when needed, execute at most once, audit.

Two phases, because a node that interrupts re-runs from its first line on resume:
1. `prepare_call` only reads (registry, schema validation, policy, ledger lookup, reconcile), so it may
   run any number of times. Calls that need a human are collected into one approval request.
2. `run_prepared` executes. Side-effecting tools go through the ledger keyed by idempotency key: a
   recorded result is replayed, an attempt whose outcome is unknown is never blindly retried.
Every failure comes back as a result the model can read, never as a crash.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypedDict

from langsmith.run_helpers import trace as _trace
from pydantic import BaseModel, ValidationError

from tools import audit, ledger
from tools.policy import Decision, UserAttrs, decide
from tools.registry import ToolContext, ToolRegistry, ToolSpec, args_hash


@dataclass
class ToolResult:
    """The outcome of one call, ready to become a ToolMessage."""

    tool_call_id: str
    name: str
    version: str | None
    status: str  # "success" | "error"
    content: str
    output: Any = None
    replayed: bool = False


AuditDecision = Literal["allow", "deny", "approve", "approved", "denied", "rejected", "invalid"]
"""What the audit trail records as the decision on a call: the policy's, or a human's, or "invalid"."""


class AuditBase(TypedDict):
    """The audit fields every record of one call shares."""

    user_id: str
    tool: str
    version: str | None
    args_hash: str | None
    thread_id: str | None
    run_id: str | None


@dataclass
class PreparedCall:
    """A call after validation, policy and ledger lookup; nothing has been executed."""

    call: Mapping[str, Any]
    """The model's tool call (a langchain ToolCall, or the same keys from MCP): name, args, id."""
    spec: ToolSpec | None = None
    args: BaseModel | None = None
    error: str | None = None
    decision: Decision | None = None
    key: str | None = None
    row: ledger.LedgerRow | None = None
    reconciled: Any = None
    human: str | None = None  # "approval" | "unknown_outcome": a human must decide
    approved_by_human: bool = False
    edited: bool = False  # a human changed the arguments before approving
    rejected: bool = False  # a human rejected the call
    retry_started: bool = False  # reconciled: the interrupted attempt did not take effect, so run it again
    notes: list[str] = field(default_factory=list)

    @property
    def call_id(self) -> str:
        return str(self.call.get("id") or "")

    @property
    def name(self) -> str:
        return str(self.call.get("name", ""))


def _validation_text(name: str, exc: ValidationError) -> str:
    errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors())
    return f"Error: invalid arguments for {name}: {errs}"


async def prepare_call(
    registry: ToolRegistry,
    call: Mapping[str, Any],
    ctx: ToolContext,
    *,
    allowed: set[str] | None = None,
    checkpoint_ns: str = "",
) -> PreparedCall:
    """Validate and decide one call without side effects."""
    p = PreparedCall(call=call)
    spec = registry.get(p.name)
    if spec is None:
        p.error = f"Error: unknown tool {p.name!r}."
        return p
    p.spec = spec
    try:
        p.args = spec.input_model.model_validate(call.get("args") or {})
    except ValidationError as exc:
        p.error = _validation_text(spec.name, exc)
        return p
    p.decision = decide(ctx.user, spec, p.args, allowed=allowed)
    if p.decision.kind == "deny":
        p.error = f"Error: denied: {p.decision.reason}"
        return p
    if spec.has_effects:
        p.key = ledger.make_key(ctx.thread_id, checkpoint_ns, p.call_id)
        if ctx.pool is None:
            p.error = (
                f"Error: {spec.name} needs Keel's database (its side-effect ledger); not available here."
            )
            return p
        p.row = await ledger.get(ctx.pool, p.key)
        if p.row is not None and p.row.status in ("succeeded", "failed"):
            return p  # recorded: replay it, even if approval would be needed for a new call
        if p.row is not None and p.row.status == "started":
            if spec.reconcile is not None:
                p.reconciled = await spec.reconcile(p.args, replace(ctx, idempotency_key=p.key))
                if p.reconciled is None:
                    p.retry_started = True
                    p.notes.append("reconciled: the interrupted attempt did not take effect")
                return p
            p.human = "unknown_outcome"
            return p
    if p.decision.kind == "approve":
        p.human = "approval"
    return p


def approval_request(calls: list[PreparedCall]) -> dict[str, Any]:
    """The interrupt payload, in the agent-chat-ui human-in-the-loop shape."""
    requests, configs = [], []
    for p in calls:
        if p.human == "unknown_outcome":
            desc = (
                f"The outcome of an earlier {p.name} call is unknown (its worker stopped during the call). "
                "Approve to try it again (it may then happen twice), or reject to record it as not done."
            )
            allowed = ["approve", "reject"]
        else:
            desc = f"{p.spec.description} ({p.decision.reason})" if p.spec and p.decision else p.name
            allowed = ["approve", "edit", "reject"]
        requests.append(
            {"name": p.name, "args": p.call.get("args") or {}, "description": desc, "tool_call_id": p.call_id}
        )
        configs.append({"action_name": p.name, "allowed_decisions": allowed})
    return {"action_requests": requests, "review_configs": configs}


def apply_decisions(calls: list[PreparedCall], response: Any) -> None:
    """Apply a human's {"decisions": [...]} (one per action request, in order) to the pending calls."""
    decisions = response.get("decisions") if isinstance(response, dict) else None
    if not isinstance(decisions, list) or len(decisions) != len(calls):
        for p in calls:
            p.error = "Error: not executed: the approval response did not contain one decision per action."
        return
    for p, d in zip(calls, decisions, strict=True):
        kind = d.get("type") if isinstance(d, dict) else None
        if kind == "approve":
            p.approved_by_human = True
        elif kind == "edit" and p.human == "approval":
            edited = d.get("edited_action") or {}
            if edited.get("name", p.name) != p.name:
                p.error = "Error: not executed: an edit may change the arguments, not the tool."
                continue
            if p.spec is None:  # unreachable: only a call that passed preparation asks for approval
                p.error = f"Error: not executed: unknown tool {p.name!r}."
                continue
            try:
                p.args = p.spec.input_model.model_validate(edited.get("args") or {})
            except ValidationError as exc:
                p.error = _validation_text(p.name, exc) + " (edited by a human)"
                continue
            p.call = {**p.call, "args": edited.get("args") or {}}
            p.approved_by_human = p.edited = True
            p.notes.append("arguments edited by a human")
        elif kind == "reject":
            msg = d.get("message") or "do not retry it unless the user asks"
            p.error = f"Error: a human rejected this {p.name} call: {msg}"
            p.rejected = True
        else:
            p.error = f"Error: not executed: unsupported decision {kind!r}."


def _render(output: Any) -> tuple[str, Any]:
    data = output.model_dump(mode="json") if isinstance(output, BaseModel) else output
    if isinstance(data, dict) and set(data) == {"result"}:
        return str(data["result"]), data
    return json.dumps(data, ensure_ascii=False, default=str), data


async def _attempts(spec: ToolSpec, args: BaseModel, ctx: ToolContext) -> Any:
    """Call the tool with its timeout, retrying transient errors by its retry policy (same key)."""
    delay = spec.retry.initial_s
    for attempt in range(1, spec.retry.max_attempts + 1):
        try:
            if spec.transactional:
                async with ctx.pool.connection() as conn, conn.transaction():
                    out = await asyncio.wait_for(
                        spec.func(args, replace(ctx, conn=conn)), timeout=spec.timeout_s
                    )
                    if ctx.idempotency_key is not None:  # a call without a ledger row has none to update
                        _, data = _render(out)
                        await ledger.succeed(conn, ctx.idempotency_key, data)
                    return out
            return await asyncio.wait_for(spec.func(args, ctx), timeout=spec.timeout_s)
        except Exception as exc:
            if attempt < spec.retry.max_attempts and spec.retry.retry_on(exc):
                await asyncio.sleep(delay)
                delay *= spec.retry.backoff
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


async def run_prepared(p: PreparedCall, ctx: ToolContext) -> ToolResult:
    """Execute one prepared call; every outcome is audited and returned as a result."""
    spec = p.spec
    version = spec.version if spec else None
    h = args_hash(p.args) if p.args is not None else None
    base = AuditBase(
        user_id=ctx.user_id,
        tool=p.name,
        version=version,
        args_hash=h,
        thread_id=ctx.thread_id,
        run_id=ctx.run_id,
    )
    decision: AuditDecision = (
        "approved" if p.approved_by_human else (p.decision.kind if p.decision else "invalid")
    )
    if p.error is not None:
        if p.key and p.rejected and p.human == "unknown_outcome":
            await ledger.fail(ctx.pool, p.key, "a human recorded the unknown outcome as not done")
        if p.decision is not None and p.decision.kind == "deny":
            decision = "denied"
        elif p.rejected:
            decision = "rejected"
        await audit.record(ctx.pool, **base, decision=decision, outcome="not executed", detail=p.error)
        return ToolResult(p.call_id, p.name, version, "error", p.error)
    assert spec is not None and p.args is not None
    if spec.has_effects:
        return await _run_with_ledger(p, ctx, base, decision)
    try:
        out = await _traced(spec, p, ctx, _attempts(spec, p.args, ctx))
    except Exception as exc:
        return await _error(p, ctx, base, decision, exc)
    content, data = _render(out)
    await audit.record(ctx.pool, **base, decision=decision, outcome="succeeded")
    return ToolResult(p.call_id, p.name, version, "success", content, data)


async def _traced(spec: ToolSpec, p: PreparedCall, ctx: ToolContext, coro: Awaitable[Any]) -> Any:
    """Each tool execution as a run of its own in the trace (a no-op unless LangSmith tracing is on)."""
    with _trace(
        spec.name,
        run_type="tool",
        inputs=p.call.get("args") or {},
        metadata={
            "tool_version": spec.version,
            "side_effect": spec.side_effect,
            "idempotency_key": p.key,
            "thread_id": ctx.thread_id,
        },
    ) as rt:
        try:
            out = await coro
        except BaseException as exc:
            rt.end(error=f"{type(exc).__name__}: {exc}")
            raise
        rt.end(outputs={"output": _render(out)[1]})
        return out


async def _error(
    p: PreparedCall, ctx: ToolContext, base: AuditBase, decision: AuditDecision, exc: BaseException
) -> ToolResult:
    spec = p.spec
    if isinstance(exc, TimeoutError) and spec is not None:
        text = f"Error: {p.name} timed out after {spec.timeout_s:g}s"
    else:
        text = f"Error: {p.name} failed: {exc}"
    await audit.record(ctx.pool, **base, decision=decision, outcome="failed", detail=text)
    return ToolResult(p.call_id, p.name, spec.version if spec else None, "error", text)


def _ready(p: PreparedCall) -> tuple[ToolSpec, BaseModel, str]:
    """The spec, validated arguments and ledger key of a call that passed preparation."""
    if p.spec is None or p.args is None or p.key is None:
        raise RuntimeError(f"tool call {p.call_id!r} was not prepared for execution")
    return p.spec, p.args, p.key


async def _run_with_ledger(
    p: PreparedCall, ctx: ToolContext, base: AuditBase, decision: AuditDecision
) -> ToolResult:
    spec, args, key = _ready(p)
    row = p.row
    if row is None:
        row = await ledger.start(
            ctx.pool,
            key,
            thread_id=ctx.thread_id,
            run_id=ctx.run_id,
            tool=spec.name,
            version=spec.version,
            args=args.model_dump(mode="json"),
            args_hash=args_hash(args),
        )
    if row is not None and row.status == "succeeded":
        await audit.record(ctx.pool, **base, decision=decision, outcome="replayed", detail=f"key {key}")
        content, data = _render(row.result)
        return ToolResult(p.call_id, p.name, spec.version, "success", content, data, replayed=True)
    if row is not None and row.status == "failed":
        await audit.record(ctx.pool, **base, decision=decision, outcome="replayed failure", detail=row.error)
        return ToolResult(p.call_id, p.name, spec.version, "error", f"Error: {p.name} failed: {row.error}")
    if row is not None and row.status == "started":
        if p.reconciled is not None:
            content, data = _render(p.reconciled)
            async with ctx.pool.connection() as conn:
                await ledger.succeed(conn, key, data)
            await audit.record(ctx.pool, **base, decision=decision, outcome="reconciled: had taken effect")
            return ToolResult(p.call_id, p.name, spec.version, "success", content, data, replayed=True)
        if not (p.approved_by_human or p.retry_started):
            # Started by someone else just now (a concurrent duplicate): never run it twice.
            await audit.record(ctx.pool, **base, decision=decision, outcome="skipped: in progress elsewhere")
            return ToolResult(
                p.call_id,
                p.name,
                spec.version,
                "error",
                f"Error: this {p.name} call is already being executed; its outcome is not known yet.",
            )
        await ledger.retry_started(ctx.pool, key)
    tctx = replace(ctx, idempotency_key=key)
    try:
        out = await _traced(spec, p, tctx, _attempts(spec, args, tctx))
    except Exception as exc:
        # A transactional tool rolled back: nothing happened, so the failure is final and safe to record.
        # Any other tool may have acted before failing: unless it is a plain error, its outcome is unknown.
        if spec.transactional or not isinstance(exc, TimeoutError):
            await ledger.fail(ctx.pool, key, f"{type(exc).__name__}: {exc}")
        return await _error(p, ctx, base, decision, exc)
    content, data = _render(out)
    if not spec.transactional:
        async with ctx.pool.connection() as conn:
            await ledger.succeed(conn, key, data)
    await audit.record(ctx.pool, **base, decision=decision, outcome="succeeded", detail=f"key {key}")
    return ToolResult(p.call_id, p.name, spec.version, "success", content, data)


async def execute_tool_call(
    registry: ToolRegistry,
    call: dict[str, Any],
    ctx: ToolContext,
    allowed: set[str] | None = None,
    *,
    caller_approves: bool = False,
    refusal: str | None = None,
) -> ToolResult:
    """One call end to end where no human can answer an interrupt (MCP, scripts). An approval-gated call runs
    only when the caller may approve its own calls (`caller_approves`); otherwise it is refused with `refusal`."""
    p = await prepare_call(registry, call, ctx, allowed=allowed)
    if p.human == "approval" and caller_approves:
        p.human, p.approved_by_human = None, True
        p.notes.append("approved by the caller")
    elif p.human == "approval":
        p.error = refusal or f"Error: {p.name} needs a human's approval, which cannot be asked for here."
    elif p.human == "unknown_outcome":
        p.error = f"Error: the outcome of an earlier {p.name} call with this key is unknown."
    return await run_prepared(p, ctx)


__all__ = [
    "PreparedCall",
    "ToolResult",
    "UserAttrs",
    "apply_decisions",
    "approval_request",
    "execute_tool_call",
    "prepare_call",
    "run_prepared",
]
