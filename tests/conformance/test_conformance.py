"""Differential conformance: the same scripted requests against `langgraph dev` and `keel serve`.

Fails on any divergence the allow-list (allowlist.py) does not name, and on allow-list entries that no
longer diverge. The full report is written to the test's tmp dir (conformance-report.txt) and summarised
in the failure message; `python -m tests.conformance.report` regenerates docs/conformance.md.
"""

from __future__ import annotations

import pytest

from tests.conformance import suite
from tests.conformance.allowlist import ALLOWED
from tests.conformance.engine import Observation, compare, shape
from tests.conformance.harness import keel_server, reference_server


@pytest.fixture(scope="module")
def servers(database_url, tmp_path_factory):
    """Both servers, started once for the module; a server that does not start fails with its log."""
    with reference_server(tmp_path_factory.mktemp("reference")) as ref, keel_server(database_url) as keel:
        yield ref, keel


@pytest.mark.slow
def test_keel_matches_the_reference_server_except_the_allow_list(servers, tmp_path):
    ref, keel = servers
    result = suite.run(ref.url, keel.url)
    report = suite.text_report(result)
    (tmp_path / "conformance-report.txt").write_text(report, encoding="utf-8")
    print(report)
    broken = [p for p in result.pairs if p[0].error]
    assert not broken, "the reference server failed scripted steps (a scenario bug):\n" + "\n".join(
        f"{r.step}: {r.error}" for r, _ in broken
    )
    problems = [f"{d.step} [{d.kind}]: reference {d.reference} | keel {d.keel}" for d in result.unexpected]
    problems += [f"stale allow-list entry {k}: it no longer diverges, remove it" for k in result.stale]
    assert not problems, (
        f"{len(result.unexpected)} divergences not in tests/conformance/allowlist.py, {len(result.stale)} stale"
        f" entries (full report: {tmp_path / 'conformance-report.txt'}; reference log {ref.log_path}):\n"
        + "\n".join(problems[:40])
    )
    assert result.seconds < 100, f"the scenario took {result.seconds:.0f} s; keep it bounded"


def test_allow_list_entries_say_why():
    for key, comment in ALLOWED.items():
        assert isinstance(key, tuple) and len(key) == 2 and key[1] in {"status", "shape", "events"}, key
        assert comment.startswith(("INTENDED:", "PENDING:")) and len(comment) > 20, key


def test_shapes_ignore_ids_and_texts_but_not_keys_types_or_statuses():
    a = {"thread_id": "0190a5a1-2b3c-7d4e-8f90-1234567890ab", "status": "idle", "values": {"answer": "x"}}
    b = {"thread_id": "0190a5a1-2b3c-7d4e-8f90-ffffffffffff", "status": "idle", "values": {"answer": "y z"}}
    assert shape(a) == shape(b)
    assert shape(a) != shape({**b, "status": "busy"})
    assert shape(a) != shape({**b, "values": None})

    def obs(status, body, events=()):
        return Observation("s", "GET /x", status, frozenset(shape(body)), events=events)

    assert compare(obs(200, a), obs(200, b)) == []
    [d] = compare(obs(200, a), obs(200, {"status": "idle", "values": {"answer": "x"}}))
    assert d.kind == "shape" and d.client_visible and "thread_id" in d.reference
    [d] = compare(obs(200, a), obs(404, {"detail": "x"}))
    assert d.kind == "status" and d.client_visible
    [d] = compare(obs(200, None, ("metadata", "values")), obs(200, None, ("metadata", "values", "end")))
    assert d.kind == "events" and d.client_visible and "end" in d.keel
