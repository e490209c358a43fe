"""`keel ask`: one question through the run engine, its progress on stderr."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from typing import Any

from server.settings import Settings

log = logging.getLogger("keel.cli")


def cmd_ask(args: argparse.Namespace, settings: Settings) -> int:
    from server.auth import LOCAL_USER, User
    from server.errors import ApiError
    from server.schemas import RunCreate
    from server.service import GRAPH_ID, KeelService

    async def run() -> dict[str, Any]:
        svc = await KeelService.start(settings)
        created: dict[str, Any] | None = None
        ended = False
        try:
            tid = str(uuid.UUID(args.thread)) if args.thread else str(uuid.uuid4())
            # The same engine as the API: a queued run (lease, event log, checkpoint trim), executed by a worker
            # of this process (or any other on the same database), followed through its event log.
            await svc.start_feed()
            await svc.start_worker(1)
            body = RunCreate(
                assistant_id=GRAPH_ID,
                input={"messages": [{"role": "user", "content": args.question}]},
                # `tasks`: each node's full result (`updates` carry only the graph's output channels).
                stream_mode=["tasks"],
                if_not_exists="create",
                metadata={"source": "keel ask"},
            )
            try:
                created = await svc.runs.create(User(LOCAL_USER), tid, body)
            except ApiError as exc:
                if exc.status == 404:
                    raise ValueError(f"thread {tid} belongs to another user") from None
                raise ValueError(exc.detail) from None
            async for ev in svc.feed.subscribe(str(created["run_id"])):
                if ev.event == "error":
                    raise ValueError(f"the run failed: {ev.data.get('error')}: {ev.data.get('message')}")
                if ev.event == "tasks" and isinstance(ev.data, dict) and "result" in ev.data:
                    _print_progress(str(ev.data.get("name")), ev.data.get("result"))
            ended = True
            state = await svc.graph.aget_state({"configurable": {"thread_id": tid}})
            return {"thread_id": tid, **state.values}
        finally:
            if created is not None and not ended:  # Ctrl+C or SIGTERM: stop the run, don't leave it queued
                try:
                    await svc.runs.cancel(created)
                    if svc.worker is not None:
                        svc.worker.cancel_local(str(created["run_id"]), "interrupt")
                except Exception:  # unwinding anyway; a run left behind is reaped or run later
                    log.warning("could not cancel the run", exc_info=True)
            await svc.close()

    values = asyncio.run(run())
    print()
    print(values.get("answer") or (values["messages"][-1].content if values.get("messages") else ""))
    print(f"\n(status: {values.get('status')}; thread: {values['thread_id']})", file=sys.stderr)
    return 0


def _print_progress(node: str, value: Any) -> None:
    """One line on stderr per graph step of `keel ask` (a `tasks` result event of its run)."""
    detail = ""
    if node == "retrieve" and isinstance(value, dict):
        detail = f"{len(value.get('passages', []))} passages for {value.get('query', '')!r}"
    elif node == "critique" and isinstance(value, dict) and value.get("critique"):
        c = value["critique"]
        detail = f"score {c['score']:.2f}" + (" -> revise" if value.get("phase") == "revise" else "")
    elif node == "execute_tools" and isinstance(value, dict):
        detail = ", ".join(
            f"{m.get('name')}: {m.get('status')}"
            for m in value.get("messages", [])
            if isinstance(m, dict) and m.get("type") == "tool"
        )
    print(f"· {node}{': ' + detail if detail else ''}", file=sys.stderr, flush=True)
