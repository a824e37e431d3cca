"""The API's own small record (STATE/api/api.sqlite): which jobs it submitted, and each token's
Idempotency-Key, so a retried POST returns the job the first one made instead of making a second."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

KEY_KEEP = 7 * 86400.0  # an Idempotency-Key is remembered this long


class KeyBusy(Exception):
    """A request with this Idempotency-Key is still being received."""


class Ledger:
    def __init__(self, state_dir: Path) -> None:
        folder = state_dir / "api"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(folder / "api.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS submissions (job TEXT PRIMARY KEY, token TEXT NOT NULL, created REAL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS idempotency (token TEXT NOT NULL, key TEXT NOT NULL, job TEXT,"
            " created REAL NOT NULL, PRIMARY KEY (token, key))"
        )
        # a request cut short by a restart never finished: its key is free again
        self._db.execute(
            "DELETE FROM idempotency WHERE job IS NULL OR created < ?", (time.time() - KEY_KEEP,)
        )

    def reserve(self, token: str, key: str) -> str | None:
        """The job a finished request with this key made, or None after reserving the key for this one;
        KeyBusy while another request holds it."""
        with self._lock:
            row = self._db.execute(
                "SELECT job FROM idempotency WHERE token = ? AND key = ?", (token, key)
            ).fetchone()
            if row is not None:
                if row[0] is None:
                    raise KeyBusy(key)
                return str(row[0])
            self._db.execute(
                "INSERT INTO idempotency (token, key, job, created) VALUES (?, ?, NULL, ?)",
                (token, key, time.time()),
            )
            return None

    def release(self, token: str, key: str) -> None:
        """The request failed: a retry with this key is a new request."""
        with self._lock:
            self._db.execute(
                "DELETE FROM idempotency WHERE token = ? AND key = ? AND job IS NULL", (token, key)
            )

    def record(self, job: str, token: str, key: str | None) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO submissions VALUES (?, ?, ?)", (job, token, time.time()))
            if key is not None:
                self._db.execute(
                    "UPDATE idempotency SET job = ? WHERE token = ? AND key = ?", (job, token, key)
                )
            self._db.execute("COMMIT")

    def submitted(self, job: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM submissions WHERE job = ?", (job,)).fetchone() is not None

    def close(self) -> None:
        self._db.close()
