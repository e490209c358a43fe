"""summarize: draft an answer from the passages, or ask for tools."""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable
from langgraph.runtime import Runtime

from agent.budgets import finish, next_step
from agent.context import Context
from agent.history import apply_fold, fold_history
from agent.models import get_chat_model, store_embeddings
from agent.nodes import Node
from agent.offline.semantic import EmbeddingCache
from agent.render import build_prompt
from agent.state import State
from tools.registry import ToolRegistry


def make_summarize(registry: ToolRegistry, cache: EmbeddingCache | None = None) -> Node:
    """The summarize node, offering the model the tools of `registry` (read at each call, so tools registered
    after the graph is built are offered too); the offline engine keeps its sentence vectors in `cache`."""

    async def summarize(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        """Fold turns over the history budget (agent/history), then call the answering model once; a text reply
        is a draft for the critic."""
        ctx = runtime.context or Context()
        step, over = next_step(state, ctx)
        if over:
            return finish(state, "max_steps", step=step)
        base = get_chat_model("answer", ctx, embeddings=store_embeddings(runtime.store, cache))
        messages = list(state.get("messages", []))
        folded = None
        if ctx.history == "summarize":
            folded = await fold_history(
                messages,
                state.get("summary", ""),
                base,
                budget=ctx.history_tokens,
                summary_tokens=ctx.summary_tokens,
            )
        view: State = (
            state
            if folded is None
            else {**state, "summary": folded["summary"], "messages": apply_fold(messages, folded)}
        )
        model: Runnable[LanguageModelInput, AIMessage] = base
        tools = registry.select(ctx.tools)
        if tools and state.get("tool_calls", 0) < ctx.max_tool_calls:
            model = base.bind_tools([t.model_tool() for t in tools])
        response = await model.ainvoke(build_prompt(view, ctx.history_tokens))
        if not isinstance(response, AIMessage):  # pragma: no cover - defensive for odd providers
            response = AIMessage(content=str(getattr(response, "content", response)))
        if not response.id:
            response.id = f"ai-{uuid.uuid4()}"
        update: dict[str, Any] = {"messages": [response], "steps": step}
        if folded is not None:
            update.update(summary=folded["summary"], messages=[*folded["messages"], response])
        if response.tool_calls:
            return update
        return {**update, "draft": str(response.text), "draft_id": response.id}

    return summarize
