"""The researcher specialist: a compiled subgraph (retrieve -> draft -> self-check) exposed as a tool.

Manager -> Specialist: the main agent calls `researcher` like any tool. It runs inside the parent run
(same thread, checkpointed under the parent's namespace, its own subtree in traces), counts as one tool
call of the parent's budget, and has a small step budget of its own.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from agent.context import Context
from agent.models import get_chat_model
from agent.prompts import CRITIC_SYSTEM_PROMPT, CRITIC_TEMPLATE, SYSTEM_PROMPT
from agent.render import documents_block
from agent.schemas import Critique
from memory.search import search_docs
from tools.registry import ToolContext, ToolSpec


class ResearchIn(TypedDict):
    """What the manager asks."""

    question: str
    """The research question."""


class ResearchOut(ResearchIn, total=False):
    """What the specialist reports back: the question these findings answer (the tool checks it is the one it
    asked), and the findings."""

    findings: str
    """A cited summary."""
    score: float
    """The specialist's own support/coverage check (0..1)."""
    sources: list[dict[str, Any]]
    """Passages used: index, source, heading."""


class ResearchState(ResearchOut, total=False):
    passages: list[dict[str, Any]]
    """Retrieved passages."""


async def r_retrieve(state: ResearchState, runtime: Runtime[Context]) -> dict[str, Any]:
    """The first node: every per-question field starts over from this invocation's question."""
    ctx = runtime.context or Context()
    hits = []
    if runtime.store is not None:
        hits = await search_docs(runtime.store, state["question"], namespace=ctx.namespace, k=ctx.retrieve_k)
    passages = [{"index": i, **h} for i, h in enumerate(hits, start=1)]
    return {
        "passages": passages,
        "findings": "",
        "score": 0.0,
        "sources": [{k: p.get(k) for k in ("index", "source", "heading")} for p in passages],
    }


async def r_draft(state: ResearchState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context or Context()
    reply = await get_chat_model("answer", ctx).ainvoke(
        [
            SystemMessage(content=SYSTEM_PROMPT),
            HumanMessage(content=documents_block(state.get("passages", [])), name="retrieved_documents"),
            HumanMessage(content=state["question"]),
        ]
    )
    return {"findings": str(reply.text)}


async def r_check(state: ResearchState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context or Context()
    verdict = (
        await get_chat_model("critic", ctx)
        .with_structured_output(Critique)
        .ainvoke(
            [
                SystemMessage(content=CRITIC_SYSTEM_PROMPT),
                HumanMessage(
                    content=CRITIC_TEMPLATE.format(
                        question=state["question"],
                        draft=state.get("findings", ""),
                        documents=documents_block(state.get("passages", [])),
                    )
                ),
            ]
        )
    )
    if isinstance(verdict, Critique):
        score = verdict.score
    elif isinstance(verdict, dict):  # some providers return dicts for structured output
        score = verdict["score"]
    else:  # pragma: no cover - with_structured_output(Critique) returns one of the two
        raise TypeError(f"the critic returned {type(verdict).__name__}, not a Critique")
    return {"score": float(score)}


_b = StateGraph(ResearchState, context_schema=Context, input_schema=ResearchIn, output_schema=ResearchOut)
_b.add_node("research_retrieve", r_retrieve)
_b.add_node("research_draft", r_draft)
_b.add_node("research_check", r_check)
_b.add_edge(START, "research_retrieve")
_b.add_edge("research_retrieve", "research_draft")
_b.add_edge("research_draft", "research_check")
_b.add_edge("research_check", END)
researcher_graph = _b.compile(name="researcher")
# The same graph without checkpoints, for a call that must not continue a checkpoint (see _research).
_unsaved_researcher = _b.compile(name="researcher", checkpointer=False)


class ResearchInput(BaseModel):
    question: str = Field(
        ..., min_length=1, max_length=1000, description="What to research in the knowledge base"
    )


class ResearchOutput(BaseModel):
    findings: str
    score: float
    sources: list[dict[str, Any]]


async def _research(args: ResearchInput, ctx: ToolContext) -> ResearchOutput:
    # Invoked inside the execute_tools node: LangGraph runs it as a subgraph of the parent run (its
    # checkpoints live under the parent's namespace; its trace is a subtree of the parent's).
    out = await researcher_graph.ainvoke({"question": args.question}, {"recursion_limit": 10})
    if out.get("question") != args.question:
        # A resumed parent run resumes its subgraph calls by their order within the task, not by their input:
        # this call was handed another call's checkpoint (the calls ran in another order before the
        # interruption). Those findings answer another question; research this one afresh.
        out = await _unsaved_researcher.ainvoke({"question": args.question}, {"recursion_limit": 10})
    return ResearchOutput(
        findings=out.get("findings", ""), score=out.get("score", 0.0), sources=out.get("sources", [])
    )


RESEARCHER = ToolSpec(
    name="researcher",
    version="1",
    description="A research specialist: searches the knowledge base, drafts cited findings and checks them.",
    input_model=ResearchInput,
    output_model=ResearchOutput,
    func=_research,
    side_effect="read",
    timeout_s=120.0,
)
