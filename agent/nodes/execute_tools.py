"""execute_tools: run the tool calls of the last model turn, concurrently, within the tool budget."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.config import get_config
from langgraph.runtime import Runtime

from agent.budgets import finish, next_step
from agent.context import Context
from agent.state import State
from agent.toolbox import registry
from tools.execute import ToolResult, execute_tool_call
from tools.registry import ToolContext


def _message(result: ToolResult) -> ToolMessage:
    return ToolMessage(
        content=result.content, tool_call_id=result.tool_call_id, name=result.name, status=result.status,
        artifact=result.output, response_metadata={"tool": result.name, "tool_version": result.version},
    )


async def execute_tools(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Every tool call gets exactly one ToolMessage, so call/result pairs stay intact."""
    ctx = runtime.context or Context()
    last = state["messages"][-1] if state.get("messages") else None
    calls = list(last.tool_calls) if isinstance(last, AIMessage) else []
    step, over = next_step(state, ctx)
    used = state.get("tool_calls", 0)
    room = 0 if over else max(0, ctx.max_tool_calls - used)
    run_now, refused = calls[:room], calls[room:]

    thread_id = (get_config().get("configurable") or {}).get("thread_id")
    tctx = ToolContext(user_id=ctx.user_id, namespace=ctx.namespace, store=runtime.store,
                       thread_id=str(thread_id) if thread_id else None)
    allowed = set(ctx.tools) if ctx.tools is not None else None
    results = await asyncio.gather(*(execute_tool_call(registry(), c, tctx, allowed) for c in run_now))
    budget = "max_steps" if over else "max_tool_calls"
    for c in refused:
        results.append(ToolResult(c.get("id") or "", c.get("name", ""), None, "error",
                                  f"Error: not executed, the {budget} budget ran out."))
    update: dict[str, Any] = {"messages": [_message(r) for r in results], "tool_calls": used + len(run_now),
                              "steps": step}
    if refused:
        done = finish(state, budget, step=step)
        update["messages"] += done.pop("messages")
        update.update({k: v for k, v in done.items() if k != "steps"})
    return update
