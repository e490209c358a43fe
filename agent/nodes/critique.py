"""critique: judge whether the draft answers the question; accept it, revise the retrieval, or end the turn.

The verdict (agent/schemas.Critique) says whether the draft answers the question, whether it is grounded and
whether it abstains. A draft that answers, grounded, at or above the threshold ends the turn `done`. A draft
that abstains gets one widened retrieval (the retrieve node searches hybrid and full-text in turns, twice k, on a
revision, with the critic's rewritten query); if that still finds nothing, the turn ends `not_found` with the plain
"could not find" answer, never a quote of unrelated text. Other weak drafts are revised while revisions
remain, then the best one ends the turn `budget_exhausted:max_revisions`.
"""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage, SystemMessage, ToolMessage
from langgraph.runtime import Runtime

from agent.budgets import DONE, finish, next_step
from agent.context import Context
from agent.models import get_chat_model, store_embeddings
from agent.nodes import Node
from agent.offline.semantic import EmbeddingCache
from agent.prompts import CRITIC_CONTEXT, CRITIC_SYSTEM_PROMPT, CRITIC_TEMPLATE
from agent.render import documents_block
from agent.schemas import Critique
from agent.state import Fields, State

NOT_FOUND = "not_found"
"""Status of a turn that ends because the documents do not answer the question."""


def earlier_question(messages: list[Any]) -> str:
    """The conversation's previous question (the human message before this turn's), "" if none."""
    humans = [m for m in messages if isinstance(m, HumanMessage)]
    if len(humans) < 2:
        return ""
    content = humans[-2].content
    return content if isinstance(content, str) else " ".join(str(p) for p in content)


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


def make_critique(cache: EmbeddingCache | None = None) -> Node:
    """The critique node; the offline critic reads sentence vectors from `cache` (the answer put them there)."""

    async def critique(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        """Judge the draft with structured output and route the turn."""
        ctx = runtime.context or Context()
        step, over = next_step(state, ctx)
        if over:
            return finish(state, "max_steps", step=step)
        question, draft = state.get("question", ""), state.get("draft", "")
        earlier = earlier_question(state.get("messages", []))
        critic = get_chat_model(
            "critic", ctx, embeddings=store_embeddings(runtime.store, cache)
        ).with_structured_output(Critique)
        prompt = CRITIC_TEMPLATE.format(
            question=question, draft=draft, documents=documents_block(evidence(state))
        )
        if earlier:
            prompt = CRITIC_CONTEXT.format(earlier=earlier) + prompt
        raw = await critic.ainvoke(
            [SystemMessage(content=CRITIC_SYSTEM_PROMPT), HumanMessage(content=prompt)]
        )
        # Some providers return dicts for structured output.
        verdict = raw if isinstance(raw, Critique) else Critique.model_validate(raw)
        score = 0.0 if verdict.abstained else float(verdict.score)
        update: Fields = {"critique": verdict.model_dump(), "steps": step}
        if score > state.get("best_score", -1.0):
            update["best_answer"], update["best_score"] = draft, score
        if (
            verdict.answers_question
            and verdict.grounded
            and not verdict.abstained
            and score >= ctx.critic_threshold
        ):
            return {**update, "answer": draft, "status": DONE, "phase": DONE}
        revisions = state.get("revisions", 0)
        # An abstention gets one widened retrieval; a weak answer every revision the budget allows.
        if revisions < ctx.max_revisions and not (verdict.abstained and revisions >= 1):
            draft_id = state.get("draft_id")
            return {
                **update,
                "messages": [RemoveMessage(id=draft_id)] if draft_id else [],
                "draft_id": "",
                "query": verdict.revised_query.strip() or question,
                "revisions": revisions + 1,
                "phase": "revise",
            }
        if verdict.abstained and state.get("best_score", -1.0) <= 0.0:
            # Nothing retrieved answers the question: say so plainly. Like a turn that ends on a budget, the turn
            # ends with a final message of its own (the draft it replaces said the same).
            draft_id = state.get("draft_id")
            final = AIMessage(content=draft, id=f"final-{uuid.uuid4()}")
            return {
                **update,
                "messages": [*([RemoveMessage(id=draft_id)] if draft_id else []), final],
                "draft_id": "",
                "answer": draft,
                "status": NOT_FOUND,
                "phase": DONE,
            }
        return {**update, **finish({**state, **update}, "max_revisions", step=step)}

    return critique
