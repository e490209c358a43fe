"""Built-in read-only tools: safe arithmetic and document search."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from memory.search import search_docs
from tools.registry import ToolContext, ToolRegistry, ToolSpec

Number = float | int
_BINOPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
}
_CONSTS: dict[str, Number] = {"pi": math.pi, "e": math.e}


def safe_eval(expression: str) -> float | int:
    """Evaluate arithmetic without eval(): numbers, + - * / // % **, a few math functions."""
    if len(expression) > 500:
        raise ValueError("expression too long (max 500 characters)")
    tree = ast.parse(expression, mode="eval")

    def ev(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool)
        ):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise ValueError("exponent too large")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTS:
            return _CONSTS[node.id]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
        ):
            return _FUNCS[node.func.id](*(ev(a) for a in node.args))
        raise ValueError(f"unsupported expression element: {ast.dump(node)[:60]}")

    return ev(tree)


class CalculatorInput(BaseModel):
    expression: str = Field(..., min_length=1, description="Arithmetic, e.g. '(2 + 3) * 7' or 'sqrt(2)'")


class CalculatorOutput(BaseModel):
    result: float | int


async def _calculator(args: CalculatorInput, ctx: ToolContext) -> CalculatorOutput:
    try:
        return CalculatorOutput(result=safe_eval(args.expression))
    except ZeroDivisionError as exc:
        raise ValueError("division by zero") from exc
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from exc


class SearchDocsInput(BaseModel):
    query: str = Field(..., min_length=1, description="What to look for in the knowledge base")
    k: int = Field(4, ge=1, le=20, description="How many passages to return")


class SearchDocsOutput(BaseModel):
    hits: list[dict[str, Any]]


async def _search_docs(args: SearchDocsInput, ctx: ToolContext) -> SearchDocsOutput:
    if ctx.store is None:
        return SearchDocsOutput(hits=[])
    hits = await search_docs(ctx.store, args.query, namespace=ctx.namespace, k=args.k)
    return SearchDocsOutput(hits=[{k: h[k] for k in ("source", "heading", "text", "score")} for h in hits])


CALCULATOR = ToolSpec(
    name="calculator",
    version="1",
    description="Evaluate an arithmetic expression exactly.",
    input_model=CalculatorInput,
    output_model=CalculatorOutput,
    func=_calculator,
    side_effect="none",
    timeout_s=5.0,
)
SEARCH_DOCS = ToolSpec(
    name="search_docs",
    version="1",
    description="Search the knowledge base for passages about a topic.",
    input_model=SearchDocsInput,
    output_model=SearchDocsOutput,
    func=_search_docs,
    side_effect="read",
    timeout_s=15.0,
)


def default_registry() -> ToolRegistry:
    """The tools every Keel agent has."""
    from tools.memory_tools import RECALL, REMEMBER
    from tools.tickets import CLOSE_TICKET, CREATE_TICKET, LIST_TICKETS
    from tools.webhook import SEND_WEBHOOK

    return ToolRegistry(
        [CALCULATOR, SEARCH_DOCS, REMEMBER, RECALL, CREATE_TICKET, LIST_TICKETS, CLOSE_TICKET, SEND_WEBHOOK]
    )
