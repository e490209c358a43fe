"""The official Python SDK over a live `keel serve` on the issue-11 routes: thread copy, prune and
thread-level join_stream, runs create_batch and cancel_many, and store.get_item of a missing key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

pytestmark = pytest.mark.slow

ASK = {"messages": [{"role": "user", "content": "How do I scale out workers?"}]}


@pytest.fixture
async def client(live_server) -> AsyncIterator[Any]:
    c = get_client(url=live_server.url, api_key=None)
    try:
        yield c
    finally:
        await c.aclose()


async def finished_run(client: Any, tid: str) -> str:
    run = await client.runs.create(tid, "agent", input=ASK)
    await client.runs.join(tid, run["run_id"])
    return str(run["run_id"])


async def test_copy_and_prune(client):
    thread = await client.threads.create(metadata={"owner": "sdk"})
    tid = thread["thread_id"]
    await finished_run(client, tid)
    copy = await client.threads.copy(tid)
    assert copy["thread_id"] != tid and copy["metadata"]["owner"] == "sdk"
    original = await client.threads.get_state(tid)
    copied = await client.threads.get_state(copy["thread_id"])
    assert copied["values"] == original["values"] and copied["values"]
    assert len(await client.threads.get_history(copy["thread_id"], limit=100)) == len(
        await client.threads.get_history(tid, limit=100)
    )
    with pytest.raises(Exception) as e:  # 409 for an unknown thread, as the reference
        await client.threads.copy(str(uuid.uuid4()))
    assert e.value.response.status_code == 409  # type: ignore[attr-defined]

    assert await client.threads.prune([copy["thread_id"]], strategy="keep_latest") == {"pruned_count": 1}
    assert len(await client.threads.get_history(copy["thread_id"], limit=100)) == 1
    assert await client.threads.prune([tid, copy["thread_id"]]) == {"pruned_count": 2}
    with pytest.raises(NotFoundError):
        await client.threads.get(tid)


async def test_cancel_many_and_create_batch(client):
    tid = (await client.threads.create())["thread_id"]
    rid = await finished_run(client, tid)
    with pytest.raises(NotFoundError):  # finished: nothing to cancel
        await client.runs.cancel_many(thread_id=tid, run_ids=[rid])
    with pytest.raises(UnprocessableEntityError):
        await client.runs.cancel_many(thread_id=tid)
    runs = await client.runs.create_batch(
        [
            {"assistant_id": "agent", "input": ASK, "on_completion": "keep"},
            {"assistant_id": "agent", "input": ASK, "on_completion": "keep", "metadata": {"n": 2}},
        ]
    )
    assert len(runs) == 2 and {r["status"] for r in runs} == {"pending"}
    for run in runs:
        result = await client.runs.join(run["thread_id"], run["run_id"])
        assert "__error__" not in result


async def test_thread_join_stream_resumes_after_last_event_id(client):
    tid = (await client.threads.create())["thread_id"]
    rid = await finished_run(client, tid)
    parts: list[Any] = []

    async def read() -> None:
        async for part in await client.threads.join_stream(tid, last_event_id=f"{rid}:1"):
            parts.append(part)
            if part.id == f"{rid}:done":
                return

    await asyncio.wait_for(read(), 30)
    assert parts[-1].event == "metadata" and parts[-1].data == {"status": "run_done", "run_id": rid}
    assert "values" in [p.event for p in parts] and all(p.id.startswith(rid) for p in parts)


async def test_store_get_item_of_a_missing_key_is_none(client):
    assert await client.store.get_item(["memories", "sdk"], key="nope") is None
