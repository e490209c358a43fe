"""critique: grade the draft; accept it, send the turn back with a revised query, or stop on budget."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, RemoveMessage, SystemMessage, ToolMessage
from langgraph.runtime import Runtime

from agent.budgets import DONE, finish, next_step
from agent.context import Context
from agent.models import get_chat_model
from agent.prompts import CRITIC_SYSTEM_PROMPT, CRITIC_TEMPLATE
from agent.render import documents_block
from agent.schemas import Critique
from agent.state import Fields, State


def evidence(state: State) -> list[dict[str, Any]]:
    """Passages plus this turn's tool results: everything a draft may rest on."""
    passages = list(state.get("passages", []))
    messages = state.get("messages", [])
    tool_msgs = []
    for msg in reversed(messages):
        if isinstance(msg, HumanMessage):
            break
        if isinstance(msg, ToolMessage) and msg.status != "error":
            tool_msgs.append(msg)
    for i, msg in enumerate(reversed(tool_msgs), start=len(passages) + 1):
        passages.append({"index": i, "source": f"tool:{msg.name}", "heading": "", "text": str(msg.content)})
    return passages


async def critique(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Score the draft with structured output and route the turn."""
    ctx = runtime.context or Context()
    step, over = next_step(state, ctx)
    if over:
        return finish(state, "max_steps", step=step)
    question, draft = state.get("question", ""), state.get("draft", "")
    critic = get_chat_model("critic", ctx).with_structured_output(Critique)
    raw = await critic.ainvoke(
        [
            SystemMessage(content=CRITIC_SYSTEM_PROMPT),
            HumanMessage(
                content=CRITIC_TEMPLATE.format(
                    question=question, draft=draft, documents=documents_block(evidence(state))
                )
            ),
        ]
    )
    # Some providers return dicts for structured output.
    verdict = raw if isinstance(raw, Critique) else Critique.model_validate(raw)
    score = float(verdict.score)
    update: Fields = {"critique": verdict.model_dump(), "steps": step}
    if score > state.get("best_score", -1.0):
        update["best_answer"], update["best_score"] = draft, score
    if score >= ctx.critic_threshold:
        return {**update, "answer": draft, "status": DONE, "phase": DONE}
    if state.get("revisions", 0) < ctx.max_revisions:
        draft_id = state.get("draft_id")
        return {
            **update,
            "messages": [RemoveMessage(id=draft_id)] if draft_id else [],
            "draft_id": "",
            "query": verdict.revised_query.strip() or question,
            "revisions": state.get("revisions", 0) + 1,
            "phase": "revise",
        }
    return {**update, **finish({**state, **update}, "max_revisions", step=step)}
