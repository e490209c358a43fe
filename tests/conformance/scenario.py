"""The scripted client session both servers receive, in order.

Steps share a context: ids a step saves (`save`) are used by later steps as `{name}` in paths and bodies.
Every run uses the offline model on an empty knowledge base, so answers are deterministic in shape.
Runs are made to finish before a step reads them (`before=finished(...)`), so no step races a worker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.conformance.engine import Step

ASK = {"messages": [{"role": "user", "content": "What is Keel?"}]}
TOOL = {"messages": [{"role": "user", "content": '/tool calculator {"expression": "2+3"}'}]}
MISSING = "00000000-0000-4000-8000-000000000000"
TERMINAL = {"success", "error", "interrupted", "timeout"}


def put(key: str, field: str = "") -> Callable[[dict[str, Any], Any], None]:
    """Save `body[field]` (or the body's first element's, for a list) as context `key`."""

    def save(ctx: dict[str, Any], body: Any) -> None:
        item = body[0] if isinstance(body, list) and body else body
        if isinstance(item, dict) and field in item:
            ctx[key] = item[field]

    return save


def finished(thread_key: str, run_key: str) -> Callable[[httpx.Client, dict[str, Any]], None]:
    """Wait (polling, bounded) until the run is no longer pending or running."""

    def wait(client: httpx.Client, ctx: dict[str, Any]) -> None:
        if thread_key not in ctx or run_key not in ctx:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = client.get(f"/threads/{ctx[thread_key]}/runs/{ctx[run_key]}")
            if r.status_code != 200 or r.json().get("status") in TERMINAL:
                return
            time.sleep(0.05)

    return wait


def idle(thread_key: str) -> Callable[[httpx.Client, dict[str, Any]], None]:
    """Wait (polling, bounded) until the thread has no active run."""

    def wait(client: httpx.Client, ctx: dict[str, Any]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = client.get(f"/threads/{ctx[thread_key]}")
            if r.status_code != 200 or r.json().get("status") != "busy":
                return
            time.sleep(0.05)

    return wait


def run_body(**extra: Any) -> dict[str, Any]:
    return {"assistant_id": "agent", "input": ASK, **extra}


def initial_context() -> dict[str, Any]:
    return {"fixed": str(uuid.uuid4()), "fixed2": str(uuid.uuid4()), "missing": MISSING}


def steps() -> list[Step]:
    s: list[Step] = []
    add = s.append

    # -- meta -------------------------------------------------------------------------------------
    add(Step("ok", "GET", "/ok"))
    add(Step("info", "GET", "/info"))

    # -- assistants -------------------------------------------------------------------------------
    add(Step("assistants.search", "POST", "/assistants/search", {}, save=put("aid", "assistant_id")))
    add(Step("assistants.search.graph_id", "POST", "/assistants/search", {"graph_id": "agent", "limit": 5}))
    add(
        Step(
            "assistants.search.metadata", "POST", "/assistants/search", {"metadata": {"created_by": "system"}}
        )
    )
    add(Step("assistants.search.unknown_graph", "POST", "/assistants/search", {"graph_id": "nope"}))
    add(Step("assistants.count", "POST", "/assistants/count", {}))
    add(Step("assistants.count.graph_id", "POST", "/assistants/count", {"graph_id": "agent"}))
    add(Step("assistants.get", "GET", "/assistants/{aid}"))
    add(Step("assistants.get.by_graph_id", "GET", "/assistants/agent"))
    add(Step("assistants.get.unknown", "GET", "/assistants/{missing}"))
    add(Step("assistants.graph", "GET", "/assistants/{aid}/graph"))
    add(Step("assistants.graph.xray", "GET", "/assistants/{aid}/graph", params={"xray": "true"}))
    add(Step("assistants.schemas", "GET", "/assistants/{aid}/schemas"))
    add(Step("assistants.subgraphs", "GET", "/assistants/{aid}/subgraphs"))
    add(
        Step("assistants.subgraphs.recurse", "GET", "/assistants/{aid}/subgraphs", params={"recurse": "true"})
    )
    add(Step("assistants.graph.unknown", "GET", "/assistants/{missing}/graph"))
    new_assistant = {"graph_id": "agent", "name": "mine", "config": {}, "metadata": {"team": "a"}}
    add(Step("assistants.create", "POST", "/assistants", new_assistant, save=put("a2", "assistant_id")))
    add(
        Step(
            "assistants.create.with_id", "POST", "/assistants", {**new_assistant, "assistant_id": "{fixed2}"}
        )
    )
    add(Step("assistants.create.if_exists_do_nothing", "POST", "/assistants",
             {**new_assistant, "assistant_id": "{fixed2}", "if_exists": "do_nothing"}))  # fmt: skip
    add(
        Step(
            "assistants.create.conflict", "POST", "/assistants", {**new_assistant, "assistant_id": "{fixed2}"}
        )
    )
    add(Step("assistants.create.unknown_graph", "POST", "/assistants", {"graph_id": "nope"}))
    add(Step("assistants.get.created", "GET", "/assistants/{a2}"))
    add(Step("assistants.patch", "PATCH", "/assistants/{a2}", {"metadata": {"team": "b"}, "name": "mine2"}))
    add(Step("assistants.versions", "POST", "/assistants/{a2}/versions", {}))
    add(Step("assistants.latest", "POST", "/assistants/{a2}/latest", {"version": 1}))
    add(Step("assistants.search.by_metadata", "POST", "/assistants/search", {"metadata": {"team": "a"}}))
    add(Step("assistants.count.by_metadata", "POST", "/assistants/count", {"metadata": {"team": "a"}}))
    add(Step("assistants.run_with_created", "POST", "/runs/wait", {"assistant_id": "{a2}", "input": ASK}))
    add(Step("assistants.delete", "DELETE", "/assistants/{a2}"))
    add(Step("assistants.delete.unknown", "DELETE", "/assistants/{missing}"))

    # -- threads ----------------------------------------------------------------------------------
    add(Step("threads.create", "POST", "/threads", {}, save=put("t1", "thread_id")))
    add(Step("threads.create.metadata", "POST", "/threads", {"metadata": {"owner": "conf"}},
             save=put("t2", "thread_id")))  # fmt: skip
    add(Step("threads.create.with_id", "POST", "/threads", {"thread_id": "{fixed}"}))
    add(Step("threads.create.conflict", "POST", "/threads", {"thread_id": "{fixed}"}))
    add(Step("threads.create.if_exists_do_nothing", "POST", "/threads",
             {"thread_id": "{fixed}", "if_exists": "do_nothing"}))  # fmt: skip
    add(Step("threads.create.bad_uuid", "POST", "/threads", {"thread_id": "not-a-uuid"}))
    add(Step("threads.create.malformed_json", "POST", "/threads", content=b'{"metadata": '))
    add(Step("threads.get", "GET", "/threads/{t1}"))
    add(Step("threads.get.unknown", "GET", "/threads/{missing}"))
    add(Step("threads.get.bad_uuid", "GET", "/threads/not-a-uuid"))
    add(Step("threads.patch", "PATCH", "/threads/{t1}", {"metadata": {"owner": "conf", "n": 1}}))
    add(Step("threads.patch.unknown", "PATCH", "/threads/{missing}", {"metadata": {}}))
    add(Step("threads.search", "POST", "/threads/search", {"limit": 10}))
    add(Step("threads.search.metadata", "POST", "/threads/search", {"metadata": {"owner": "conf"}}))
    add(Step("threads.search.status", "POST", "/threads/search", {"status": "idle", "limit": 2}))
    add(
        Step("threads.search.sort", "POST", "/threads/search", {"sort_by": "created_at", "sort_order": "asc"})
    )
    add(Step("threads.search.bad_status", "POST", "/threads/search", {"status": "sleeping"}))
    add(Step("threads.count", "POST", "/threads/count", {}))
    add(Step("threads.count.metadata", "POST", "/threads/count", {"metadata": {"owner": "conf"}}))
    add(Step("threads.state.empty", "GET", "/threads/{t1}/state"))
    add(Step("threads.history.empty", "POST", "/threads/{t1}/history", {}))
    add(Step("threads.state.update_before_any_run", "POST", "/threads/{t2}/state",
             {"values": {"answer": "x"}}))  # fmt: skip
    add(Step("threads.state.unknown_thread", "GET", "/threads/{missing}/state"))

    # -- runs on a thread -------------------------------------------------------------------------
    add(Step("runs.wait", "POST", "/threads/{t1}/runs/wait", run_body()))
    add(Step("runs.wait.tool", "POST", "/threads/{t1}/runs/wait", {"assistant_id": "agent", "input": TOOL}))
    add(Step("threads.get.after_runs", "GET", "/threads/{t1}"))
    add(Step("threads.state", "GET", "/threads/{t1}/state", save=put("cp", "checkpoint")))
    add(Step("threads.state.subgraphs", "GET", "/threads/{t1}/state", params={"subgraphs": "true"}))
    add(Step("threads.state.at_checkpoint", "GET", "/threads/{t1}/state/{cp[checkpoint_id]}"))
    add(Step("threads.state.at_unknown_checkpoint", "GET", "/threads/{t1}/state/{missing}"))
    add(Step("threads.state.checkpoint_post", "POST", "/threads/{t1}/state/checkpoint",
             {"checkpoint": {"checkpoint_id": "{cp[checkpoint_id]}"}}))  # fmt: skip
    add(Step("threads.history", "POST", "/threads/{t1}/history", {"limit": 3}))
    add(Step("threads.history.get", "GET", "/threads/{t1}/history", params={"limit": 2}))
    add(Step("threads.history.before", "POST", "/threads/{t1}/history",
             {"limit": 2, "before": {"configurable": {"checkpoint_id": "{cp[checkpoint_id]}"}}}))  # fmt: skip
    add(Step("threads.history.before_string", "POST", "/threads/{t1}/history",
             {"limit": 2, "before": "{cp[checkpoint_id]}"}))  # fmt: skip
    add(
        Step(
            "threads.history.metadata",
            "POST",
            "/threads/{t1}/history",
            {"metadata": {"source": "loop"}, "limit": 2},
        )
    )
    add(Step("threads.state.update", "POST", "/threads/{t1}/state", {"values": {"answer": "edited"}}))
    add(Step("threads.state.update_as_node", "POST", "/threads/{t1}/state",
             {"values": {"answer": "edited"}, "as_node": "critique"}))  # fmt: skip
    add(Step("threads.state.update_unknown_node", "POST", "/threads/{t1}/state",
             {"values": {"answer": "x"}, "as_node": "nope"}))  # fmt: skip
    add(Step("threads.copy", "POST", "/threads/{t1}/copy", save=put("tcopy", "thread_id")))
    add(Step("threads.copy.state", "GET", "/threads/{tcopy}/state"))
    add(Step("threads.copy.unknown", "POST", "/threads/{missing}/copy"))

    add(
        Step(
            "runs.create",
            "POST",
            "/threads/{t1}/runs",
            run_body(metadata={"k": "v"}),
            save=put("r1", "run_id"),
        )
    )
    add(Step("runs.join", "GET", "/threads/{t1}/runs/{r1}/join"))
    add(Step("runs.get", "GET", "/threads/{t1}/runs/{r1}", before=finished("t1", "r1")))
    add(Step("runs.join.finished", "GET", "/threads/{t1}/runs/{r1}/join"))
    add(Step("runs.join_stream.finished", "GET", "/threads/{t1}/runs/{r1}/stream", sse=True))
    add(Step("runs.list", "GET", "/threads/{t1}/runs"))
    add(Step("runs.list.limit_status", "GET", "/threads/{t1}/runs", params={"limit": 1, "status": "success"}))
    add(Step("runs.list.unknown_thread", "GET", "/threads/{missing}/runs"))
    add(Step("runs.get.unknown", "GET", "/threads/{t1}/runs/{missing}"))
    add(Step("runs.get.bad_uuid", "GET", "/threads/{t1}/runs/not-a-uuid"))
    add(Step("runs.join.unknown", "GET", "/threads/{t1}/runs/{missing}/join"))
    add(Step("runs.join_stream.unknown", "GET", "/threads/{t1}/runs/{missing}/stream", sse=True))
    add(Step("runs.cancel.finished", "POST", "/threads/{t1}/runs/{r1}/cancel"))
    add(Step("runs.cancel.unknown", "POST", "/threads/{t1}/runs/{missing}/cancel"))
    add(Step("runs.create.stream_join", "POST", "/threads/{t1}/runs",
             run_body(stream_mode=["values", "updates"]), save=put("r2", "run_id"), before=idle("t1")))  # fmt: skip
    add(Step("runs.join_stream.live", "GET", "/threads/{t1}/runs/{r2}/stream", sse=True))
    add(Step("runs.delete", "DELETE", "/threads/{t1}/runs/{r2}", before=finished("t1", "r2")))
    add(Step("runs.get.deleted", "GET", "/threads/{t1}/runs/{r2}"))
    add(Step("runs.delete.unknown", "DELETE", "/threads/{t1}/runs/{missing}"))
    add(Step("runs.create.unknown_thread", "POST", "/threads/{missing}/runs", run_body()))
    add(
        Step(
            "runs.create.unknown_assistant",
            "POST",
            "/threads/{t1}/runs",
            {"assistant_id": "nope", "input": ASK},
        )
    )
    add(Step("runs.create.no_assistant", "POST", "/threads/{t1}/runs", {"input": ASK}))
    add(Step("runs.create.malformed_json", "POST", "/threads/{t1}/runs", content=b"{not json"))
    add(
        Step(
            "runs.create.bad_input_type",
            "POST",
            "/threads/{t1}/runs",
            {"assistant_id": "agent", "input": "x"},
        )
    )
    add(Step("runs.create.unknown_context_key", "POST", "/threads/{t1}/runs/wait",
             run_body(context={"no_such_field": 1}), before=idle("t1")))  # fmt: skip
    add(Step("runs.create.unknown_interrupt_node", "POST", "/threads/{t1}/runs/wait",
             run_body(interrupt_before=["no-such-node"])))  # fmt: skip
    # On the copy, not on t1: the reference runs from an empty state here, which would fork t1's history.
    add(Step("runs.create.unknown_checkpoint", "POST", "/threads/{tcopy}/runs/wait",
             run_body(checkpoint_id=MISSING)))  # fmt: skip
    add(Step("runs.wait.multitask_reject_idle", "POST", "/threads/{t1}/runs/wait",
             run_body(multitask_strategy="reject")))  # fmt: skip
    add(Step("runs.wait.if_not_exists_create", "POST", "/threads/{fixed}/runs/wait",
             run_body(if_not_exists="create")))  # fmt: skip
    add(Step("runs.wait.new_thread_if_not_exists", "POST", "/threads/{fixed2}/runs/wait",
             run_body(if_not_exists="create")))  # fmt: skip

    # -- stream modes -----------------------------------------------------------------------------
    modes: list[tuple[str, Any]] = [
        ("default", None), ("values", "values"), ("updates", "updates"), ("messages", "messages"),
        ("messages_tuple", "messages-tuple"), ("debug", "debug"), ("events", "events"), ("custom", "custom"),
        ("tasks", "tasks"), ("checkpoints", "checkpoints"),
        ("values_updates", ["values", "updates"]), ("values_messages_tuple", ["values", "messages-tuple"]),
        ("updates_events", ["updates", "events"]), ("all_common", ["values", "updates", "messages-tuple", "custom"]),
    ]  # fmt: skip
    for label, mode in modes:
        body = run_body() if mode is None else run_body(stream_mode=mode)
        add(Step(f"stream.{label}", "POST", "/threads/{t1}/runs/stream", body, sse=True, before=idle("t1")))
    add(Step("stream.tool.updates", "POST", "/threads/{t1}/runs/stream",
             {"assistant_id": "agent", "input": TOOL, "stream_mode": "updates"}, sse=True))  # fmt: skip
    add(Step("stream.subgraphs", "POST", "/threads/{t1}/runs/stream",
             run_body(stream_mode=["values", "updates"], stream_subgraphs=True), sse=True))  # fmt: skip
    add(Step("stream.bad_mode", "POST", "/threads/{t1}/runs/stream", run_body(stream_mode="nope"), sse=True))
    add(Step("stream.unknown_thread", "POST", "/threads/{missing}/runs/stream", run_body(), sse=True))
    add(Step("threads.stream", "GET", "/threads/{t1}/stream", open_stream=True))
    add(Step("threads.stream.unknown", "GET", "/threads/{missing}/stream", open_stream=True))

    # -- interrupts and resume --------------------------------------------------------------------
    add(Step("interrupt.thread", "POST", "/threads", {}, save=put("ti", "thread_id")))
    add(
        Step(
            "interrupt.wait_before",
            "POST",
            "/threads/{ti}/runs/wait",
            run_body(interrupt_before=["critique"]),
        )
    )
    add(Step("interrupt.thread_status", "GET", "/threads/{ti}"))
    add(Step("interrupt.state", "GET", "/threads/{ti}/state"))
    add(Step("interrupt.runs_list", "GET", "/threads/{ti}/runs"))
    add(Step("interrupt.resume_command", "POST", "/threads/{ti}/runs/wait",
             {"assistant_id": "agent", "command": {"resume": "go on"}}))  # fmt: skip
    add(Step("interrupt.after_resume_state", "GET", "/threads/{ti}/state"))
    add(Step("interrupt.stream_before", "POST", "/threads/{ti}/runs/stream",
             run_body(interrupt_before=["critique"], stream_mode="updates"), sse=True))  # fmt: skip
    add(Step("interrupt.resume_null_input", "POST", "/threads/{ti}/runs/stream",
             {"assistant_id": "agent", "input": None, "stream_mode": "values"}, sse=True))  # fmt: skip
    add(Step("interrupt.stream_after", "POST", "/threads/{ti}/runs/stream",
             run_body(interrupt_after=["summarize"], stream_mode="values"), sse=True))  # fmt: skip
    add(Step("interrupt.resume_goto", "POST", "/threads/{ti}/runs/wait",
             {"assistant_id": "agent", "command": {"goto": "critique"}}))  # fmt: skip
    add(Step("interrupt.command_update", "POST", "/threads/{ti}/runs/wait",
             {"assistant_id": "agent", "command": {"update": {"answer": "x"}}}))  # fmt: skip
    add(Step("interrupt.command_bad", "POST", "/threads/{ti}/runs/wait",
             {"assistant_id": "agent", "command": {"goto": 5}}))  # fmt: skip

    # -- stateless runs ---------------------------------------------------------------------------
    add(Step("stateless.wait", "POST", "/runs/wait", run_body()))
    add(
        Step(
            "stateless.stream", "POST", "/runs/stream", run_body(stream_mode=["values", "updates"]), sse=True
        )
    )
    add(
        Step(
            "stateless.stream.messages",
            "POST",
            "/runs/stream",
            run_body(stream_mode="messages-tuple"),
            sse=True,
        )
    )
    add(Step("stateless.create", "POST", "/runs", run_body(), save=put("rs", "run_id")))
    add(Step("stateless.create.webhookless_keep", "POST", "/runs", run_body(on_completion="keep"),
             save=put("rk", "run_id")))  # fmt: skip
    add(Step("stateless.batch", "POST", "/runs/batch", [run_body(), run_body()]))
    add(Step("stateless.batch.empty", "POST", "/runs/batch", []))
    add(Step("stateless.unknown_assistant", "POST", "/runs/wait", {"assistant_id": "nope", "input": ASK}))

    # -- bulk cancel, delete, prune ---------------------------------------------------------------
    add(Step("runs.cancel_bulk.ids", "POST", "/runs/cancel", {"thread_id": "{t1}", "run_ids": ["{r1}"]}))
    add(Step("runs.cancel_bulk.status", "POST", "/runs/cancel", {"status": "pending"}))
    add(Step("runs.cancel_bulk.bad_status", "POST", "/runs/cancel", {"status": "sleeping"}))
    add(Step("threads.create.for_prune", "POST", "/threads", {}, save=put("tp", "thread_id")))
    add(Step("threads.prune", "POST", "/threads/prune", {"thread_ids": ["{tp}"]}))
    add(
        Step(
            "threads.prune.keep_latest",
            "POST",
            "/threads/prune",
            {"thread_ids": ["{t1}"], "strategy": "keep_latest"},
        )
    )
    add(Step("threads.prune.bad_strategy", "POST", "/threads/prune", {"thread_ids": [], "strategy": "x"}))
    add(Step("threads.get.after_prune", "GET", "/threads/{tp}"))

    # -- crons ------------------------------------------------------------------------------------
    cron = {"assistant_id": "agent", "schedule": "0 0 1 1 *", "input": ASK}
    add(Step("crons.create", "POST", "/runs/crons", cron, save=put("cron", "cron_id")))
    add(Step("crons.create.thread", "POST", "/threads/{t2}/runs/crons", cron, save=put("cron2", "cron_id")))
    add(Step("crons.search", "POST", "/runs/crons/search", {}))
    add(Step("crons.search.assistant", "POST", "/runs/crons/search", {"assistant_id": "agent"}))
    add(Step("crons.count", "POST", "/runs/crons/count", {}))
    add(Step("crons.create.bad_schedule", "POST", "/runs/crons", {**cron, "schedule": "every tuesday"}))
    add(Step("crons.delete", "DELETE", "/runs/crons/{cron}"))
    add(Step("crons.delete.unknown", "DELETE", "/runs/crons/{missing}"))

    # -- store ------------------------------------------------------------------------------------
    add(
        Step("store.put", "PUT", "/store/items", {"namespace": ["conf", "a"], "key": "k1", "value": {"x": 1}})
    )
    add(
        Step(
            "store.put.second",
            "PUT",
            "/store/items",
            {"namespace": ["conf", "b"], "key": "k2", "value": {"y": "z"}},
        )
    )
    add(Step("store.get", "GET", "/store/items", params={"namespace": "conf.a", "key": "k1"}))
    add(Step("store.get.missing", "GET", "/store/items", params={"namespace": "conf.a", "key": "nope"}))
    add(Step("store.get.no_key", "GET", "/store/items", params={"namespace": "conf.a"}))
    add(Step("store.search", "POST", "/store/items/search", {"namespace_prefix": ["conf"]}))
    add(
        Step(
            "store.search.filter",
            "POST",
            "/store/items/search",
            {"namespace_prefix": ["conf"], "filter": {"x": 1}},
        )
    )
    add(
        Step(
            "store.search.query", "POST", "/store/items/search", {"namespace_prefix": ["conf"], "query": "x"}
        )
    )
    add(Step("store.namespaces", "POST", "/store/namespaces", {}))
    add(Step("store.namespaces.prefix", "POST", "/store/namespaces", {"prefix": ["conf"], "max_depth": 1}))
    add(Step("store.delete", "DELETE", "/store/items", {"namespace": ["conf", "a"], "key": "k1"}))
    add(Step("store.get.after_delete", "GET", "/store/items", params={"namespace": "conf.a", "key": "k1"}))
    add(
        Step(
            "store.put.bad_namespace", "PUT", "/store/items", {"namespace": ["a.b"], "key": "k", "value": {}}
        )
    )
    add(Step("store.put.no_value", "PUT", "/store/items", {"namespace": ["conf"], "key": "k"}))

    # -- thread deletion last ---------------------------------------------------------------------
    add(Step("threads.delete", "DELETE", "/threads/{t2}"))
    add(Step("threads.get.deleted", "GET", "/threads/{t2}"))
    add(Step("threads.delete.unknown", "DELETE", "/threads/{missing}"))
    add(Step("unknown.route", "GET", "/no/such/route"))
    return s
