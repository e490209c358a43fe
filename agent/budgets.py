"""Budget bookkeeping shared by the nodes: count steps, and end a turn cleanly when a budget runs out."""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.messages import AIMessage, RemoveMessage

from agent.context import Context
from agent.prompts import BUDGET_NOTE, NO_ANSWER
from agent.state import State

RUNNING = "running"
DONE = "done"


def exhausted(budget: str) -> str:
    """The status a turn ends with when `budget` runs out."""
    return f"budget_exhausted:{budget}"


def next_step(state: State, ctx: Context, *, new_turn: bool = False) -> tuple[int, bool]:
    """The step number this node execution uses, and whether it is over the step budget."""
    step = (0 if new_turn else state.get("steps", 0)) + 1
    return step, step > ctx.max_steps


def finish(state: State, budget: str, *, step: int, drop_draft: bool = True) -> dict[str, Any]:
    """End the turn with the best answer so far and a status naming the budget that ran out."""
    best = state.get("best_answer") or state.get("draft") or ""
    messages: list[Any] = []
    draft_id = state.get("draft_id")
    if drop_draft and draft_id:
        messages.append(RemoveMessage(id=draft_id))
    text = (best + BUDGET_NOTE.format(budget=budget)) if best else NO_ANSWER.format(budget=budget)
    messages.append(AIMessage(content=text, id=f"final-{uuid.uuid4()}"))
    return {
        "messages": messages,
        "answer": text,
        "status": exhausted(budget),
        "phase": DONE,
        "steps": step,
        "draft_id": "",
    }
