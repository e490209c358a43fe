"""docs/api.md's route index lists every route of Keel and of the reference server, each with a status the
conformance allow-list agrees with, so the index cannot go stale.

Keel's routes come from its app (built, never started). The reference's come from langgraph-api's own route
lists, imported in a subprocess with the environment `langgraph dev` sets (the import configures the
package's globals, so it stays out of this process); it runs while Keel's app is built.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import compile_path

from server.app import create_app
from server.settings import Settings
from tests.conformance.allowlist import ALLOWED
from tests.conformance.scenario import steps

ROOT = Path(__file__).resolve().parents[2]
API_MD = ROOT / "docs" / "api.md"
SERVED = {"same", "intended difference", "pending", "Keel only"}
STATUSES = SERVED | {"not served"}
ROW = re.compile(r"^\| `(?P<method>[A-Z]+) (?P<path>/[^`]*)` \| (?P<status>[^|]+?) \| (?P<why>.*)\|$")

# What `langgraph dev` sets before langgraph_api reads its configuration (langgraph_api/cli.py run_server),
# and how langgraph_api/server.py assembles the app from these lists (its custom-app and mount-prefix
# branches are unused by `langgraph dev` on this project's langgraph.json).
DEV_ENV = {
    "MIGRATIONS_PATH": "__inmem",
    "DATABASE_URI": ":memory:",
    "REDIS_URI": "fake",
    "LANGGRAPH_RUNTIME_EDITION": "inmem",
    "LANGSMITH_LANGGRAPH_API_VARIANT": "local_dev",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
}
REFERENCE_SCRIPT = """
import json
from starlette.routing import Mount, Route, WebSocketRoute
import langgraph_api.api as api

def walk(routes, prefix=""):
    for r in routes:
        if isinstance(r, Mount):
            yield from walk(r.routes, prefix + r.path)
        elif isinstance(r, WebSocketRoute):
            yield "WEBSOCKET", prefix + r.path
        elif isinstance(r, Route):
            for m in sorted(set(r.methods) - {"HEAD"}):
                yield m, prefix + r.path
        else:
            raise TypeError(f"unexpected route {r!r}")

lists = api.unshadowable_meta_routes + api.shadowable_meta_routes + api.protected_routes
print(json.dumps(sorted(set(walk(lists)))))
"""


def index_rows() -> dict[tuple[str, str], tuple[str, str]]:
    """(method, path) -> (status, why) from the table under '## Route index'."""
    section = API_MD.read_text().split("\n## Route index\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], tuple[str, str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        m = ROW.match(line)
        assert m, f"route index row not in the form | `METHOD /path` | status | why |: {line}"
        key = (m["method"], m["path"])
        assert key not in rows, f"route listed twice: {key}"
        assert m["status"] in STATUSES, f"{key}: unknown status {m['status']!r}; one of {sorted(STATUSES)}"
        rows[key] = (m["status"], m["why"].strip())
    assert rows, "docs/api.md has no route index table"
    return rows


def keel_routes() -> tuple[set[tuple[str, str]], set[str]]:
    """Keel's (method, path) pairs, and the paths of routes that take any method (the /mcp transport)."""
    app = create_app(Settings(keel_api_keys=""))
    pairs: set[tuple[str, str]] = set()
    any_method: set[str] = set()
    for route in iter_route_contexts(app.routes):
        path, methods = route.path, route.methods
        assert path, f"route without a path: {route!r}"
        if methods is None:
            any_method.add(path)
        pairs.update((m, path) for m in methods or () if m != "HEAD")
    return pairs, any_method


@pytest.fixture(scope="module")
def routes() -> dict[str, object]:
    reference = subprocess.Popen(
        [sys.executable, "-c", REFERENCE_SCRIPT],
        env={**os.environ, **DEV_ENV},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        keel, keel_any = keel_routes()
        out, err = reference.communicate(timeout=60)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    assert reference.returncode == 0, f"importing langgraph_api's routes failed:\n{err}"
    ref = {(m, p) for m, p in json.loads(out.splitlines()[-1])}
    assert len(ref) > 60 and ("POST", "/threads/{thread_id}/runs/stream") in ref, ref
    return {"keel": keel, "keel_any": keel_any, "ref": ref, "rows": index_rows()}


def test_every_route_of_both_servers_is_listed_once_and_nothing_else(routes):
    rows, keel, ref = routes["rows"], routes["keel"], routes["ref"]
    keel_any = routes["keel_any"]
    listed = set(rows)
    missing = sorted((keel | ref) - listed)
    assert not missing, f"add these routes to docs/api.md's route index: {missing}"
    extra = sorted(k for k in listed - keel - ref if k[1] not in keel_any)
    assert not extra, f"docs/api.md's route index lists routes neither server has: {extra}"
    for path in keel_any:
        assert any(p == path and rows[(m, p)][0] in SERVED for m, p in listed), (
            f"{path} (any method) is served by Keel: list its methods in the route index"
        )


def test_each_status_says_who_serves_the_route(routes):
    rows, keel, ref = routes["rows"], routes["keel"], routes["ref"]
    for (method, path), (status, why) in rows.items():
        served = (method, path) in keel or path in routes["keel_any"]
        if not served:
            assert status == "not served", (
                f"{method} {path}: Keel does not serve it, so 'not served', not {status!r}"
            )
            assert why, f"{method} {path}: say why it is not served"
        elif (method, path) not in ref:
            assert status == "Keel only", f"{method} {path}: the reference has no such route: 'Keel only'"
        else:
            assert status in {"same", "intended difference", "pending"}, f"{method} {path}: {status!r}"
        if status == "intended difference":
            assert why, f"{method} {path}: give the reason for the intended difference"


def test_statuses_agree_with_the_conformance_allow_list(routes):
    """A route the conformance steps find different is not 'same'; one with an INTENDED entry says
    'intended difference'; 'pending' appears on a row exactly when the route has a PENDING entry."""
    rows = routes["rows"]
    patterns = [(m, p, compile_path(p)[0]) for (m, p) in rows if rows[(m, p)][0] != "not served"]
    entries: dict[tuple[str, str], list[str]] = {}
    for step in steps():
        concrete = re.sub(r"\{(\w+)\}", r"\1", step.path).split("?")[0]
        route = next(((m, p) for m, p, rx in patterns if m == step.method and rx.match(concrete)), None)
        if route is None:
            continue  # a path no server has (the unknown-route step)
        for kind in ("status", "shape", "events"):
            if (step.name, kind) in ALLOWED:
                entries.setdefault(route, []).append(f"{step.name}/{kind}: {ALLOWED[(step.name, kind)]}")
    for route, (status, why) in rows.items():
        found = entries.get(route, [])
        kinds = {e.split(": ", 1)[1].split(":", 1)[0] for e in found}
        where = f"{route[0]} {route[1]} (allow-list: {found})"
        if status == "same":
            assert not found, f"{where}: the conformance suite finds it different, so not 'same'"
        if "INTENDED" in kinds:
            assert status == "intended difference", f"{where}: has an INTENDED entry"
        mentions_pending = "pending" in f"{status} {why}".lower()
        assert mentions_pending == ("PENDING" in kinds), (
            f"{where}: the row should mention 'pending' exactly when the allow-list has a PENDING entry for it"
        )
