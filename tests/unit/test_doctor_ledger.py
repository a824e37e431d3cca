"""`lipsyncd doctor` on a PostgreSQL ledger: reachable, the schema version, this host's clock against the
database's (a real PostgreSQL started by the test suite)."""

from __future__ import annotations

import socket
from pathlib import Path

from daemon.doctor import ledger_checks, schema_check, skew_check
from daemon.store import SCHEMA_VERSION, JobStore


def test_a_ledger_not_yet_migrated_then_migrated(pg_url: str, tmp_path: Path) -> None:
    fresh = {c.what: c for c in ledger_checks(pg_url)}
    assert fresh["ledger"].ok
    assert fresh["ledger schema"].warn, "version 0: the first worker migrates it"
    assert "lipsyncd store migrate" in fresh["ledger schema"].detail
    assert fresh["clock skew"].ok
    assert not fresh["clock skew"].warn, "the database runs on this machine: the same clock"
    JobStore(tmp_path / "state", url=pg_url).close()
    migrated = {c.what: c for c in ledger_checks(pg_url)}
    assert migrated["ledger schema"].ok
    assert not migrated["ledger schema"].warn
    assert migrated["ledger"].detail.endswith("0 job(s)")


def test_an_unreachable_ledger_is_named_with_what_to_check() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens here once it is closed
    (check,) = ledger_checks(f"postgresql://lipsyncd:secret@127.0.0.1:{port}/ledger")
    assert not check.ok
    assert "store.url" in check.detail
    assert "pg_hba.conf" in check.detail
    assert "secret" not in check.detail, "a password in the URL never reaches the output"


def test_schema_versions() -> None:
    assert schema_check(SCHEMA_VERSION, SCHEMA_VERSION).ok
    older = schema_check(SCHEMA_VERSION - 1, SCHEMA_VERSION)
    assert older.ok
    assert older.warn
    newer = schema_check(SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert not newer.ok
    assert "Upgrade this host" in newer.detail


def test_clock_skew_beyond_a_second_is_a_warning() -> None:
    assert not skew_check(0.2, 0.001).warn
    assert not skew_check(-1.0, 0.05).warn  # within the bound plus the round trip
    far = skew_check(-4.5, 0.002)
    assert far.ok
    assert far.warn
    assert "-4.500 s" in far.detail
    assert "chrony" in far.detail
