"""A 4-node linear graph (a -> b -> c -> d) whose steps do what the input's `plan` says.

Used by the fault tests and the benchmarks through `KEEL_GRAPH=tests.support.fault_graph:build`, which the server
calls with its `Toolbox`: the graph registers its test tools there and runs them with the toolbox's pool.
With an empty plan it is the no-op 4-node graph. Per node, the plan may ask it to:
  touch: a file path; the node appends "<pid>\n" when it starts (tests watch it to time signals)
  sleep: seconds of `await asyncio.sleep` (an async step)
  block: seconds of `time.sleep` (blocks the event loop, like a bad SDK call)
  kill: "always" (SIGKILL its own process every time it runs)
  interrupt: true (ask for human input; the resume value is recorded)
  effects: a list of tool calls through Keel's governed tool path (ledger, audit, approvals), each
    {"id": call id, "reconcile": bool (default true), "kill_after": marker path (SIGKILL once, right
     after the external effect and before its result is recorded), "fail": "transient:N" | "permanent",
     "comp_kill": marker path (SIGKILL once inside this effect's compensation, before it commits)}
  fail: true (raise a permanent error after the node's effects: the run fails, sagas compensate)
Every execution of a node is recorded as an effect in the store under ("effects", thread_id), so tests
count executions against Postgres rather than trusting logs.
"""

from __future__ import annotations

import asyncio
import operator
import os
import signal
import time
import uuid
from typing import Annotated, Any

from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from pydantic import BaseModel
from typing_extensions import TypedDict

from agent.toolbox import Toolbox
from tools.execute import apply_decisions, approval_request, prepare_call, run_prepared
from tools.policy import UserAttrs
from tools.registry import ToolContext, ToolRegistry, ToolRetry, ToolSpec, TransientToolError

NODES = ("a", "b", "c", "d")

# --- test tools: an "external" effect recorded in fault_effects, so tests count effects in Postgres ----------

_TABLE = (
    "CREATE TABLE IF NOT EXISTS fault_effects (id bigserial PRIMARY KEY, key text NOT NULL, kind text NOT NULL, "
    "pid integer NOT NULL, at timestamptz NOT NULL DEFAULT now())"
)


class FxInput(BaseModel):
    label: str = "x"
    kill_after: str | None = None
    fail: str | None = None
    comp_kill: str | None = None
    counter: str | None = None


class FxOutput(BaseModel):
    key: str
    label: str


async def _record(pool, key: str, kind: str, conn=None) -> None:
    if conn is not None:
        await conn.execute(_TABLE)
        await conn.execute(
            "INSERT INTO fault_effects (key, kind, pid) VALUES (%s, %s, %s)", (key, kind, os.getpid())
        )
        return
    async with pool.connection() as c:
        await c.execute(_TABLE)
        await c.execute(
            "INSERT INTO fault_effects (key, kind, pid) VALUES (%s, %s, %s)", (key, kind, os.getpid())
        )


def _once(marker: str | None) -> bool:
    """True the first time a marker is seen (creates it)."""
    if not marker or os.path.exists(marker):
        return False
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    return True


async def _fx(args: FxInput, ctx: ToolContext) -> FxOutput:
    if args.counter:
        with open(args.counter, "a") as f:
            f.write("x")
        calls = len(open(args.counter).read())
        if args.fail and args.fail.startswith("transient:") and calls <= int(args.fail.split(":")[1]):
            raise TransientToolError(f"injected transient failure {calls}")
    if args.fail == "permanent":
        raise ValueError("injected permanent failure")
    await _record(ctx.pool, ctx.idempotency_key, "effect")
    if _once(args.kill_after):
        os.kill(os.getpid(), signal.SIGKILL)  # the effect happened; its result is not recorded
    return FxOutput(key=ctx.idempotency_key, label=args.label)


async def _fx_reconcile(args: FxInput, ctx: ToolContext) -> FxOutput | None:
    async with ctx.pool.connection() as c:
        await c.execute(_TABLE)
        row = await (
            await c.execute(
                "SELECT 1 FROM fault_effects WHERE key = %s AND kind = 'effect'", (ctx.idempotency_key,)
            )
        ).fetchone()
    return FxOutput(key=ctx.idempotency_key, label=args.label) if row else None


async def _fx_undo(args: FxInput, result: dict, ctx: ToolContext) -> None:
    await _record(ctx.pool, result["key"], "compensation", conn=ctx.conn)
    if _once(args.comp_kill):
        os.kill(os.getpid(), signal.SIGKILL)  # mid-compensation: the transaction above never commits


FX = ToolSpec(
    name="fx",
    version="1",
    description="test effect (reconcilable)",
    input_model=FxInput,
    output_model=FxOutput,
    func=_fx,
    side_effect="external",
    reconcile=_fx_reconcile,
    compensator=_fx_undo,
    retry=ToolRetry(max_attempts=3, initial_s=0.05),
    mcp=False,
)
FX_NO_RECONCILE = ToolSpec(
    name="fx_noreconcile",
    version="1",
    description="test effect (outcome unknowable)",
    input_model=FxInput,
    output_model=FxOutput,
    func=_fx,
    side_effect="external",
    compensator=_fx_undo,
    mcp=False,
)
TOOLS = (FX, FX_NO_RECONCILE)
"""The graph's tools; `build` registers them in the toolbox it is given (the server compensates with it)."""


async def _run_effects(toolbox: Toolbox, effects: list[dict[str, Any]], runtime, config) -> list[str]:
    ctx = runtime.context
    tctx = ToolContext(
        user=UserAttrs(getattr(ctx, "user_id", "local")),
        namespace="default",
        store=runtime.store,
        thread_id=str(config["configurable"]["thread_id"]),
        run_id=str((config.get("metadata") or {}).get("run_id") or "") or None,
        pool=toolbox.pool,
    )
    prepared = []
    for e in effects:
        name = "fx" if e.get("reconcile", True) else "fx_noreconcile"
        args = {k: e[k] for k in ("kill_after", "fail", "comp_kill", "counter") if e.get(k)}
        prepared.append(
            await prepare_call(
                toolbox.registry,
                {"name": name, "args": {"label": e["id"], **args}, "id": e["id"]},
                tctx,
                checkpoint_ns=config["configurable"].get("checkpoint_ns", ""),
            )
        )
    pending = [p for p in prepared if p.human]
    if pending:
        apply_decisions(pending, interrupt(approval_request(pending)))
    outcomes = []
    for p in prepared:
        r = await run_prepared(p, tctx)
        outcomes.append(f"{p.call_id}:{r.status}")
    return outcomes


class FaultState(TypedDict, total=False):
    plan: dict[str, dict[str, Any]]
    log: Annotated[list[str], operator.add]
    inputs: Annotated[list[str], operator.add]
    approved: Any
    outcomes: Annotated[list[str], operator.add]


def _node(name: str, toolbox: Toolbox):
    async def node(state: FaultState, runtime) -> dict[str, Any]:
        plan = (state.get("plan") or {}).get(name, {})
        thread_id = str(get_config()["configurable"]["thread_id"])
        if plan.get("touch"):
            with open(plan["touch"], "a") as f:
                f.write(f"{os.getpid()}\n")
        update: dict[str, Any] = {"log": [name]}
        if plan.get("interrupt"):
            update["approved"] = interrupt({"question": f"approve {name}?"})
        if plan.get("effects"):
            update["outcomes"] = await _run_effects(toolbox, plan["effects"], runtime, get_config())
        if plan.get("fail"):
            raise RuntimeError(f"injected permanent failure in {name}")
        if runtime.store is not None:
            await runtime.store.aput(
                ("effects", thread_id),
                f"{name}:{uuid.uuid4()}",
                {"node": name, "pid": os.getpid(), "approved": update.get("approved")},
                index=False,
            )
        if plan.get("kill") == "always":
            os.kill(os.getpid(), signal.SIGKILL)
        if plan.get("sleep"):
            await asyncio.sleep(float(plan["sleep"]))
        if plan.get("block"):
            time.sleep(float(plan["block"]))
        return update

    node.__name__ = name
    return node


def build(toolbox: Toolbox) -> StateGraph:
    """The uncompiled graph, its effects running through `toolbox` (where its tools are registered)."""
    for spec in TOOLS:
        if toolbox.registry.get(spec.name) is None:
            toolbox.registry.register(spec)
    b = StateGraph(FaultState)
    for n in NODES:
        b.add_node(n, _node(n, toolbox))
    b.add_edge(START, "a")
    for x, y in zip(NODES, NODES[1:], strict=False):
        b.add_edge(x, y)
    b.add_edge(NODES[-1], END)
    return b


builder = build(Toolbox(registry=ToolRegistry()))
"""Without Keel's database (no pool): for plans without effects (benchmarks, `langgraph dev`)."""
graph = builder.compile(name="agent")
