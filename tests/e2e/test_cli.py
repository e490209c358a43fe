"""The `keel` command line against a real database: ingest, ask, search, db."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.live import KEEL, ingest, keel_env, write_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cli_env(database_url):
    """Environment for `keel` subprocesses on this module's database, with the test corpus ingested."""
    tmp = Path(tempfile.mkdtemp(prefix="keel-cli-"))
    try:
        corpus = write_corpus(tmp / "corpus")
        first = ingest(database_url, corpus, keel_home=tmp / "home")
        assert "3 files" in first.stdout, first.stdout
        yield {"env": keel_env(database_url, tmp / "home"), "corpus": corpus, "tmp": tmp}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def keel(cli_env, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([KEEL, *args], env=cli_env["env"], capture_output=True, text=True, timeout=timeout)


def test_ingest_again_skips_unchanged_files(cli_env):
    r = keel(cli_env, "ingest", str(cli_env["corpus"]), "--namespace", "default", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "0 chunks written" in r.stdout and "3 unchanged files skipped" in r.stdout, r.stdout


def test_ask_prints_cited_answer_and_progress(cli_env):
    r = keel(cli_env, "ask", "How do I scale out workers?")
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    out = r.stdout
    assert "worker" in out.lower()
    assert "[1]" in out, out
    sources = [line for line in out.splitlines() if line.strip().startswith("Sources:")]
    assert sources, out
    after = out.split("Sources:", 1)[1]
    assert "scaling.md" in after, out

    progress = [line for line in r.stderr.splitlines() if line.startswith("· ")]
    nodes = [line[2:].split(":", 1)[0] for line in progress]
    assert nodes[:3] == ["retrieve", "summarize", "critique"], r.stderr
    # Each line reports its node's own result (the passages and the query, the critic's score), not the output channels.
    assert re.fullmatch(r"· retrieve: [1-9]\d* passages for 'How do I scale out workers\?'", progress[0]), (
        progress
    )
    assert re.fullmatch(r"· critique: score \d\.\d\d.*", progress[2]), progress
    assert "status: done" in r.stderr, r.stderr


def test_ask_continues_a_thread(cli_env):
    import uuid

    tid = str(uuid.uuid4())
    first = keel(cli_env, "ask", "How do I scale out workers?", "--thread", tid)
    assert first.returncode == 0, first.stderr
    second = keel(cli_env, "ask", "What happens after a worker crash?", "--thread", tid)
    assert second.returncode == 0, second.stderr
    assert f"thread: {tid}" in second.stderr
    assert "recovery.md" in second.stdout, second.stdout


def test_ask_goes_through_the_run_engine(cli_env):
    """`keel ask` queues a run like the API: a run row with its lease attempt and event log, the thread's
    status and values recorded by the worker that executed it."""
    import uuid

    import psycopg
    from psycopg.rows import dict_row

    tid = str(uuid.uuid4())
    r = keel(cli_env, "ask", "How do I scale out workers?", "--thread", tid)
    assert r.returncode == 0, r.stderr
    with psycopg.connect(cli_env["env"]["DATABASE_URL"], row_factory=dict_row) as conn:
        runs = conn.execute(
            "SELECT run_id, status, attempt, metadata, kwargs FROM keel_runs WHERE thread_id = %s", (tid,)
        ).fetchall()
        assert len(runs) == 1 and runs[0]["status"] == "success" and runs[0]["attempt"] == 1, runs
        assert runs[0]["metadata"]["source"] == "keel ask" and runs[0]["kwargs"]["stream_mode"] == ["tasks"]
        events = [
            e["event"]
            for e in conn.execute(
                "SELECT event FROM keel_run_events WHERE run_id = %s ORDER BY seq", (runs[0]["run_id"],)
            )
        ]
        assert events[0] == "metadata" and events[-1] == "end" and "tasks" in events, events
        thread = conn.execute(
            'SELECT user_id, status, "values" FROM keel_threads WHERE thread_id = %s', (tid,)
        ).fetchone()
    assert thread["user_id"] == "local" and thread["status"] == "idle", thread
    assert thread["values"]["messages"][0]["content"] == "How do I scale out workers?"


def test_search_json(cli_env):
    r = keel(cli_env, "search", "recovery after a crash", "--json", "--k", "2")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert isinstance(hits, list) and len(hits) == 2
    for h in hits:
        assert {"score", "text", "source"} <= set(h)
        assert isinstance(h["score"], float) and isinstance(h["text"], str) and h["text"]
    assert hits[0]["source"].endswith("recovery.md"), hits
    assert hits[0]["score"] >= hits[1]["score"]

    text = keel(cli_env, "search", "scaling out workers")
    assert text.returncode == 0 and text.stdout.startswith("[1]") and "scaling.md" in text.stdout, text.stdout


def test_db_commands_with_database_url(cli_env, database_url):
    url = keel(cli_env, "db", "url")
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip() == database_url

    for action in ("status", "start", "stop"):
        r = keel(cli_env, "db", action)
        assert r.returncode == 1, (action, r.stdout, r.stderr)
        assert r.stderr.startswith("keel: error: DATABASE_URL is set"), r.stderr
        assert "embedded Postgres" in r.stderr
        assert "password" not in r.stderr.lower()
        assert r.stdout == ""


def test_memory_export_and_delete(cli_env, database_url, embeddings):
    import asyncio

    from tests.support.inprocess import keel_database

    async def seed():
        async with keel_database(database_url, embeddings, pool_max=2) as db:
            await db.store.aput(("memories", "carol"), "k1", {"text": "Carol likes jazz"})
            await db.store.aput(("memories", "carol", "work"), "k2", {"text": "Carol works nights"})
            await db.store.aput(("memories", "dave"), "k3", {"text": "Dave likes rock"})

    asyncio.run(seed())
    out = keel(cli_env, "memory", "export", "--user", "carol")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert {(tuple(r["namespace"]), r["key"]) for r in rows} == {
        (("memories",), "k1"),
        (("memories", "work"), "k2"),
    }
    gone = keel(cli_env, "memory", "delete", "--user", "carol")
    assert gone.returncode == 0 and "deleted 2" in gone.stderr
    again = keel(cli_env, "memory", "export", "--user", "carol")
    assert again.stdout.strip() == ""
    dave = keel(cli_env, "memory", "export", "--user", "dave")
    assert "Dave likes rock" in dave.stdout, "another user's memories are untouched"
