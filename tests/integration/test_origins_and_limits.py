"""Browser origins (CORS and cross-site requests) and per-deployment ceilings on what one request can buy.

Issue 9, items 6 and 7: in local no-key mode any web page could start runs (CORS `*` plus `text/plain`
bodies parsed as JSON, which a browser sends cross-site without a preflight), and a request could raise its
budgets to 1000 steps and set any recursion limit.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
import pytest

from server.app import create_app
from server.settings import Settings
from tests.support.inprocess import running_service

STUDIO = "https://smith.langchain.com"
EVIL = "https://evil.example"
Q = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}


@pytest.fixture(scope="module")
async def svc(db):
    async with running_service(Settings(), db) as service:  # no API keys: the local single-user mode
        yield service


@asynccontextmanager
async def client_for(svc, **settings):
    app = create_app(Settings(**settings), svc)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        yield c


@pytest.fixture(scope="module")
async def client(svc):
    async with client_for(svc) as c:
        yield c


async def counts(db) -> tuple[int, int]:
    async with db.pool.connection() as conn:
        t = await (await conn.execute("SELECT count(*) AS n FROM keel_threads")).fetchone()
        r = await (await conn.execute("SELECT count(*) AS n FROM keel_runs")).fetchone()
    return t["n"], r["n"]


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": "content-type,x-auth-scheme",
        "access-control-request-private-network": "true",
    }


async def test_studio_preflight_is_allowed_with_private_network_access(client):
    r = await client.options("/threads/search", headers=preflight(STUDIO))
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == STUDIO
    assert r.headers["access-control-allow-private-network"] == "true"
    assert "POST" in r.headers["access-control-allow-methods"]
    # Studio posts JSON labelled text/plain; from its origin that still works, and it may read the answer.
    r = await client.post(
        "/threads",
        content=b'{"metadata": {"via": "studio"}}',
        headers={"origin": STUDIO, "content-type": "text/plain;charset=UTF-8"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["metadata"] == {"via": "studio"}
    assert r.headers["access-control-allow-origin"] == STUDIO
    assert "x-pagination-total" in r.headers["access-control-expose-headers"]


async def test_other_origins_cannot_preflight(client):
    r = await client.options("/threads/search", headers=preflight(EVIL))
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers
    assert "not allowed" in r.json()["detail"]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/threads", b"{}"),
        (
            "/runs/wait",
            b'{"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": "hi"}]}}',
        ),
        ("/runs", b'{"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": "hi"}]}}'),
    ],
)
async def test_cross_site_simple_requests_are_refused_before_anything_is_written(client, db, path, body):
    before = await counts(db)
    # What a hostile page can send without a preflight: a text/plain or form body.
    for ctype in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded"):
        r = await client.post(path, content=body, headers={"origin": EVIL, "content-type": ctype})
        assert r.status_code == 403, r.text
        assert set(r.json()) == {"detail"}
        assert "access-control-allow-origin" not in r.headers
    assert await counts(db) == before


async def test_cross_site_reads_are_refused(client):
    r = await client.post("/threads/search", json={}, headers={"origin": EVIL})
    assert r.status_code == 403
    r = await client.get("/info", headers={"origin": "null"})  # sandboxed frames and file:// pages
    assert r.status_code == 403


async def test_clients_without_origin_loopback_pages_and_same_origin_still_work(client):
    r = await client.post("/threads", content=b"{}", headers={"content-type": "text/plain"})  # curl, SDKs
    assert r.status_code == 200, r.text
    r = await client.post("/threads/search", json={}, headers={"origin": "http://localhost:3000"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    r = await client.post(
        "/threads/search", json={}, headers={"origin": "http://127.0.0.1:8000"}
    )  # same origin
    assert r.status_code == 200


async def test_allowed_origins_are_a_setting(svc):
    async with client_for(svc, keel_cors_origins="https://app.example.com, https://*.corp.example") as c:
        assert (await c.post("/threads/search", json={}, headers={"origin": STUDIO})).status_code == 403
        for origin in ("https://app.example.com", "https://ui.corp.example"):
            r = await c.options("/threads/search", headers=preflight(origin))
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        assert (
            await c.post("/threads/search", json={}, headers={"origin": "https://corp.example.evil.example"})
        ).status_code == 403
    async with client_for(svc, keel_cors_origins="*") as c:  # explicit opt-in to every origin
        r = await c.post("/threads/search", json={}, headers={"origin": EVIL})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


# ------------------------------------------------------------------------------------------- ceilings


@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"context": {"max_steps": 1000}}, "KEEL_LIMIT_STEPS"),
        ({"context": {"max_revisions": 6}}, "KEEL_LIMIT_REVISIONS"),
        ({"context": {"max_tool_calls": 33}}, "KEEL_LIMIT_TOOL_CALLS"),
        ({"context": {"retrieve_k": 51}}, "KEEL_LIMIT_RETRIEVE_K"),
        ({"context": {"history_tokens": 100_001}}, "KEEL_LIMIT_HISTORY_TOKENS"),
        ({"config": {"recursion_limit": 1001}}, "KEEL_LIMIT_RECURSION"),
        ({"config": {"recursion_limit": 0}}, "KEEL_LIMIT_RECURSION"),
        ({"config": {"recursion_limit": "many"}}, "KEEL_LIMIT_RECURSION"),
    ],
)
async def test_budgets_above_the_ceiling_are_refused(client, db, extra, needle):
    before = await counts(db)
    r = await client.post("/runs/wait", json={"assistant_id": "agent", "input": Q, **extra})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]
    assert await counts(db) == before


async def test_budgets_at_the_ceiling_run(client):
    r = await client.post(
        "/runs/wait",
        json={
            "assistant_id": "agent",
            "input": Q,
            "context": {"max_steps": 100, "max_revisions": 5},
            "config": {"recursion_limit": 110},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["messages"][-1]["type"] == "ai"


async def test_ceilings_are_per_deployment(db):
    from server.service import KeelService

    settings = Settings(keel_limit_steps=30, keel_limit_recursion=40)
    app = create_app(settings, KeelService(settings, db))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.post(
            "/runs/wait", json={"assistant_id": "agent", "input": Q, "context": {"max_steps": 31}}
        )
        assert r.status_code == 422 and "between 0 and 30" in r.json()["detail"]
        r = await c.post(
            "/runs/wait", json={"assistant_id": "agent", "input": Q, "config": {"recursion_limit": 41}}
        )
        assert r.status_code == 422 and "between 1 and 40" in r.json()["detail"]


def test_defaults_above_their_ceilings_fail_at_start_up():
    with pytest.raises(ValueError, match="KEEL_MAX_STEPS=200 is above its ceiling KEEL_LIMIT_STEPS=100"):
        Settings(keel_max_steps=200)
    with pytest.raises(ValueError, match="KEEL_LIMIT_RECURSION"):
        Settings(keel_max_steps=50, keel_limit_recursion=20)


# ------------------------------------------------------------------------------------------- DNS rebinding


async def test_without_api_keys_only_this_machines_host_names_are_served(svc):
    """A page whose host name is re-pointed at 127.0.0.1 (DNS rebinding) is "same origin" to the browser."""
    for base in ("http://rebind.attacker.example:8000", "http://192.168.1.20:8000"):
        async with client_for(svc) as c:
            c.base_url = httpx.URL(base)
            r = await c.post("/threads/search", json={}, headers={"origin": base})
            assert r.status_code == 403 and "KEEL_ALLOWED_HOSTS" in r.json()["detail"]
            assert (await c.get("/info")).status_code == 403  # same-origin GETs carry no Origin header
    for base in ("http://localhost:8000", "http://[::1]:8000", "http://127.0.0.1"):
        async with client_for(svc) as c:
            c.base_url = httpx.URL(base)
            assert (await c.get("/info")).status_code == 200, base
    async with client_for(svc, keel_allowed_hosts="keel.lan") as c:
        c.base_url = httpx.URL("http://keel.lan:8000")
        assert (
            await c.post("/threads/search", json={}, headers={"origin": "http://keel.lan:8000"})
        ).status_code == 200


async def test_with_api_keys_any_host_name_is_served(db):
    from server.service import KeelService

    settings = Settings(keel_api_keys="k1:alice")
    app = create_app(settings, KeelService(settings, db))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://keel.example.com"
    ) as c:
        r = await c.post(
            "/threads/search", json={}, headers={"x-api-key": "k1", "origin": "http://keel.example.com"}
        )
        assert r.status_code == 200, r.text


async def test_bodies_are_capped_on_every_method(client):
    r = await client.request("GET", "/info", content=b"x" * 2_000_000)
    assert r.status_code == 413 and "too large" in r.json()["detail"]
