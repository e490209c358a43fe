"""Assistants over the HTTP API, persisted in Postgres: CRUD, versions, latest, if_exists, search/count, ownership,
runs using their assistant's config and context, and system assistants created once by many processes.

The `agent` graph here is tests.support.echo_graph:agent_echo (through KEEL_GRAPH): it runs with Keel's agent
Context and answers with it, so a test reads what a run was given from /runs/wait.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest

from server.assistants.manager import Assistants, GraphEntry, system_id
from server.service import KeelService
from server.settings import Settings
from tests.support.inprocess import api_client, running_service

ALICE, BOB, CAROL = {"x-api-key": "ka"}, {"x-api-key": "kb"}, {"x-api-key": "kc"}
ECHO_PY = Path(__file__).resolve().parents[1] / "support" / "echo_graph.py"
AGENT_ID, ECHO_ID = system_id("agent"), system_id("echo")


def write_config(directory: Path) -> Path:
    path = directory / "langgraph.json"
    rel = os.path.relpath(ECHO_PY, directory)  # the path form, relative to the json
    graphs = {
        "agent": {"path": "agent.graph:graph", "description": "Keel's agent"},
        "echo": {"path": f"./{rel}:graph", "description": "Echoes what its run was given"},
    }
    path.write_text(json.dumps({"graphs": graphs}))
    return path


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings(
        keel_api_keys="ka:alice,kb:bob,kc:carol:admin",
        keel_config=str(write_config(tmp_path_factory.mktemp("cfg"))),
        keel_graph="tests.support.echo_graph:agent_echo",
        keel_limit_steps=40,
    )


@pytest.fixture(scope="module")
async def svc(settings, db):
    async with running_service(settings, db) as service:
        yield service


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


async def create(client, headers=ALICE, status=200, **body):
    r = await client.post("/assistants", json={"graph_id": "agent", **body}, headers=headers)
    assert r.status_code == status, r.text
    return r.json()


async def wait(client, assistant_id, headers=ALICE, **body):
    r = await client.post(
        "/runs/wait", json={"assistant_id": assistant_id, "input": {"question": "q"}, **body}, headers=headers
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_each_graph_has_its_system_assistant_with_the_description_from_langgraph_json(client):
    found = (
        await client.post("/assistants/search", json={"metadata": {"created_by": "system"}}, headers=BOB)
    ).json()
    by_graph = {a["graph_id"]: a for a in found}
    assert set(by_graph) == {"agent", "echo"}
    assert by_graph["echo"]["assistant_id"] == ECHO_ID and by_graph["agent"]["assistant_id"] == AGENT_ID
    assert by_graph["echo"]["description"] == "Echoes what its run was given"
    assert by_graph["echo"]["name"] == "echo" and by_graph["echo"]["version"] == 1
    assert (await client.get("/assistants/echo", headers=BOB)).json()["assistant_id"] == ECHO_ID
    assert (await client.get(f"/assistants/{ECHO_ID}/graph", headers=BOB)).json()["nodes"][1]["id"] == "echo"
    schemas = (await client.get(f"/assistants/{ECHO_ID}/schemas", headers=BOB)).json()
    assert schemas["graph_id"] == "echo" and "topic" in schemas["context_schema"]["properties"]


async def test_system_assistants_are_created_once_by_processes_starting_together(svc, db):
    graphs = {"agent": GraphEntry("agent", "Keel's agent"), "echo": GraphEntry("echo", "v2 description")}
    # Five processes starting at once on one Postgres, the graph's description changed since the last start.
    await asyncio.gather(*(Assistants(svc.assistants.pool, graphs).ensure_system() for _ in range(5)))
    async with db.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT assistant_id, count(*) AS n FROM keel_assistant_versions "
                "WHERE assistant_id = ANY(%s) GROUP BY assistant_id",
                ([uuid.UUID(AGENT_ID), uuid.UUID(ECHO_ID)],),
            )
        ).fetchall()
        current = await (
            await conn.execute(
                "SELECT description, version FROM keel_assistants WHERE assistant_id = %s", (ECHO_ID,)
            )
        ).fetchone()
    assert {str(r["assistant_id"]): r["n"] for r in rows} == {AGENT_ID: 1, ECHO_ID: 2}
    assert (current["description"], current["version"]) == ("v2 description", 2)
    # And back, as the served graphs say: one more version, again only once.
    await asyncio.gather(*(svc.assistants.ensure_system() for _ in range(3)))
    versions = (await svc.assistants.versions(svc_user(), ECHO_ID, None, 10, 0))[0]
    assert (versions["version"], versions["description"]) == (3, "Echoes what its run was given")


def svc_user():
    from server.auth import User

    return User("alice")


async def test_create_get_patch_versions_latest_delete(client):
    a = await create(client, name="mine", config={"tags": ["t"]}, metadata={"team": "a"}, description="d")
    aid = a["assistant_id"]
    assert a["graph_id"] == "agent" and a["version"] == 1 and a["name"] == "mine" and a["description"] == "d"
    assert set(a) == {
        "assistant_id",
        "graph_id",
        "config",
        "context",
        "metadata",
        "name",
        "description",
        "version",
        "created_at",
        "updated_at",
    }
    assert (await client.get(f"/assistants/{aid}", headers=ALICE)).json() == a

    r = await client.patch(
        f"/assistants/{aid}", json={"metadata": {"level": 2}, "name": "mine2"}, headers=ALICE
    )
    assert r.status_code == 200, r.text
    p = r.json()
    assert (p["version"], p["name"], p["metadata"], p["config"]) == (
        2,
        "mine2",
        {"team": "a", "level": 2},
        a["config"],
    )

    versions = (await client.post(f"/assistants/{aid}/versions", json={}, headers=ALICE)).json()
    assert [v["version"] for v in versions] == [2, 1] and versions[1]["name"] == "mine"
    only = (
        await client.post(f"/assistants/{aid}/versions", json={"metadata": {"level": 2}}, headers=ALICE)
    ).json()
    assert [v["version"] for v in only] == [2]
    assert [
        v["version"]
        for v in (
            await client.post(f"/assistants/{aid}/versions", json={"limit": 1, "offset": 1}, headers=ALICE)
        ).json()
    ] == [1]

    r = await client.post(f"/assistants/{aid}/latest", json={"version": 1}, headers=ALICE)
    assert r.status_code == 200 and (r.json()["version"], r.json()["name"], r.json()["metadata"]) == (
        1,
        "mine",
        {"team": "a"},
    )
    assert (
        await client.post(f"/assistants/{aid}/latest", json={"version": 9}, headers=ALICE)
    ).status_code == 404
    # A patch after going back is a new version on top of all of them.
    p3 = (await client.patch(f"/assistants/{aid}", json={"description": "e"}, headers=ALICE)).json()
    assert (p3["version"], p3["name"], p3["description"]) == (3, "mine", "e")

    assert (await client.delete(f"/assistants/{aid}", headers=ALICE)).status_code == 204
    assert (await client.get(f"/assistants/{aid}", headers=ALICE)).status_code == 404
    assert (await client.delete(f"/assistants/{aid}", headers=ALICE)).status_code == 404
    assert (await client.post(f"/assistants/{aid}/versions", json={}, headers=ALICE)).status_code == 404


async def test_if_exists_and_invalid_creations(client):
    fixed = str(uuid.uuid4())
    first = await create(client, assistant_id=fixed, name="first")
    again = await create(client, assistant_id=fixed, name="second", if_exists="do_nothing")
    assert again == first
    r = await create(client, status=409, assistant_id=fixed)
    assert r == {"detail": f"Assistant {fixed} already exists"}
    assert "not found" in (await create(client, status=404, graph_id="nope"))["detail"]
    await create(client, status=422, assistant_id="not-a-uuid")
    await create(client, status=422, if_exists="replace")
    r = await create(client, status=400, config={"configurable": {"a": 1}}, context={"b": 2})
    assert "Cannot specify both configurable and context" in r["detail"]
    # Bob's own assistant cannot take an id Alice's holds, nor learn more than that it exists.
    assert (await create(client, BOB, status=409, assistant_id=fixed, if_exists="do_nothing"))["detail"]


async def test_search_count_select_sort_and_pages(client):
    tag = uuid.uuid4().hex
    for name in ("Bravo", "alpha", "Charlie"):
        await create(client, name=f"{name}-{tag}", metadata={"tag": tag})
    body = {"metadata": {"tag": tag}, "sort_by": "name", "sort_order": "asc"}
    r = await client.post("/assistants/search", json=body, headers=ALICE)
    assert [a["name"].split("-")[0] for a in r.json()] == ["alpha", "Bravo", "Charlie"]
    assert r.headers["x-pagination-total"] == "3"
    r = await client.post(
        "/assistants/search", json={**body, "limit": 2, "select": ["assistant_id", "name"]}, headers=ALICE
    )
    assert [set(a) for a in r.json()] == [{"assistant_id", "name"}] * 2
    assert (r.headers["x-pagination-total"], r.headers["x-pagination-next"]) == ("3", "2")
    newest = (await client.post("/assistants/search", json={"metadata": {"tag": tag}}, headers=ALICE)).json()
    assert [a["name"].split("-")[0] for a in newest] == ["Charlie", "alpha", "Bravo"]  # created_at desc
    by_name = await client.post("/assistants/search", json={"name": f"ALPHA-{tag}"}, headers=ALICE)
    assert [a["name"] for a in by_name.json()] == [f"alpha-{tag}"]
    count = await client.post(
        "/assistants/count", json={"metadata": {"tag": tag}, "graph_id": "agent"}, headers=ALICE
    )
    assert count.json() == 3
    assert (
        await client.post(
            "/assistants/count", json={"metadata": {"tag": tag}, "graph_id": "echo"}, headers=ALICE
        )
    ).json() == 0
    assert (
        await client.post("/assistants/search", json={"graph_id": "nope"}, headers=ALICE)
    ).status_code == 404
    assert (
        await client.post("/assistants/count", json={"graph_id": "nope"}, headers=ALICE)
    ).status_code == 404
    assert (
        await client.post("/assistants/search", json={"select": ["owner"]}, headers=ALICE)
    ).status_code == 422
    # Bob sees none of Alice's.
    assert (await client.post("/assistants/count", json={"metadata": {"tag": tag}}, headers=BOB)).json() == 0


async def test_a_users_assistants_are_theirs_and_system_ones_need_an_admin_to_change(client):
    aid = (await create(client, name="private"))["assistant_id"]
    assert (await client.get(f"/assistants/{aid}", headers=BOB)).status_code == 404
    assert (await client.patch(f"/assistants/{aid}", json={"name": "x"}, headers=BOB)).status_code == 404
    assert (await client.delete(f"/assistants/{aid}", headers=BOB)).status_code == 404
    assert (
        await client.post(f"/assistants/{aid}/latest", json={"version": 1}, headers=BOB)
    ).status_code == 404
    r = await client.post("/runs/wait", json={"assistant_id": aid, "input": {"question": "q"}}, headers=BOB)
    assert r.status_code == 422
    # System assistants: everyone reads them and runs them; only an admin changes them.
    assert (await client.get(f"/assistants/{ECHO_ID}", headers=BOB)).status_code == 200
    r = await client.patch(f"/assistants/{ECHO_ID}", json={"metadata": {"x": 1}}, headers=ALICE)
    assert r.status_code == 403
    assert (await client.delete(f"/assistants/{ECHO_ID}", headers=BOB)).status_code == 403
    r = await client.patch(f"/assistants/{ECHO_ID}", json={"metadata": {"reviewed": True}}, headers=CAROL)
    assert r.status_code == 200 and r.json()["metadata"] == {"created_by": "system", "reviewed": True}


async def test_runs_use_their_assistants_config_and_context_under_the_requests(client):
    a = await create(client, context={"max_steps": 5, "namespace": "kb"})
    assert a["config"] == {
        "configurable": {"max_steps": 5, "namespace": "kb"}
    }  # kept in step, as the reference
    seen = (await wait(client, a["assistant_id"]))["seen"]
    assert seen["context"]["max_steps"] == 5 and seen["context"]["namespace"] == "kb"
    assert seen["context"]["user_id"] == "alice"
    assert (seen["graph_id"], seen["assistant_id"]) == ("agent", a["assistant_id"])
    seen = (await wait(client, a["assistant_id"], context={"max_steps": 7}))["seen"]
    assert (seen["context"]["max_steps"], seen["context"]["namespace"]) == (7, "kb")

    c = await create(client, config={"configurable": {"flavour": "vanilla"}})
    assert (await wait(client, c["assistant_id"]))["seen"]["flavour"] == "vanilla"
    assert (await wait(client, c["assistant_id"], config={"configurable": {"flavour": "mint"}}))["seen"][
        "flavour"
    ] == "mint"

    # The current version is what runs use: a patch, then back to version 1.
    await client.patch(f"/assistants/{a['assistant_id']}", json={"context": {"max_steps": 9}}, headers=ALICE)
    assert (await wait(client, a["assistant_id"]))["seen"]["context"]["max_steps"] == 9
    await client.post(f"/assistants/{a['assistant_id']}/latest", json={"version": 1}, headers=ALICE)
    assert (await wait(client, a["assistant_id"]))["seen"]["context"]["max_steps"] == 5


async def test_a_run_request_with_both_configurable_and_context_is_400_as_the_reference(client):
    both = {"config": {"configurable": {"flavour": "mint"}}, "context": {"max_steps": 7}}
    thread = (await client.post("/threads", json={}, headers=ALICE)).json()["thread_id"]
    for path in ("/runs/wait", f"/threads/{thread}/runs", "/runs", "/runs/stream"):
        r = await client.post(
            path, json={"assistant_id": "agent", "input": {"question": "q"}, **both}, headers=ALICE
        )
        assert r.status_code == 400, (path, r.text)
        assert r.json()["detail"].startswith("Cannot specify both configurable and context."), r.text
    # Either alone is fine, and an assistant holding both (kept in step) does not make a request ambiguous.
    a = await create(client, context={"max_steps": 5})
    assert (await wait(client, a["assistant_id"], context={"max_steps": 6}))["seen"]["context"][
        "max_steps"
    ] == 6
    assert (await wait(client, a["assistant_id"], config={"configurable": {"flavour": "x"}}))["seen"][
        "flavour"
    ] == "x"
    assert (await wait(client, "agent", config={"configurable": {}}, context={"max_steps": 4}))["seen"][
        "context"
    ]["max_steps"] == 4


async def test_an_assistant_cannot_set_identity_or_lift_the_ceilings(client):
    for context in (
        {"user_id": "mallory"},
        {"tenant": "other"},
        {"max_steps": 41},
        {"model": "openai:gpt-5"},
    ):
        r = await create(client, status=422, context=context)
        assert "context." in r["detail"]
    await create(client, status=422, config={"recursion_limit": 10**6})
    aid = (await create(client))["assistant_id"]
    r = await client.patch(f"/assistants/{aid}", json={"context": {"roles": ["admin"]}}, headers=ALICE)
    assert r.status_code == 422 and "context.roles" in r.json()["detail"]
    # Nor can a request: the identity stays the caller's.
    r = await client.post(
        "/runs/wait",
        json={"assistant_id": aid, "input": {}, "context": {"user_id": "mallory"}},
        headers=ALICE,
    )
    assert r.status_code == 422


async def test_another_graph_gets_its_own_context_fields_and_unknown_keys_are_dropped(client):
    e = await create(client, graph_id="echo", context={"topic": "tides"})
    out = await wait(client, e["assistant_id"], context={"tone": "loud", "unheard_of": 1})
    assert out["answer"] == "loud: q about tides"
    assert out["seen"]["context"] == {"topic": "tides", "tone": "loud", "user_id": "alice"}
    assert out["seen"]["graph_id"] == "echo"
    # The agent graph accepts unknown context keys and interrupt nodes too, as langgraph-api does.
    out = await wait(client, "agent", context={"unheard_of": 1}, interrupt_before=["nowhere"])
    assert out["answer"] == "ok"


async def test_deleting_an_assistant_with_its_threads(client):
    aid = (await create(client))["assistant_id"]
    tid = (await client.post("/threads", json={}, headers=ALICE)).json()["thread_id"]
    r = await client.post(f"/threads/{tid}/runs/wait", json={"assistant_id": aid, "input": {}}, headers=ALICE)
    assert r.status_code == 200, r.text
    keep = (await client.post("/threads", json={}, headers=ALICE)).json()["thread_id"]
    r = await client.delete(f"/assistants/{aid}", params={"delete_threads": "true"}, headers=ALICE)
    assert r.status_code == 204
    assert (await client.get(f"/threads/{tid}", headers=ALICE)).status_code == 404
    assert (await client.get(f"/threads/{keep}", headers=ALICE)).status_code == 200


async def test_a_graph_that_fails_to_load_stops_start_up_naming_it(tmp_path, db):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    cfg = tmp_path / "langgraph.json"
    cfg.write_text(json.dumps({"graphs": {"agent": "agent.graph:graph", "broken": "./broken.py:graph"}}))
    with pytest.raises(ValueError, match=r"graph 'broken' .*boom at import"):
        KeelService(Settings(keel_config=str(cfg)), db)
    cfg.write_text(json.dumps({"graphs": {"agent": "agent.graph:nothing_here"}}))
    with pytest.raises(ValueError, match=r"graph 'agent'.*nothing_here"):
        KeelService(Settings(keel_config=str(cfg)), db)


async def test_a_cron_runs_the_callers_own_assistant(client):
    aid = (await create(client, context={"max_steps": 3}))["assistant_id"]
    body = {"assistant_id": aid, "schedule": "0 0 1 1 *", "input": {}}
    r = await client.post("/runs/crons", json=body, headers=ALICE)
    assert r.status_code == 200, r.text
    assert r.json()["assistant_id"] == aid
    assert (await client.post("/runs/crons", json=body, headers=BOB)).status_code == 404
    # Deleting the assistant deletes its crons, as langgraph-api does.
    assert (await client.delete(f"/assistants/{aid}", headers=ALICE)).status_code == 204
    assert (await client.get(f"/runs/crons/{r.json()['cron_id']}", headers=ALICE)).status_code == 404
