"""MCP both ways of serving: streamable HTTP at /mcp in `keel serve` and stdio via `keel mcp`,
driven by the official `mcp` client."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.support.live import KEEL, keel_env, live_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory):
    with live_server(database_url, extra_env={"KEEL_API_KEYS": "ka:alice:support,kb:bob"}) as srv:
        yield srv


def client(url: str, key: str | None) -> Client:
    headers = {"x-api-key": key} if key else {}
    return Client(
        streamable_http_client(url + "/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=30))
    )


async def test_http_lists_the_registry_and_calls_through_policies(server, database_url):
    async with client(server.url, "ka") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert {"calculator", "search_docs", "create_ticket", "remember", "researcher"} <= set(tools)
        assert tools["calculator"].input_schema["properties"]["expression"]["type"] == "string"
        assert tools["create_ticket"].annotations.destructive_hint is True
        r = await c.call_tool("calculator", {"expression": "6*7"})
        assert not r.is_error and r.structured_content == {"result": 42}
        bad = await c.call_tool("calculator", {"nope": 1})
        assert bad.is_error and "invalid arguments" in bad.content[0].text
        refused = await c.call_tool("create_ticket", {"title": "from mcp"})
        assert refused.is_error and "approval" in refused.content[0].text
        await c.call_tool("remember", {"fact": "Alice uses MCP"})
    async with client(server.url, "kb") as c:
        got = await c.call_tool("recall", {"query": "MCP"})
        assert got.structured_content == {"memories": []}, "bob cannot see alice's memories"
    import psycopg

    with psycopg.connect(database_url) as conn:
        n = conn.execute("SELECT count(*) FROM keel_tickets WHERE title = 'from mcp'").fetchone()[0]
        audit = conn.execute(
            "SELECT user_id, decision, outcome FROM keel_tool_audit WHERE tool = 'create_ticket'"
        ).fetchall()
    assert n == 0, "refused over MCP: never executed"
    assert ("alice", "approve", "not executed") in [tuple(a) for a in audit], audit


MCP_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2025-11-25",
}
INITIALIZE = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "t", "version": "1"},
}


def rpc(url: str, method: str, params: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(
        url + "/mcp",
        headers={**MCP_HEADERS, **(headers or {})},
        timeout=30,
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
    )


@pytest.mark.parametrize(
    "method,params",
    [
        ("initialize", INITIALIZE),
        ("tools/list", {}),
        ("tools/call", {"name": "calculator", "arguments": {"expression": "1+1"}}),
    ],
)
@pytest.mark.parametrize("key,detail", [(None, "Missing or invalid API key"), ("nope", "Invalid API key")])
def test_http_refuses_every_request_without_a_valid_key(server, method, params, key, detail):
    r = rpc(server.url, method, params, {"x-api-key": key} if key else {})
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    body = r.json()
    assert body["detail"] == detail and body["error"]["message"] == detail and body["jsonrpc"] == "2.0"
    assert (
        httpx.get(
            server.url + "/mcp", headers={**MCP_HEADERS, **({"x-api-key": key} if key else {})}, timeout=30
        ).status_code
        == 401
    )
    ok = rpc(server.url, method, params, {"authorization": "Bearer kb"})
    assert ok.status_code == 200 and "result" in ok.json(), ok.text


def messages(exc: BaseException) -> list[str]:
    """The messages of an exception and, for a group, of everything in it."""
    inner = getattr(exc, "exceptions", ())
    return [str(exc), *(m for e in inner for m in messages(e))]


async def test_http_client_without_a_key_cannot_initialize(server):
    with pytest.raises(BaseException) as info:
        async with client(server.url, None) as c:
            await c.list_tools()
    assert "Missing or invalid API key" in messages(info.value), messages(info.value)


def test_local_mode_needs_no_key_and_keeps_dns_rebinding_protection(database_url):
    with live_server(database_url, corpus={}) as local:
        r = rpc(local.url, "initialize", INITIALIZE)
        assert r.status_code == 200 and r.json()["result"]["serverInfo"]["name"] == "keel", r.text
        r = rpc(local.url, "tools/call", {"name": "calculator", "arguments": {"expression": "6*7"}})
        assert r.status_code == 200 and r.json()["result"]["structuredContent"] == {"result": 42}, r.text
        # A rebound host name is refused before it reaches MCP (Keel's host check in local mode answers 403; the
        # MCP library's own DNS-rebinding check, 421, stays behind it).
        rebound = rpc(local.url, "initialize", INITIALIZE, {"host": "evil.example"})
        assert rebound.status_code == 403 and "not served without API keys" in rebound.json()["detail"], (
            rebound.text
        )


async def test_stdio(database_url, tmp_path):
    env = keel_env(database_url, tmp_path)
    params = StdioServerParameters(command=KEEL, args=["mcp"], env=env, cwd=str(Path(__file__).parents[2]))
    async with Client(params, read_timeout_seconds=60) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "calculator" in names
        r = await c.call_tool("calculator", {"expression": "2**5"})
        assert r.structured_content == {"result": 32}


async def test_external_mcp_server_tools_join_the_registry_governed(database_url, tmp_path, db):
    """Consume an external MCP server (here: another Keel's `keel mcp` over stdio) as registry entries."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from tools.execute import prepare_call, run_prepared
    from tools.mcp_client import load_mcp_tools
    from tools.policy import UserAttrs
    from tools.registry import ToolContext, ToolRegistry

    entry = {"command": KEEL, "args": ["mcp"], "env": keel_env(database_url, tmp_path), "cwd": str(tmp_path)}
    reg = ToolRegistry(await load_mcp_tools({"peer": entry}))
    assert {"peer_calculator", "peer_create_ticket", "peer_search_docs"} <= set(reg.names())
    calc, ticket = reg.get("peer_calculator"), reg.get("peer_create_ticket")
    assert calc.side_effect == "read" and not calc.needs_approval
    assert ticket.side_effect == "write" and ticket.needs_approval
    fn = convert_to_openai_tool(calc.as_langchain_tool())["function"]
    assert fn["name"] == "peer_calculator" and "expression" in fn["parameters"]["properties"]

    ctx = ToolContext(user=UserAttrs("alice"), namespace="default", thread_id="t-mcp", pool=db.pool)
    p = await prepare_call(reg, {"name": "peer_calculator", "args": {"expression": "3*3"}, "id": "m1"}, ctx)
    res = await run_prepared(p, ctx)
    assert res.status == "success" and json.loads(res.content)["structured"] == {"result": 9}
    bad = await prepare_call(reg, {"name": "peer_calculator", "args": {"expr": 1}, "id": "m2"}, ctx)
    assert bad.error and "invalid arguments" in bad.error
    gated = await prepare_call(reg, {"name": "peer_create_ticket", "args": {"title": "x"}, "id": "m3"}, ctx)
    assert gated.human == "approval", "an imported write tool still needs a human"
