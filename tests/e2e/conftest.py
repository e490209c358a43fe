"""Fixtures for the end-to-end tests: one live `keel serve` per module on an ingested database."""

from __future__ import annotations

import pytest

from tests.support.live import live_server as _live_server


@pytest.fixture(scope="module")
def live_server(database_url):
    """`keel serve` on this module's database, after ingesting the small test corpus."""
    with _live_server(database_url) as srv:
        yield srv
