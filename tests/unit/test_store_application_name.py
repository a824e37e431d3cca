"""Ledger connections on PostgreSQL carry the host's name (application_name), so the database's operator
sees which host holds how many; a URL that names its own application_name keeps it."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import psycopg

from daemon.store import JobStore


def _names(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True, application_name="the test") as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name <> 'the test'"
        ).fetchall()
    return sorted(row[0] for row in rows)


def test_the_store_and_its_listener_name_this_host(tmp_path: Path, pg_url: str) -> None:
    store = JobStore(tmp_path / "state", url=pg_url)
    stop = store.wake_on_work(threading.Event())  # the LISTEN connection
    try:
        assert _names(pg_url) == [f"lipsyncd {socket.gethostname()}"] * 2
    finally:
        stop()
        store.close()


def test_an_application_name_in_store_url_wins(tmp_path: Path, pg_url: str) -> None:
    store = JobStore(tmp_path / "state", url=f"{pg_url}?application_name=render-a")
    try:
        assert _names(pg_url) == ["render-a"]
    finally:
        store.close()
