"""The API's own small record (STATE/api/api.sqlite): which jobs it submitted, and each token's
Idempotency-Key, so a retried POST returns the job the first one made instead of making a second.

A key goes through three steps: reserved (a request is being received), planned (the job's name is
chosen, its manifest about to be renamed into the inbox), done. A restart finds no request in flight,
so it settles the rest: a planned key whose manifest reached the inbox (or became a job) is done, any
other is freed, and a retry with it is a new request."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

KEY_KEEP = 7 * 86400.0  # an Idempotency-Key is remembered this long


class KeyBusy(Exception):
    """A request with this Idempotency-Key is still being received."""


class Ledger:
    def __init__(self, state_dir: Path, *, written: Callable[[str], bool]) -> None:
        """written(job): whether that job's manifest reached the inbox (asked once, at start-up)."""
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
            " done INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, PRIMARY KEY (token, key))"
        )
        self._settle(written)

    def _settle(self, written: Callable[[str], bool]) -> None:
        self._db.execute("DELETE FROM idempotency WHERE created < ?", (time.time() - KEY_KEEP,))
        # a submission is looked up only until the intake makes its job, or to show why it refused it: a
        # week, as for keys
        self._db.execute("DELETE FROM submissions WHERE created < ?", (time.time() - KEY_KEEP,))
        pending = self._db.execute("SELECT token, key, job FROM idempotency WHERE done = 0").fetchall()
        for token, key, job in pending:
            if job is not None and written(job):
                self.record(job, token, key)
            else:
                self.release(token, key)

    def reserve(self, token: str, key: str) -> str | None:
        """The job a finished request with this key made, or None after reserving the key for this one;
        KeyBusy while another request holds it."""
        with self._lock:
            row = self._db.execute(
                "SELECT job, done FROM idempotency WHERE token = ? AND key = ?", (token, key)
            ).fetchone()
            if row is not None:
                if not row[1]:
                    raise KeyBusy(key)
                return str(row[0])
            self._db.execute(
                "INSERT INTO idempotency (token, key, job, done, created) VALUES (?, ?, NULL, 0, ?)",
                (token, key, time.time()),
            )
            return None

    def plan(self, token: str, key: str, job: str) -> None:
        """The job's name, written down before its manifest is renamed into the inbox."""
        with self._lock:
            self._db.execute(
                "UPDATE idempotency SET job = ? WHERE token = ? AND key = ? AND done = 0", (job, token, key)
            )

    def release(self, token: str, key: str) -> None:
        """The request failed: a retry with this key is a new request."""
        with self._lock:
            self._db.execute("DELETE FROM idempotency WHERE token = ? AND key = ? AND done = 0", (token, key))

    def record(self, job: str, token: str, key: str | None) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO submissions VALUES (?, ?, ?)", (job, token, time.time()))
            if key is not None:
                self._db.execute(
                    "UPDATE idempotency SET job = ?, done = 1 WHERE token = ? AND key = ?", (job, token, key)
                )
            self._db.execute("COMMIT")

    def submitted(self, job: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM submissions WHERE job = ?", (job,)).fetchone() is not None

    def close(self) -> None:
        self._db.close()
