"""PostgreSQL for the ledger tests: one throwaway cluster per session (tests/postgres.py), a new database
per test. `ledger_url` runs a test once per backend: None (SQLite in the state dir) and a PostgreSQL URL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import postgres


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.Cluster]:
    reason = postgres.unavailable()
    if reason:
        pytest.skip(f"no PostgreSQL for the ledger tests: {reason}")
    cluster = postgres.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: postgres.Cluster) -> str:
    """A URL of a new, empty database."""
    return pg_cluster.database()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))
