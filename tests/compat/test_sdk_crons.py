"""The official `langgraph_sdk` client's `crons` (0.4.14) against a live `keel serve`: every method it has."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

from server.crons import store as cron_store
from tests.support.live import live_server as _live_server

pytestmark = pytest.mark.slow

YEARLY = "0 3 1 1 *"  # never due during the test unless the test makes it due


def ask(text: str = "How do I scale out workers?") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture(scope="module")
def live_server(database_url):
    with _live_server(database_url, corpus={}, extra_env={"KEEL_CRON_POLL_SECONDS": "0.1"}) as srv:
        yield srv


@pytest.fixture
async def client(live_server) -> AsyncIterator[Any]:
    c = get_client(url=live_server.url, api_key=None)
    try:
        yield c
    finally:
        await c.aclose()


async def test_crons_crud_search_and_count(client):
    tag = str(uuid.uuid4())
    stateless = await client.crons.create(
        "agent", schedule=YEARLY, input=ask(), metadata={"tag": tag}, on_run_completed="keep"
    )
    assert stateless["schedule"] == YEARLY and stateless["thread_id"] is None
    assert stateless["on_run_completed"] == "keep" and stateless["enabled"] is True
    assert datetime.fromisoformat(stateless["next_run_date"]) > datetime.now(UTC)
    thread = await client.threads.create()
    on_thread = await client.crons.create_for_thread(
        thread["thread_id"],
        "agent",
        schedule=YEARLY,
        input=ask(),
        metadata={"tag": tag},
        timezone="Europe/Paris",
    )
    assert on_thread["thread_id"] == thread["thread_id"] and on_thread["timezone"] == "Europe/Paris"

    found = await client.crons.search(assistant_id="agent", metadata={"tag": tag})
    assert [c["cron_id"] for c in found] == [on_thread["cron_id"], stateless["cron_id"]]
    assert [c["cron_id"] for c in await client.crons.search(thread_id=thread["thread_id"])] == [
        on_thread["cron_id"]
    ]
    assert await client.crons.count(metadata={"tag": tag}) == 2
    assert await client.crons.count(thread_id=thread["thread_id"]) == 1
    picked = await client.crons.search(
        metadata={"tag": tag}, select=["cron_id"], sort_by="created_at", sort_order="asc"
    )
    assert picked == [{"cron_id": stateless["cron_id"]}, {"cron_id": on_thread["cron_id"]}]

    updated = await client.crons.update(stateless["cron_id"], schedule="0 4 1 1 *", enabled=False)
    assert updated["schedule"] == "0 4 1 1 *" and updated["enabled"] is False
    assert [c["cron_id"] for c in await client.crons.search(metadata={"tag": tag}, enabled=False)] == [
        stateless["cron_id"]
    ]

    await client.crons.delete(stateless["cron_id"])
    assert await client.crons.count(metadata={"tag": tag}) == 1
    with pytest.raises(NotFoundError):
        await client.crons.delete(stateless["cron_id"])


async def test_crons_refuse_what_the_reference_refuses(client):
    with pytest.raises(UnprocessableEntityError):
        await client.crons.create("agent", schedule="every minute")
    with pytest.raises(NotFoundError):
        await client.crons.create("no-such-graph", schedule=YEARLY)
    with pytest.raises(NotFoundError):
        await client.crons.create_for_thread(str(uuid.uuid4()), "agent", schedule=YEARLY)
    with pytest.raises(NotFoundError):
        await client.crons.update(str(uuid.uuid4()), enabled=False)


async def test_a_due_thread_cron_creates_a_run_the_sdk_can_join(client, live_server):
    thread = await client.threads.create()
    cron = await client.crons.create_for_thread(thread["thread_id"], "agent", schedule=YEARLY, input=ask())
    async with await psycopg.AsyncConnection.connect(live_server.env["DATABASE_URL"]) as conn:
        assert await cron_store.set_next_run_at(
            conn, cron["cron_id"], datetime.now(UTC) - timedelta(minutes=1)
        )
        await conn.commit()
    deadline = time.monotonic() + 30
    while not (runs := await client.runs.list(thread["thread_id"])):
        assert time.monotonic() < deadline, "the due cron created no run"
        await asyncio.sleep(0.1)
    assert len(runs) == 1
    result = await client.runs.join(thread["thread_id"], runs[0]["run_id"])
    assert result["messages"][-1]["type"] == "ai"
    (after,) = await client.crons.search(thread_id=thread["thread_id"])
    assert datetime.fromisoformat(after["next_run_date"]) > datetime.now(UTC) + timedelta(days=1)
    assert len(await client.runs.list(thread["thread_id"])) == 1
