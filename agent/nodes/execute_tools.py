"""execute_tools: govern and run the tool calls of the last model turn, within the tool budget.

Phase 1 (no side effects, safe to re-run on resume): validate, apply policy, look up the ledger.
If any call needs a human, `interrupt()` asks once for all of them (agent-chat-ui HITL shape).
Phase 2: run the approved calls concurrently; each gets exactly one ToolMessage, so call/result
pairs stay intact for the model.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import AIMessage, ToolCall, ToolMessage
from langgraph.config import get_config
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agent.budgets import finish, next_step
from agent.context import Context
from agent.nodes import Node
from agent.state import State
from agent.toolbox import Toolbox
from tools.execute import (
    PreparedCall,
    ToolResult,
    apply_decisions,
    approval_request,
    prepare_call,
    run_prepared,
)
from tools.policy import UserAttrs
from tools.registry import ToolContext


def _message(result: ToolResult) -> ToolMessage:
    return ToolMessage(
        content=result.content,
        tool_call_id=result.tool_call_id,
        name=result.name,
        status=result.status,
        artifact=result.output,
        response_metadata={"tool": result.name, "tool_version": result.version, "replayed": result.replayed},
    )


def _with_edited_args(message: AIMessage | None, prepared: list[PreparedCall]) -> AIMessage | None:
    """The model's tool-call message with the arguments a human edited (None when nothing was edited)."""
    args: dict[str, dict[str, Any]] = {
        p.call_id: p.call.get("args") or {} for p in prepared if p.error is None and p.edited
    }
    if not args or message is None:
        return None

    def edit(call: ToolCall) -> ToolCall:
        call_id = call.get("id")
        return {**call, "args": args[call_id]} if call_id is not None and call_id in args else call

    return message.model_copy(update={"tool_calls": [edit(c) for c in message.tool_calls]})


def make_execute_tools(toolbox: Toolbox) -> Node:
    """The execute_tools node, running the tools of `toolbox` with its services (ledger pool, tool settings)."""

    async def execute_tools(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        """Every tool call gets exactly one ToolMessage; nothing runs before every needed approval is in."""
        ctx = runtime.context or Context()
        last = state["messages"][-1] if state.get("messages") else None
        ai = last if isinstance(last, AIMessage) else None
        calls = list(ai.tool_calls) if ai is not None else []
        step, over = next_step(state, ctx)
        used = state.get("tool_calls", 0)
        room = 0 if over else max(0, ctx.max_tool_calls - used)
        run_now, refused = calls[:room], calls[room:]

        configurable = get_config().get("configurable") or {}
        metadata = get_config().get("metadata") or {}
        thread_id = configurable.get("thread_id")
        tctx = ToolContext(
            user=UserAttrs(ctx.user_id, frozenset(ctx.roles or ()), ctx.tenant),
            namespace=ctx.namespace,
            store=runtime.store,
            thread_id=str(thread_id) if thread_id else None,
            run_id=str(metadata["run_id"]) if metadata.get("run_id") else None,
            pool=toolbox.pool,
            settings=toolbox.settings,
        )
        allowed = set(ctx.tools) if ctx.tools is not None else None
        reg = toolbox.registry
        # Concurrently: each may read the ledger (and reconcile); gather keeps the calls' order.
        prepared: list[PreparedCall] = list(
            await asyncio.gather(
                *(
                    prepare_call(
                        reg, c, tctx, allowed=allowed, checkpoint_ns=configurable.get("checkpoint_ns", "")
                    )
                    for c in run_now
                )
            )
        )
        pending = [p for p in prepared if p.human]
        edited: AIMessage | None = None
        if pending:
            # Resuming returns the human's answer here; on the first pass this stops the run.
            apply_decisions(pending, interrupt(approval_request(pending)))
            edited = _with_edited_args(ai, prepared)
        results = list(await asyncio.gather(*(run_prepared(p, tctx) for p in prepared)))
        budget = "max_steps" if over else "max_tool_calls"
        for c in refused:
            results.append(
                ToolResult(
                    c.get("id") or "",
                    c.get("name", ""),
                    None,
                    "error",
                    f"Error: not executed, the {budget} budget ran out.",
                )
            )
        # An edited call replaces the model's message (same id) first, so the transcript shows what really ran.
        update: dict[str, Any] = {
            "messages": [*([edited] if edited else []), *(_message(r) for r in results)],
            "tool_calls": used + len(run_now),
            "steps": step,
        }
        if refused:
            done = finish(state, budget, step=step)
            update["messages"] += done.pop("messages")
            update.update({k: v for k, v in done.items() if k != "steps"})
        return update

    return execute_tools
