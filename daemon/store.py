"""The job store: one SQLite file in the state directory, the single source of truth for progress.

Both watchers (render and upload, separate processes) open the same file; WAL mode lets them read while
the other writes. Every state change is one short transaction, so a `kill -9` loses nothing committed.
With store.url the same ledger lives on PostgreSQL, shared by several hosts (see _Postgres).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from enum import Enum, StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import structlog

from daemon.manifest import Manifest, job_name
from daemon.upload_journal import PartRecord, UploadState

DB_NAME = "lipsyncd.db"
DEFAULT_MAX_ATTEMPTS = 3
# The schema version this code writes (the table schema_version holds the store's): see _MIGRATIONS.
SCHEMA_VERSION = 2

log = structlog.get_logger(__name__)


class StoreError(Exception):
    """The state database cannot be used (locked, read-only, corrupt): an operator problem."""


class StateDiskFull(StoreError, sqlite3.OperationalError):
    """The disk holding the state directory is full (or over quota): nothing was recorded. Passing, not
    fatal: the caller keeps what it has and tries again once space is back. Still an OperationalError for
    code that catches SQLite's own."""

    def __init__(self, state_dir: Path, cause: BaseException) -> None:
        super().__init__(
            f"the disk holding the state directory {state_dir} is full ({_free(state_dir)} free; SQLite: "
            f"{cause}), so the job store cannot record progress. Free some space on that disk or move "
            "paths.state to a bigger one; lipsyncd carries on by itself once there is room."
        )


class LedgerUnreachable(StoreError):
    """The PostgreSQL ledger cannot be reached now (the server restarting, the network cut): nothing of
    the statement was recorded. Passing, not fatal: workers wait and try again, and the fencing refuses
    whatever a lease that lapsed meanwhile would have written."""

    def __init__(self, url: str, cause: BaseException) -> None:
        super().__init__(
            f"the job store at store.url ({_without_password(url)}) cannot be reached: "
            f"{str(cause).splitlines()[0] if str(cause) else type(cause).__name__}. lipsyncd tries again by "
            "itself; check that PostgreSQL is up and that this host can reach it."
        )


class VideoState(StrEnum):
    QUEUED = "queued"
    RENDERING = "rendering"
    RENDERED = "rendered"
    UPLOADING = "uploading"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"  # `lipsyncd cancel`: not rendered or uploaded any further


class JobState(StrEnum):
    QUEUED = "queued"
    RENDERING = "rendering"
    RENDERED = "rendered"  # every video rendered or failed; distribution may still run
    DONE = "done"  # nothing left to do for this job
    PARTIAL = "partial"  # finished: some videos came out, others failed (each video says why)
    FAILED = "failed"  # the job as a whole could not run (its audio is unusable, say)
    CANCELLED = "cancelled"  # `lipsyncd cancel` stopped it


_VIDEO_MOVES: dict[VideoState, set[VideoState]] = {
    VideoState.QUEUED: {VideoState.RENDERING, VideoState.FAILED, VideoState.CANCELLED},
    VideoState.RENDERING: {VideoState.QUEUED, VideoState.RENDERED, VideoState.FAILED, VideoState.CANCELLED},
    VideoState.RENDERED: {VideoState.UPLOADING, VideoState.QUEUED, VideoState.FAILED, VideoState.CANCELLED},
    VideoState.UPLOADING: {VideoState.RENDERED, VideoState.READY, VideoState.FAILED, VideoState.CANCELLED},
    VideoState.READY: set(),
    VideoState.FAILED: set(),
    VideoState.CANCELLED: set(),
}
_JOB_MOVES: dict[JobState, set[JobState]] = {
    JobState.QUEUED: {JobState.RENDERING, JobState.FAILED, JobState.CANCELLED},
    JobState.RENDERING: {JobState.QUEUED, JobState.RENDERED, JobState.FAILED, JobState.CANCELLED},
    JobState.RENDERED: {  # QUEUED: render again
        JobState.QUEUED,
        JobState.DONE,
        JobState.PARTIAL,
        JobState.FAILED,
        JobState.CANCELLED,
    },
    JobState.DONE: set(),
    JobState.PARTIAL: set(),
    JobState.FAILED: set(),
    JobState.CANCELLED: set(),
}
# `lipsyncd retry` alone may take finished states back to the queue; no step of the daemons can
_RETRY_MOVES: dict[Any, set[Any]] = {
    JobState.DONE: {JobState.QUEUED},
    JobState.PARTIAL: {JobState.QUEUED},
    JobState.FAILED: {JobState.QUEUED},
    JobState.CANCELLED: {JobState.QUEUED},
    VideoState.FAILED: {VideoState.QUEUED},
    VideoState.CANCELLED: {VideoState.QUEUED},
    VideoState.READY: {VideoState.QUEUED},  # --all: render and share it again
    VideoState.RENDERED: {VideoState.QUEUED},
}


class InvalidTransition(Exception):
    pass


def check_move(old: Enum, new: Enum, *, retry: bool = False) -> None:
    """The one transition rule: finished states are final (but for `retry`); anything else must be a
    listed move."""
    moves: dict[Any, set[Any]] = _VIDEO_MOVES if isinstance(old, VideoState) else _JOB_MOVES
    if retry:
        moves = _RETRY_MOVES
    if new != old and new not in moves.get(old, set()):
        raise InvalidTransition(f"cannot move from {old.value} to {new.value}")


@dataclass(frozen=True)
class Job:
    id: str  # also the output folder name and the job part of object keys
    manifest: str  # the manifest's file name as the user dropped it
    claimed_path: str  # where the claimed manifest sits while the job runs
    base_dir: str  # the folder media paths are relative to
    audio: str  # resolved path
    audio_written: str
    distribute: bool
    link_ttl: float | None
    notify: tuple[str, ...]
    model: str | None
    state: JobState
    error: str | None
    created: float
    updated: float
    notified: bool
    rerenders: int = 0  # times rendered videos of it were sent back to the queue (their files vanished)
    page_url: str | None = None  # links.html uploaded beside the videos (links.upload_page), signed
    page_expires_at: float | None = None
    page_sha256: str | None = None  # of the links.html bytes uploaded last
    revision: int = 0  # rises with every change its views must show: orders links.json writers


@dataclass(frozen=True)
class Video:
    job_id: str
    output: str  # file name inside outputs/latest_batch/JOB/
    position: int
    source: str  # resolved path
    source_written: str  # as the manifest wrote it
    state: VideoState
    progress: float
    error: str | None
    model: str | None
    frames: int | None
    faceless_frames: int | None
    size: int | None
    sha256: str | None
    object_key: str | None
    url: str | None
    expires_at: float | None
    upload_id: str | None
    rendered_at: float | None
    evicted: bool
    updated: float
    duration: float | None = None  # seconds of the rendered video (frames / fps)
    warning: str | None = None  # ready, but the user should look (most frames had no face, say)
    retry_at: float | None = None  # a failed upload is not tried again before this time (epoch seconds)
    owner: str | None = None  # the worker (host:kind@slot) holding or last holding the video's claim
    epoch: int = 0  # rises at each claim: a write fenced by an older epoch is refused
    lease_until: float | None = None  # the claim lapses after this (epoch seconds, this host's clock)
    attempts: int = 0  # renders claimed so far (a clean stop gives its attempt back)
    worker: str | None = None  # the worker that rendered it (shown in links.json and status)
    uploaded_by: str | None = None


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one video: every write after the claim names it, and is refused once another
    claim (a higher epoch) replaced it."""

    owner: str
    epoch: int


class LostClaim(Exception):
    """The claim was taken over (its lease lapsed and another worker claimed the video) or the video was
    sent elsewhere: nothing was written."""

    def __init__(self, job_id: str, output: str, claim: Claim, now_owner: str | None, now_epoch: int) -> None:
        super().__init__(
            f"{job_id}/{output}: the claim of {claim.owner} (epoch {claim.epoch}) was lost; the video is now "
            f"held by {now_owner or 'nobody'} (epoch {now_epoch}), so this write was refused"
        )
        self.job_id, self.output, self.claim = job_id, output, claim


class Effect(StrEnum):
    """What must follow a change of the store, recorded in its outbox by the same transaction and applied
    by `daemon.reconcile` (idempotent: applying one twice does no harm)."""

    VIEWS = "views"  # rewrite the job's links.json and links.html
    EVICT = "evict"  # delete a ready video's local copy, once its link is shown
    NOTIFY = "notify"  # send the finished job's webhooks (upload process)
    FILE = "file"  # file the finished job's manifest in done/ or failed/ (render process)
    METRICS = "metrics"  # rewrite the Prometheus textfile from the ledger's counters (job "")


@dataclass(frozen=True)
class Pending:
    """One outbox row. `seq` grows when the same effect is asked for again while pending, so an applier
    that read an older one does not delete the newer request."""

    kind: Effect
    job_id: str
    video: str  # "" for an effect of the whole job
    seq: int
    created: float


@dataclass(frozen=True)
class Rendered:
    """What a finished render recorded about its file."""

    frames: int
    faceless_frames: int
    size: int
    sha256: str
    model: str
    duration: float | None
    warning: str | None


TAKE_LEASE_S = 60.0  # a take holds at least this long: ample for every intake that saw the file to try


@dataclass(frozen=True)
class Take:
    """An intake's claim on a manifest in the job store: its claimed file name, content hash and inode
    number (the same on every client of a share; a manifest dropped again is a new file, so a new take);
    `taker` (host:pid) is for the logs."""

    name: str
    sha256: str
    file_id: str
    taker: str


class ManifestTaken(Exception):
    """Another intake holds this manifest (it makes the job and files the file); leave it alone."""

    def __init__(self, name: str, job_id: str, taker: str) -> None:
        super().__init__(f"{name} is taken by {taker}" + (f" as job {job_id}" if job_id else " (rejected)"))
        self.job_id = job_id
        self.taker = taker


_TAKE_OVER = {JobState.DONE, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, manifest TEXT NOT NULL, claimed_path TEXT NOT NULL, base_dir TEXT NOT NULL,
    audio TEXT NOT NULL, audio_written TEXT NOT NULL, distribute INTEGER NOT NULL, link_ttl REAL,
    notify TEXT NOT NULL, model TEXT, state TEXT NOT NULL, error TEXT,
    created REAL NOT NULL, updated REAL NOT NULL, notified INTEGER NOT NULL DEFAULT 0,
    rerenders INTEGER NOT NULL DEFAULT 0, page_url TEXT, page_expires_at REAL, page_sha256 TEXT,
    revision INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS videos (
    job_id TEXT NOT NULL REFERENCES jobs(id), output TEXT NOT NULL, position INTEGER NOT NULL,
    source TEXT NOT NULL, source_written TEXT NOT NULL, state TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0,
    error TEXT, model TEXT, frames INTEGER, faceless_frames INTEGER, size INTEGER, sha256 TEXT,
    object_key TEXT, url TEXT, expires_at REAL, upload_id TEXT, rendered_at REAL,
    evicted INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL, duration REAL, warning TEXT,
    owner TEXT, epoch INTEGER NOT NULL DEFAULT 0, lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT, uploaded_by TEXT,
    PRIMARY KEY (job_id, output)
);
CREATE INDEX IF NOT EXISTS videos_by_state ON videos(state);
CREATE TABLE IF NOT EXISTS uploads (
    object_key TEXT PRIMARY KEY, upload_id TEXT NOT NULL, part_size INTEGER NOT NULL, started REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    object_key TEXT NOT NULL REFERENCES uploads(object_key), part_number INTEGER NOT NULL,
    etag TEXT NOT NULL, size INTEGER NOT NULL, checksum TEXT NOT NULL,
    PRIMARY KEY (object_key, part_number)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, label TEXT NOT NULL DEFAULT '', value INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, label)
);
CREATE TABLE IF NOT EXISTS outbox (
    kind TEXT NOT NULL, job_id TEXT NOT NULL, video TEXT NOT NULL DEFAULT '', created REAL NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (kind, job_id, video)
);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY, host TEXT NOT NULL, kind TEXT NOT NULL, pid INTEGER NOT NULL,
    started REAL NOT NULL, last_beat REAL NOT NULL, state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS manifest_takes (
    name TEXT NOT NULL, sha256 TEXT NOT NULL, file_id TEXT NOT NULL, job_id TEXT NOT NULL,
    taker TEXT NOT NULL, taken REAL NOT NULL, PRIMARY KEY (name, sha256, file_id)
);
"""


CLAIM_RETRIES = 5


_Method = typing.TypeVar("_Method", bound=Callable[..., Any])


def _retried(method: _Method) -> _Method:
    """Claims running side by side may deadlock on a shared row (the job's view in the outbox, a
    counter): PostgreSQL rolls one back, which simply claims again."""

    @functools.wraps(method)
    def run(self: JobStore, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(CLAIM_RETRIES):
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if attempt + 1 == CLAIM_RETRIES or getattr(exc, "sqlstate", None) not in ("40001", "40P01"):
                    raise
                log.info("claim_retried", reason=type(exc).__name__, attempt=attempt + 1)
        raise AssertionError("unreachable")

    return cast(_Method, run)


class JobStore:
    """Thread-safe access to the store. Open one per process; pass it to whoever needs it."""

    def __init__(self, state_dir: Path, *, timeout: float = 30.0, url: str | None = None) -> None:
        self.path = state_dir / DB_NAME
        self.url = url  # store.url: a PostgreSQL ledger shared by hosts; None: SQLite in the state dir
        # called after each commit that recorded effects: the process's reconciler applies them at once
        self.after_commit: Callable[[], object] | None = None
        self._lock = threading.RLock()
        # PostgreSQL: claims run side by side (each skips the rows other claims hold locked), other writes
        # one at a time; SQLite has one writer anyway
        self._skip_locked = "" if url is None else " FOR UPDATE OF v SKIP LOCKED"
        self._for_update = "" if url is None else " FOR UPDATE"
        self._claim_begin = "BEGIN IMMEDIATE" if url is None else _BEGIN_CLAIM
        if url is not None:
            self._open_postgres(state_dir, url, timeout)
            return
        try:
            _private_dir(state_dir)
            _refuse_network_fs(state_dir)
            _private_files(self.path)
            self._db = sqlite3.connect(
                self.path, timeout=timeout, check_same_thread=False, isolation_level=None
            )
            self._db.row_factory = sqlite3.Row
            self.schema_found = _prepare(
                self._db, timeout, str(self.path)
            )  # the version it had before this start
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the job store {self.path}: {exc}. Check that the state directory exists, "
                "is writable by this user, and that no other program holds the database locked."
            ) from exc

    def _open_postgres(self, state_dir: Path, url: str, timeout: float) -> None:
        import psycopg

        try:
            _private_dir(state_dir)
            self._db = cast(sqlite3.Connection, _Postgres(url, timeout))  # answers the calls made on one
            self.schema_found = _migrate(self._db, "postgresql", f"at store.url ({_without_password(url)})")
        except (psycopg.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the job store at store.url ({_without_password(url)}): {exc}. Check that the "
                "PostgreSQL server is up and reachable from this host, that the database exists, and that "
                "this user's password is where libpq looks (PGPASSFILE, PGPASSWORD, or the pgpass "
                "systemd credential)."
            ) from exc

    def _work_appeared(self, db: sqlite3.Connection) -> None:
        """A video became claimable (to render or to upload): on PostgreSQL, idle workers on every host
        are woken when this transaction commits (NOTIFY; a rolled-back one sends nothing). Polling stays
        the fallback, and SQLite's workers share one host and poll."""
        if self.url is not None:
            db.execute(f"NOTIFY {WAKE_CHANNEL}")

    def wake_on_work(self, wake: threading.Event) -> Callable[[], None]:
        """Set `wake` whenever another process or host made work claimable (PostgreSQL: a thread
        LISTENing on its own connection). Returns the function that stops it; on SQLite nothing runs."""
        if self.url is None:
            return lambda: None
        listener = _Listener(self.url, wake)
        listener.start()
        listener.listening.wait(LISTEN_RETRY_S)  # not yet (the server is away): polling finds the work
        return listener.stop

    def _now(self, db: sqlite3.Connection) -> float:
        """The clock leases are read against: the database server's on PostgreSQL (every host shares
        it), this host's on SQLite (every worker shares the host)."""
        if self.url is None:
            return time.time()
        return float(db.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute(begin)
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite rolls back by itself on some errors (disk full)
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if _disk_full(exc):
                    raise StateDiskFull(self.path.parent, exc) from exc
                raise

    @contextmanager
    def _change(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """A transaction that records effects: once it committed, the process's reconciler runs (outside
        the store's lock); a rolled-back one leaves neither the change nor its effects."""
        with self._tx(begin) as db:
            yield db
        if self.after_commit is not None:
            self.after_commit()

    # -- the outbox ----------------------------------------------------------------------------------

    @staticmethod
    def _effect(db: sqlite3.Connection, kind: Effect, job_id: str, video: str = "") -> None:
        """One pending effect per (kind, job, video): asked again, it stays one row with a higher seq. A
        view asked for raises the job's revision, which links.json carries: hosts write views without a
        shared lock, so a writer whose file shows less than the store's revision after its own rename
        knows an older view won the race, and asks again (daemon.reconcile)."""
        db.execute(
            "INSERT INTO outbox (kind, job_id, video, created) VALUES (?,?,?,?)"
            " ON CONFLICT (kind, job_id, video) DO UPDATE SET seq = outbox.seq + 1",
            (kind.value, job_id, video, time.time()),
        )
        if kind == Effect.VIEWS:
            db.execute("UPDATE jobs SET revision = revision + 1 WHERE id = ?", (job_id,))

    def _count(self, db: sqlite3.Connection, name: str, label: str = "", amount: int = 1) -> None:
        """Add to a metric in the same transaction as the change it counts: a crash loses neither or
        both, and every worker process counts into one ledger (daemon.ops.metrics writes the file)."""
        db.execute(
            "INSERT INTO counters (name, label, value) VALUES (?,?,?)"
            " ON CONFLICT (name, label) DO UPDATE SET value = counters.value + excluded.value",
            (name, label, amount),
        )
        self._effect(db, Effect.METRICS, "")

    def counters(self) -> dict[tuple[str, str], int]:
        """Every metric counted so far, by (name, label)."""
        with self._lock:
            rows = self._db.execute("SELECT name, label, value FROM counters").fetchall()
        return {(r[0], r[1]): r[2] for r in rows}

    def pending(self, *kinds: Effect) -> list[Pending]:
        """The effects not applied yet, oldest first (all kinds when none is named)."""
        query, args = "SELECT kind, job_id, video, seq, created FROM outbox", tuple[str, ...]()
        if kinds:
            query += f" WHERE kind IN ({','.join('?' * len(kinds))})"
            args = tuple(k.value for k in kinds)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created, job_id, video", args).fetchall()
        return [Pending(Effect(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    def applied(self, *effects: Pending) -> int:
        """Remove applied effects, in one transaction; one asked for again since it was read stays.
        Returns how many were removed."""
        removed = 0
        with self._tx() as db:
            for effect in effects:
                cur = db.execute(
                    "DELETE FROM outbox WHERE kind = ? AND job_id = ? AND video = ? AND seq = ?",
                    (effect.kind.value, effect.job_id, effect.video, effect.seq),
                )
                removed += cur.rowcount
        return removed

    def ask(self, kind: Effect, job_id: str, video: str = "") -> None:
        """Record an effect with no change (a repair: a view found stale, a copy never evicted)."""
        with self._change() as db:
            self._effect(db, kind, job_id, video)

    # -- jobs ----------------------------------------------------------------------------------------

    def add_job(
        self, manifest: Manifest, *, claimed_path: Path, base_dir: Path, take: Take | None = None
    ) -> Job:
        """Record a validated manifest as a new job with all its videos queued; picks a free job id. With
        `take`, ManifestTaken when another intake holds that manifest (nothing is recorded then)."""
        now = time.time()
        with self._change() as db:
            job_id = self._free_id(db, manifest.name)
            if take is not None:  # in the same transaction: a crash leaves neither the take nor the job
                self._take(db, take, job_id)
            db.execute(
                # columns named: a store upgraded by ALTER TABLE may hold them in another order
                "INSERT INTO jobs (id, manifest, claimed_path, base_dir, audio, audio_written, distribute,"
                " link_ttl, notify, model, state, error, created, updated)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    manifest.source.name,
                    str(claimed_path),
                    str(base_dir),
                    str(manifest.audio.path),
                    manifest.audio.written,
                    int(manifest.distribute),
                    manifest.link_ttl,
                    json.dumps(list(manifest.notify)),
                    manifest.model,
                    JobState.QUEUED.value,
                    None,
                    now,
                    now,
                ),
            )
            for position, (ref, output) in enumerate(
                zip(manifest.videos, output_names(manifest), strict=True)
            ):
                db.execute(
                    "INSERT INTO videos (job_id, output, position, source, source_written, state, updated)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (job_id, output, position, str(ref.path), ref.written, VideoState.QUEUED.value, now),
                )
            self._effect(db, Effect.VIEWS, job_id)
            self._count(db, "lipsyncd_jobs_total", JobState.QUEUED.value)
            self._work_appeared(db)
        job = self.job(job_id)
        assert job is not None
        return job

    @staticmethod
    def _free_id(db: sqlite3.Connection, name: str) -> str:
        candidate, n = name, 1
        while db.execute("SELECT 1 FROM jobs WHERE id = ?", (candidate,)).fetchone():
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def job_by_claim(self, claimed_path: Path) -> Job | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE claimed_path = ?", (str(claimed_path),)
            ).fetchone()
        return _job(row) if row else None

    def jobs(self, *states: JobState) -> list[Job]:
        query, args = "SELECT * FROM jobs", tuple[str, ...]()
        if states:
            query += f" WHERE state IN ({','.join('?' * len(states))})"
            args = tuple(s.value for s in states)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created, id", args).fetchall()
        return [_job(row) for row in rows]

    def start_job(self, job_id: str) -> None:
        """The render takes the job (InvalidTransition: it was cancelled since it was found)."""
        with self._change() as db:
            self._move_job(db, job_id, JobState.RENDERING)

    def job_rendered(self, job_id: str, *, finish: bool = False) -> None:
        """Every video is rendered or failed; with `finish` (a job that does not distribute) it goes on
        to its final state in the same transaction. The manifest is filed only the first time: a job
        rendered again was filed before, and its claimed name may belong to a newer job by now."""
        with self._change() as db:
            job = self._move_job(db, job_id, JobState.RENDERED)
            if finish:
                self._finish(db, job_id)
            if not job["rerenders"]:
                self._effect(db, Effect.FILE, job_id)

    def fail_job(self, job_id: str, reason: str) -> None:
        """The job as a whole cannot go on: its videos still to render fail with the same reason."""
        with self._change() as db:
            job = self._move_job(db, job_id, JobState.FAILED, error=reason)
            pending = (VideoState.QUEUED.value, VideoState.RENDERING.value)
            for (output,) in db.execute(
                "SELECT output FROM videos WHERE job_id = ? AND state IN (?,?)", (job_id, *pending)
            ).fetchall():
                self._set_video(db, job_id, output, VideoState.FAILED, error=reason)
            if not job["rerenders"]:
                self._effect(db, Effect.FILE, job_id)

    def _move_job(
        self, db: sqlite3.Connection, job_id: str, state: JobState, *, error: str | None = None
    ) -> sqlite3.Row:
        """The checked move of a job inside a transaction, with its view to rewrite; returns its old row."""
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        check_move(JobState(row["state"]), state)
        db.execute(
            "UPDATE jobs SET state = ?, error = ?, updated = ? WHERE id = ?",
            (state.value, error, time.time(), job_id),
        )
        self._effect(db, Effect.VIEWS, job_id)
        self._count(db, "lipsyncd_jobs_total", state.value)
        return row  # type: ignore[no-any-return]

    def set_page(self, job_id: str, url: str, expires_at: float, sha256: str) -> None:
        """The uploaded links.html and its link. Not a change of the job (`updated` stays): the page shows
        that time, and must not change because its own link was recorded."""
        with self._change() as db:
            db.execute(
                "UPDATE jobs SET page_url = ?, page_expires_at = ?, page_sha256 = ? WHERE id = ?",
                (url, expires_at, sha256, job_id),
            )
            self._effect(db, Effect.VIEWS, job_id)

    def reopen_pending_jobs(self) -> list[str]:
        """A job is only finished when its videos are: one marked rendered or done while a video still
        waits to render (a write lost to a full state disk, or an older version) goes back to rendering,
        so the render watcher picks it up again. A repair of a broken invariant, not a transition: it is
        not in _JOB_MOVES, so no normal step can undo a finished job. Returns the ids reopened."""
        pending = (VideoState.QUEUED.value, VideoState.RENDERING.value)
        finished = (JobState.RENDERED.value, JobState.DONE.value, JobState.PARTIAL.value)
        with self._change() as db:
            rows = db.execute(
                "SELECT DISTINCT j.id FROM jobs j JOIN videos v ON v.job_id = j.id"
                " WHERE j.state IN (?,?,?) AND v.state IN (?,?) ORDER BY j.id",
                (*finished, *pending),
            ).fetchall()
            ids = [row[0] for row in rows]
            for job_id in ids:
                db.execute(
                    "UPDATE jobs SET state = ?, updated = ? WHERE id = ?",
                    (JobState.RENDERING.value, time.time(), job_id),
                )
                self._effect(db, Effect.VIEWS, job_id)
        return ids

    def cancel_job(self, job_id: str, reason: str) -> tuple[JobState, list[str]]:
        """Cancel a job and its unfinished videos in one transaction (InvalidTransition for a finished
        job). Returns the state it was in and the videos cancelled; a render in flight notices by itself."""
        with self._change() as db:
            old = JobState(db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])
            if JobState.CANCELLED not in _JOB_MOVES[old]:  # check_move lets a state stay: not here
                raise InvalidTransition(f"cannot move from {old.value} to cancelled")
            now = time.time()
            rows = db.execute("SELECT output, state FROM videos WHERE job_id = ?", (job_id,)).fetchall()
            cancelled = [o for o, state in rows if VideoState.CANCELLED in _VIDEO_MOVES[VideoState(state)]]
            for output in cancelled:
                db.execute(
                    "UPDATE videos SET state = ?, error = ?, updated = ? WHERE job_id = ? AND output = ?",
                    (VideoState.CANCELLED.value, reason, now, job_id, output),
                )
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated = ? WHERE id = ?",
                (JobState.CANCELLED.value, reason, now, job_id),
            )
            self._effect(db, Effect.VIEWS, job_id)
            self._count(db, "lipsyncd_jobs_total", JobState.CANCELLED.value)
            rerenders = db.execute("SELECT rerenders FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            if old != JobState.QUEUED and not rerenders:  # a queued one `lipsyncd cancel` files itself
                self._effect(db, Effect.FILE, job_id)
        return old, cancelled

    def retry_job(self, job_id: str, *, every_video: bool = False) -> tuple[JobState, list[str]]:
        """Send a finished job's failed and cancelled videos (with `every_video`, all of them) back to the
        queue and reopen the job, in one transaction. InvalidTransition for a job not finished, ValueError
        when there is nothing to render again. Returns the job's old state and the videos queued."""
        with self._change() as db:
            old = JobState(db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])
            if JobState.QUEUED not in _RETRY_MOVES.get(old, set()):  # a queued job stays queued: not here
                raise InvalidTransition(f"cannot retry a job that is {old.value}")
            wanted = {VideoState.FAILED, VideoState.CANCELLED}
            if every_video:
                wanted |= {VideoState.READY, VideoState.RENDERED}
            rows = db.execute("SELECT output, state FROM videos WHERE job_id = ?", (job_id,)).fetchall()
            again = [output for output, state in rows if VideoState(state) in wanted]
            if not again:
                raise ValueError("it has no failed or cancelled video; --all renders every video again")
            now = time.time()
            for output in again:  # a new render gets a new file, object and link
                db.execute(
                    "UPDATE videos SET state = ?, progress = 0, error = NULL, frames = NULL,"
                    " faceless_frames = NULL, size = NULL, sha256 = NULL, object_key = NULL, url = NULL,"
                    " expires_at = NULL, upload_id = NULL, rendered_at = NULL, evicted = 0, duration = NULL,"
                    " warning = NULL, lease_until = NULL, attempts = 0, worker = NULL, uploaded_by = NULL,"
                    " updated = ?"
                    " WHERE job_id = ? AND output = ?",
                    (VideoState.QUEUED.value, now, job_id, output),
                )
            db.execute(
                "UPDATE jobs SET state = ?, error = NULL, notified = 0, updated = ? WHERE id = ?",
                (JobState.QUEUED.value, now, job_id),
            )
            db.execute("DELETE FROM outbox WHERE job_id = ? AND kind = ?", (job_id, Effect.FILE.value))
            self._effect(db, Effect.VIEWS, job_id)
            self._work_appeared(db)
            self._count(db, "lipsyncd_jobs_total", JobState.QUEUED.value)
        return old, again

    def finish_job(self, job_id: str) -> JobState:
        """Move a rendered job to the final state its videos add up to (see `outcome`), in one
        transaction; a partial job's error names each failed video and why. Its webhooks go out when
        it distributes (a job kept local has no links to announce). Returns the new state.
        InvalidTransition when it is not rendered (another upload worker finished it first)."""
        with self._change() as db:
            state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            if state != JobState.RENDERED.value:
                raise InvalidTransition(f"cannot finish a job that is {state}")
            return self._finish(db, job_id)

    def _finish(self, db: sqlite3.Connection, job_id: str) -> JobState:
        rows = db.execute("SELECT * FROM videos WHERE job_id = ? ORDER BY position", (job_id,))
        videos = [_video(row) for row in rows.fetchall()]
        new = outcome(videos)
        error = failures_text(videos) if new != JobState.DONE else None
        job = self._move_job(db, job_id, new, error=error)
        if job["distribute"] and json.loads(job["notify"]):
            self._effect(db, Effect.NOTIFY, job_id)
        return new

    def mark_notified(self, job_id: str) -> bool:
        """True for the one caller that flips the flag (notifications go out once)."""
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET notified = 1 WHERE id = ? AND notified = 0", (job_id,))
            return cur.rowcount == 1

    # -- videos --------------------------------------------------------------------------------------

    def videos(self, job_id: str) -> list[Video]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM videos WHERE job_id = ? ORDER BY position", (job_id,)
            ).fetchall()
        return [_video(row) for row in rows]

    def video(self, job_id: str, output: str) -> Video | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM videos WHERE job_id = ? AND output = ?", (job_id, output)
            ).fetchone()
        return _video(row) if row else None

    def videos_in(self, *states: VideoState) -> list[Video]:
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM videos WHERE state IN ({marks}) ORDER BY updated, job_id, position",
                tuple(s.value for s in states),
            ).fetchall()
        return [_video(row) for row in rows]

    # Each intent below is one transaction: the checked move (InvalidTransition changes nothing), the
    # row's new values, and the effects they require (always the job's views; more where named).

    def claim_video(self, job_id: str, output: str) -> None:
        """The render starts on this video (unleased: tests and single-step tools; workers use
        claim_next_video)."""
        self._video_change(job_id, output, VideoState.RENDERING, progress=0.0, error=None)

    # -- claims with leases --------------------------------------------------------------------------
    # One clock: SQLite has no server clock, so leases are this host's time.time(), read inside the
    # transaction. Every worker shares the host (the store is a local file by design), so they agree.
    # On PostgreSQL every host reads the database server's clock (self._now), never its own.

    @_retried
    def claim_next_video(
        self, owner: str, lease_s: float, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> tuple[Video, Claim] | None:
        """Claim the first video waiting to render (queued, or rendering under a lapsed lease) of the
        oldest job still rendering, in one write transaction: two workers never get the same one. The
        epoch rises and the attempt is counted; a video claimed `max_attempts` times before (each try
        lost: a crash, a worker cut off) fails with the reason instead, and the next one is looked at.
        The job moves to rendering with its first claimed video."""
        with self._change(self._claim_begin) as db:
            while True:
                now = self._now(db)
                row = db.execute(
                    "SELECT v.* FROM videos v JOIN jobs j ON j.id = v.job_id WHERE j.state IN (?,?)"
                    " AND (v.state = ? OR (v.state = ? AND COALESCE(v.lease_until, 0) < ?))"
                    " ORDER BY j.created, j.id, v.position LIMIT 1" + self._skip_locked,
                    (
                        JobState.QUEUED.value,
                        JobState.RENDERING.value,
                        VideoState.QUEUED.value,
                        VideoState.RENDERING.value,
                        now,
                    ),
                ).fetchone()
                if row is None:
                    return None
                video = _video(row)
                if video.attempts >= max_attempts:
                    self._exhausted(db, video, max_attempts)
                    continue
                claim = Claim(owner, video.epoch + 1)
                db.execute(
                    "UPDATE videos SET state = ?, owner = ?, epoch = ?, lease_until = ?,"
                    " attempts = attempts + 1, progress = 0, updated = ? WHERE job_id = ? AND output = ?",
                    (
                        VideoState.RENDERING.value,
                        owner,
                        claim.epoch,
                        now + lease_s,
                        now,
                        video.job_id,
                        video.output,
                    ),
                )
                job = db.execute(  # locked: two claims of one job move it once
                    "SELECT state FROM jobs WHERE id = ?" + self._for_update, (video.job_id,)
                ).fetchone()
                if job[0] == JobState.QUEUED.value:
                    self._move_job(db, video.job_id, JobState.RENDERING)
                self._effect(db, Effect.VIEWS, video.job_id)
                if video.state == VideoState.RENDERING:
                    log.warning(
                        "lease_taken_over",
                        job=video.job_id,
                        video=video.output,
                        worker=owner,
                        epoch=claim.epoch,
                        previous=video.owner,
                    )
                fresh = db.execute(
                    "SELECT * FROM videos WHERE job_id = ? AND output = ?", (video.job_id, video.output)
                ).fetchone()
                return _video(fresh), claim

    def _exhausted(self, db: sqlite3.Connection, video: Video, max_attempts: int) -> None:
        last = f", the last by {video.owner}" if video.owner else ""
        reason = (
            f"rendering {video.source_written} was started {video.attempts} times and never finished{last} "
            "(the worker stopped answering or crashed each time); it is not tried again "
            f"(render.max_attempts is {max_attempts}). Check the render workers' logs, then `lipsyncd retry`"
        )
        self._set_video(db, video.job_id, video.output, VideoState.FAILED, error=reason, lease_until=None)
        self._count(db, "lipsyncd_failures_total", "render")
        log.warning(
            "video_attempts_exhausted",
            job=video.job_id,
            video=video.output,
            attempts=video.attempts,
            worker=video.owner,
        )

    def renew(self, job_id: str, output: str, claim: Claim, lease_s: float) -> bool:
        """The heartbeat: extend the lease. False (and a `claim_lost` line) once the claim is gone."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE videos SET lease_until = ? WHERE job_id = ? AND output = ? AND owner = ?"
                " AND epoch = ? AND state IN (?,?)",
                (
                    self._now(db) + lease_s,
                    job_id,
                    output,
                    claim.owner,
                    claim.epoch,
                    VideoState.RENDERING.value,
                    VideoState.UPLOADING.value,
                ),
            )
            if cur.rowcount == 1:
                return True
            row = db.execute(
                "SELECT owner, epoch FROM videos WHERE job_id = ? AND output = ?", (job_id, output)
            ).fetchone()
        _log_lost(job_id, output, claim, row, "renew")
        return False

    def release_own(self, owner: str) -> list[Video]:
        """After this worker restarted: the renders its earlier life left midway go back to the queue
        (each counted as an attempt). Other workers' claims are left alone: they lapse by themselves."""
        with self._change() as db:
            rows = db.execute(
                "SELECT * FROM videos WHERE state = ? AND owner = ?", (VideoState.RENDERING.value, owner)
            ).fetchall()
            for row in rows:
                self._set_video(
                    db, row["job_id"], row["output"], VideoState.QUEUED, progress=0.0, lease_until=None
                )
        return [_video(row) for row in rows]

    def _fence(self, db: sqlite3.Connection, job_id: str, output: str, claim: Claim | None) -> None:
        """Refuse (LostClaim, rolling back) a write whose claim is no longer the video's."""
        if claim is None:
            return
        row = db.execute("SELECT owner, epoch FROM videos WHERE job_id = ? AND output = ?", (job_id, output))
        now = row.fetchone()
        if now is None or (now[0], now[1]) != (claim.owner, claim.epoch):
            _log_lost(job_id, output, claim, now, "write")
            raise LostClaim(job_id, output, claim, now[0] if now else None, now[1] if now else 0)

    def requeue_video(self, job_id: str, output: str, claim: Claim | None = None) -> None:
        """Stopped mid-render (a stop, a crash): rendered again from the start. A claimed render stopped
        cleanly gives its attempt back (a stop is no fault of the video)."""
        with self._change() as db:
            self._fence(db, job_id, output, claim)
            self._set_video(db, job_id, output, VideoState.QUEUED, progress=0.0, lease_until=None)
            if claim is not None:
                db.execute(
                    "UPDATE videos SET attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
                    " WHERE job_id = ? AND output = ?",
                    (job_id, output),
                )

    def set_progress(self, job_id: str, output: str, fraction: float, claim: Claim | None = None) -> None:
        with self._change() as db:
            self._fence(db, job_id, output, claim)
            self._set_video(db, job_id, output, None, progress=fraction)

    def video_rendered(
        self,
        job_id: str,
        output: str,
        result: Rendered,
        claim: Claim | None = None,
        publish: Callable[[], object] | None = None,
    ) -> None:
        """The render is done. With a claim, the write is fenced, and `publish` (the rename of the
        worker's own file into the output's name) runs inside the same write transaction after the fence
        let it through: no other worker can claim the video meanwhile, so a worker that lost its claim
        never replaces the new owner's file. A publish that fails rolls the change back."""
        with self._change() as db:
            self._fence(db, job_id, output, claim)
            self._set_video(
                db,
                job_id,
                output,
                VideoState.RENDERED,
                progress=1.0,
                frames=result.frames,
                faceless_frames=result.faceless_frames,
                size=result.size,
                sha256=result.sha256,
                model=result.model,
                rendered_at=time.time(),
                duration=result.duration,
                warning=result.warning,
                lease_until=None,
                worker=claim.owner if claim else None,
            )
            self._count(db, "lipsyncd_frames_total", amount=result.frames)
            if publish is not None:
                publish()

    def fail_video(self, job_id: str, output: str, reason: str, claim: Claim | None = None) -> None:
        """A video that cannot be rendered, or whose rendered file cannot be shared (the stage counted)."""
        with self._change() as db:
            self._fence(db, job_id, output, claim)
            before = db.execute(
                "SELECT state FROM videos WHERE job_id = ? AND output = ?", (job_id, output)
            ).fetchone()[0]
            self._set_video(db, job_id, output, VideoState.FAILED, error=reason, lease_until=None)
            rendering = before in (VideoState.QUEUED.value, VideoState.RENDERING.value)
            self._count(db, "lipsyncd_failures_total", "render" if rendering else "upload")

    def complete_job(self, job_id: str) -> JobState | None:
        """Once no video of a queued or rendering job waits to render, move it on in one transaction
        (whichever worker finished its last video, exactly once): rendered (and on to its final state
        when it does not distribute), or failed when no video came out. None while videos still wait
        or when it was moved on already."""
        waiting = (job_id, VideoState.QUEUED.value, VideoState.RENDERING.value)
        with self._lock:  # the common answer, read without taking the write lock (asked every pass)
            if self._db.execute(
                "SELECT 1 FROM videos WHERE job_id = ? AND state IN (?,?) LIMIT 1", waiting
            ).fetchone():
                return None
        with self._change() as db:
            job = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None or job["state"] not in (JobState.QUEUED.value, JobState.RENDERING.value):
                return None
            videos = [
                _video(r)
                for r in db.execute(
                    "SELECT * FROM videos WHERE job_id = ? ORDER BY position", (job_id,)
                ).fetchall()
            ]
            if any(v.state in (VideoState.QUEUED, VideoState.RENDERING) for v in videos):
                return None
            done = (VideoState.RENDERED, VideoState.UPLOADING, VideoState.READY)
            if not any(v.state in done for v in videos):
                reasons = "\n".join(f"  - {v.source_written}: {v.error}" for v in videos)
                self._move_job(
                    db, job_id, JobState.FAILED, error=f"no video of this job could be rendered:\n{reasons}"
                )
                state = JobState.FAILED
            else:
                self._move_job(db, job_id, JobState.RENDERED)
                state = self._finish(db, job_id) if not job["distribute"] else JobState.RENDERED
            if not job["rerenders"]:
                self._effect(db, Effect.FILE, job_id)
            return state

    def active_jobs(self) -> list[str]:
        """Jobs queued or rendering (complete_job is asked about each after a pass)."""
        return [j.id for j in self.jobs(JobState.QUEUED, JobState.RENDERING)]

    def start_upload(
        self, job_id: str, output: str, object_key: str, owner: str | None = None, lease_s: float = 60.0
    ) -> Claim | None:
        """Uploading to `object_key`, chosen once: a resumed or repeated upload goes to the same object.
        With an owner, a claim with a lease like a render's: taken from rendered, or from uploading whose
        lease lapsed; None (nothing changed) while another upload worker holds it."""
        with self._change() as db:
            row = db.execute(
                "SELECT state, epoch, lease_until FROM videos WHERE job_id = ? AND output = ?",
                (job_id, output),
            ).fetchone()
            now = self._now(db)
            if owner is not None and row[0] == VideoState.UPLOADING.value and (row[2] or 0) >= now:
                return None
            claim = Claim(owner, row[1] + 1) if owner is not None else None
            leased = {"owner": owner, "epoch": claim.epoch, "lease_until": now + lease_s} if claim else {}
            self._set_video(
                db,
                job_id,
                output,
                VideoState.UPLOADING,
                error=None,
                object_key=object_key,
                retry_at=None,
                **leased,
            )
            return claim

    def uploads_lapsed(self) -> list[Video]:
        """Uploads whose worker stopped renewing its lease (paused, cut off, killed): claimable again."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM videos WHERE state = ? AND lease_until IS NOT NULL AND lease_until < ?",
                (VideoState.UPLOADING.value, self._now(self._db)),
            ).fetchall()
        return [_video(row) for row in rows]

    def upload_stopped(self, job_id: str, output: str, claim: Claim | None = None) -> None:
        """An upload paused by a stop or a crash: its journal lets it resume, no error to show."""
        with self._change() as db:
            self._fence(db, job_id, output, claim)
            self._set_video(db, job_id, output, VideoState.RENDERED, lease_until=None)

    def upload_failed(
        self, job_id: str, output: str, reason: str, retry_at: float, claim: Claim | None = None
    ) -> None:
        """The one end of a failed upload (from uploading, or from rendered when it failed before it
        started): back to rendered with the reason, not tried again before `retry_at` (epoch seconds)."""
        with self._change() as db:
            self._fence(db, job_id, output, claim)
            self._set_video(
                db, job_id, output, VideoState.RENDERED, error=reason, retry_at=retry_at, lease_until=None
            )
            self._count(db, "lipsyncd_failures_total", "upload")

    def video_ready(
        self, job_id: str, output: str, url: str, expires_at: float, claim: Claim | None = None
    ) -> None:
        """Uploaded and verified, its link signed: shown, then (by the eviction policy) the copy goes. A
        worker that lost its claim meanwhile is refused (LostClaim): the new owner publishes the link."""
        with self._change() as db:
            self._fence(db, job_id, output, claim)
            by = {"uploaded_by": claim.owner} if claim else {}
            self._set_video(
                db,
                job_id,
                output,
                VideoState.READY,
                url=url,
                expires_at=expires_at,
                retry_at=None,
                lease_until=None,
                **by,
            )
            self._effect(db, Effect.EVICT, job_id, output)
            size = db.execute(
                "SELECT size FROM videos WHERE job_id = ? AND output = ?", (job_id, output)
            ).fetchone()[0]
            self._count(db, "lipsyncd_upload_bytes_total", amount=size or 0)

    def relink(self, job_id: str, output: str, url: str, expires_at: float) -> None:
        """A ready video's link signed again before it expires."""
        self._video_change(job_id, output, None, url=url, expires_at=expires_at)

    def mark_evicted(self, job_id: str, output: str) -> None:
        self._video_change(job_id, output, None, evicted=True)

    def _video_change(
        self, job_id: str, output: str, state: VideoState | None, *effects: Effect, **values: Any
    ) -> None:
        with self._change() as db:
            self._set_video(db, job_id, output, state, **values)
            for effect in effects:
                self._effect(db, effect, job_id, output)

    def _set_video(
        self, db: sqlite3.Connection, job_id: str, output: str, state: VideoState | None, **values: Any
    ) -> None:
        """Move a video (checked) and set its columns, inside the caller's transaction, and ask for its
        job's views."""
        unknown = set(values) - _VIDEO_COLUMNS
        if unknown:
            raise ValueError(f"unknown video fields {sorted(unknown)}")
        if state is not None:
            row = db.execute("SELECT state FROM videos WHERE job_id = ? AND output = ?", (job_id, output))
            check_move(VideoState(row.fetchone()[0]), state)
            values["state"] = state.value
            if state in (VideoState.QUEUED, VideoState.RENDERED):  # to render, or to upload
                self._work_appeared(db)
        values["updated"] = time.time()
        sets = ", ".join(f"{key} = ?" for key in values)
        db.execute(
            f"UPDATE videos SET {sets} WHERE job_id = ? AND output = ?", (*values.values(), job_id, output)
        )
        self._effect(db, Effect.VIEWS, job_id)

    def render_again(self, job_id: str, output: str, reason: str) -> bool:
        """Send a rendered video whose file vanished back to the queue, and its job with it (one
        transaction), so the render watcher renders it again. False, changing nothing, while the job's
        other videos are still rendering: the render watcher would not see a video queued in the middle
        of its pass, so this waits until that pass is over."""
        with self._change() as db:
            job = JobState(db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])
            if job == JobState.RENDERING:
                return False
            row = db.execute("SELECT state FROM videos WHERE job_id = ? AND output = ?", (job_id, output))
            check_move(VideoState(row.fetchone()[0]), VideoState.QUEUED)
            check_move(job, JobState.QUEUED)
            now = time.time()
            db.execute(
                "UPDATE videos SET state = ?, progress = 0, error = ?, lease_until = NULL, attempts = 0,"
                " updated = ? WHERE job_id = ? AND output = ?",
                (VideoState.QUEUED.value, reason, now, job_id, output),
            )
            if job != JobState.QUEUED:
                db.execute(
                    "UPDATE jobs SET state = ?, rerenders = rerenders + 1, updated = ? WHERE id = ?",
                    (JobState.QUEUED.value, now, job_id),
                )
            self._effect(db, Effect.VIEWS, job_id)
            self._work_appeared(db)
        return True

    def revision(self, job_id: str) -> int:
        """The job's revision now (-1: no such job): a view made at a lower one is out of date."""
        with self._lock:
            row = self._db.execute("SELECT revision FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return int(row[0]) if row else -1

    def view_stamps(self) -> dict[str, float]:
        """Each job's last change (its row or any of its videos'): the periodic links.json check only
        looks again at views whose job changed or whose file did."""
        with self._lock:
            rows = self._db.execute(
                "SELECT j.id, j.updated, COALESCE((SELECT MAX(v.updated) FROM videos v"
                " WHERE v.job_id = j.id), 0) FROM jobs j"
            ).fetchall()
        return {row[0]: max(row[1], row[2]) for row in rows}

    # -- multipart upload journal (the uploader's UploadJournal protocol) ------------------------------

    def load(self, key: str) -> UploadState | None:
        """The unfinished multipart upload of this object key, with the parts the server accepted."""
        with self._lock:
            row = self._db.execute(
                "SELECT upload_id, part_size FROM uploads WHERE object_key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            parts = self._db.execute(
                "SELECT part_number, etag, size, checksum FROM parts WHERE object_key = ?"
                " ORDER BY part_number",
                (key,),
            ).fetchall()
        return UploadState(key, row[0], row[1], tuple(PartRecord(*p) for p in parts))

    def start(self, key: str, upload_id: str, part_size: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM parts WHERE object_key = ?", (key,))
            db.execute(
                "INSERT INTO uploads VALUES (?,?,?,?) ON CONFLICT (object_key) DO UPDATE SET"
                " upload_id = excluded.upload_id, part_size = excluded.part_size, started = excluded.started",
                (key, upload_id, part_size, time.time()),
            )

    def part_done(self, key: str, part_number: int, etag: str, size: int, checksum: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO parts VALUES (?,?,?,?,?) ON CONFLICT (object_key, part_number) DO UPDATE SET"
                " etag = excluded.etag, size = excluded.size, checksum = excluded.checksum",
                (key, part_number, etag, size, checksum),
            )

    def finish(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM parts WHERE object_key = ?", (key,))
            db.execute("DELETE FROM uploads WHERE object_key = ?", (key,))

    def upload_ids(self) -> set[str]:
        """Multipart uploads this store still owns (everything else under the prefix is an orphan)."""
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT upload_id FROM uploads")}

    # -- the worker registry (`lipsyncd hosts`): who runs where, and when each last beat ----------------

    def register_worker(self, name: str, host: str, kind: str, pid: int) -> None:
        """A worker process starting: its row (re)written as running; a restart replaces the old one."""
        with self._tx() as db:
            now = self._now(db)
            db.execute(
                "INSERT INTO workers (name, host, kind, pid, started, last_beat, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET host = excluded.host,"
                " kind = excluded.kind, pid = excluded.pid, started = excluded.started,"
                " last_beat = excluded.last_beat, state = excluded.state",
                (name, host, kind, pid, now, now, WORKER_RUNNING),
            )

    def worker_beat(self, name: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE workers SET last_beat = ?, state = ? WHERE name = ?",
                (self._now(db), WORKER_RUNNING, name),
            )

    def worker_stopped(self, name: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE workers SET last_beat = ?, state = ? WHERE name = ?",
                (self._now(db), WORKER_STOPPED, name),
            )

    def clock(self) -> float:
        """The ledger's clock (PostgreSQL's on a shared ledger): beats and leases are compared to it."""
        with self._lock:
            return self._now(self._db)

    def workers(self) -> list[WorkerRow]:
        with self._lock:  # a read, like the store's others: no write lock, so `status` never waits on one
            rows = self._db.execute(
                "SELECT name, host, kind, pid, started, last_beat, state FROM workers ORDER BY host, name"
            ).fetchall()
        return [WorkerRow(*row) for row in rows]

    def held_videos(self) -> list[Held]:
        """Videos under a live claim (a lease not yet released): what each worker holds now."""
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, job_id, output, state, lease_until FROM videos"
                " WHERE owner IS NOT NULL AND lease_until IS NOT NULL ORDER BY owner, job_id, position"
            ).fetchall()
        return [Held(*row) for row in rows]

    # -- manifest takes (several intakes, on several hosts, watching one shared inbox) -----------------

    def _take(self, db: sqlite3.Connection, take: Take, job_id: str) -> None:
        """Hold the take's key for `job_id` ("" for a rejection being filed), or ManifestTaken. The key is
        unique: of several intakes that saw the same claimed manifest, one inserts and the others read
        the holder. A holder that is over gives way, compare-and-set on its job and time."""
        now = self._now(db)
        key = (take.name, take.sha256, take.file_id)
        cur = db.execute(
            "INSERT INTO manifest_takes (name, sha256, file_id, job_id, taker, taken) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT (name, sha256, file_id) DO NOTHING",
            (*key, job_id, take.taker, now),
        )
        if cur.rowcount == 1:
            self._forget_takes_over(db, now)
            return
        row = db.execute(
            "SELECT job_id, taker, taken FROM manifest_takes WHERE name = ? AND sha256 = ? AND file_id = ?",
            key,
        ).fetchone()
        if row is not None and self._take_held(db, row[0], row[2], now):
            raise ManifestTaken(take.name, row[0], row[1])
        cur = db.execute(
            "UPDATE manifest_takes SET job_id = ?, taker = ?, taken = ?"
            " WHERE name = ? AND sha256 = ? AND file_id = ? AND job_id = ? AND taken = ?",
            (job_id, take.taker, now, *key, row[0] if row else "", row[2] if row else 0),
        )
        if cur.rowcount != 1:  # another intake replaced the old holder first
            raise ManifestTaken(take.name, "", "another intake")

    @staticmethod
    def _take_held(db: sqlite3.Connection, job_id: str, taken: float, now: float) -> bool:
        """A job's take holds while the job runs (a late intake that read the file before the job was
        recorded is still refused); a rejection's take ("" job) for TAKE_LEASE_S: its taker files it at
        once, or crashed. A take whose file was filed needs no holding: a new drop is a new file."""
        if now - taken < TAKE_LEASE_S:
            return True
        row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone() if job_id else None
        return row is not None and JobState(row[0]) not in _TAKE_OVER

    @staticmethod
    def _forget_takes_over(db: sqlite3.Connection, now: float) -> None:
        """Takes that no longer hold anything (see `_take_held`: past the lease, and their job finished or
        gone, or a rejection whose taker crashed) are deleted as new ones come, so the table stays the
        size of what is in flight, not of every manifest ever dropped."""
        finished = ", ".join("?" * len(_TAKE_OVER))
        db.execute(
            "DELETE FROM manifest_takes WHERE taken < ? AND (job_id = '' OR NOT EXISTS (SELECT 1 FROM jobs"
            f" WHERE jobs.id = manifest_takes.job_id AND jobs.state NOT IN ({finished})))",
            (now - TAKE_LEASE_S, *sorted(state.value for state in _TAKE_OVER)),
        )

    def take_rejection(self, take: Take) -> None:
        """Hold a manifest that is to be filed under failed/ (ManifestTaken when another intake does)."""
        with self._tx() as db:
            self._take(db, take, "")

    def rejection_filed(self, take: Take) -> None:
        """The rejected manifest is under failed/: the same file dropped again is taken at once."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM manifest_takes WHERE name = ? AND sha256 = ? AND file_id = ? AND job_id = ''"
                " AND taker = ?",
                (take.name, take.sha256, take.file_id, take.taker),
            )

    def takes(self) -> list[tuple[str, str, str]]:
        """(name, job, taker) of every take recorded, oldest first (for tests and diagnosis)."""
        with self._lock:
            rows = self._db.execute("SELECT name, job_id, taker FROM manifest_takes ORDER BY taken")
            return [(r[0], r[1], r[2]) for r in rows.fetchall()]


def _prepare(db: sqlite3.Connection, timeout: float, where: str) -> int:
    """WAL mode and the schema. While the other watcher sets up a fresh database, SQLite may answer
    "database is locked" at once instead of waiting its busy timeout: try again until the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return _migrate(db, "sqlite", where)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


# -- versioned migrations -------------------------------------------------------------------------------
# _SCHEMA creates what is missing at every start (new tables need nothing more). A change to an existing
# table is a numbered step per backend, _MIGRATIONS[backend][N - 1] taking a store to version N. Steps run
# in one transaction with the version they reach, on fresh stores too, so each must be idempotent.


def _pg_retry_at(db: sqlite3.Connection) -> None:
    # the one column SQLite stores gain in _add_missing_columns that _SCHEMA does not list
    db.execute("ALTER TABLE videos ADD COLUMN IF NOT EXISTS retry_at DOUBLE PRECISION")


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """A store made by an older version lacks columns added since: add them (the other watcher may be
    adding the same one at this moment; that is no error)."""
    for table, column, spec in (
        ("jobs", "rerenders", "INTEGER NOT NULL DEFAULT 0"),
        ("videos", "warning", "TEXT"),
        ("videos", "owner", "TEXT"),
        ("videos", "epoch", "INTEGER NOT NULL DEFAULT 0"),
        ("videos", "lease_until", "REAL"),
        ("videos", "attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("videos", "worker", "TEXT"),
        ("videos", "uploaded_by", "TEXT"),
    ):
        if column in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            continue
        try:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {spec}")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise
    added = [("jobs", "page_url TEXT"), ("jobs", "page_expires_at REAL"), ("jobs", "page_sha256 TEXT")]
    for table, column in [*added, ("videos", "duration REAL"), ("videos", "retry_at REAL")]:
        if column.split()[0] not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            try:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise


# -- PostgreSQL: the same SQL, through a facade with sqlite3's few calls ---------------------------------

# every write transaction takes this lock first, as SQLite's BEGIN IMMEDIATE takes its write lock: the
# intents stay written as straight-line reads and writes, and run one at a time across every host. Claims
# take it shared: they run side by side, and safely so, since each locks its rows (FOR UPDATE, SKIP LOCKED
# for the video); any other write waits for them and they for it.
_WRITE_LOCK = 0x6C697073  # "lips"
_MIGRATE_LOCK = _WRITE_LOCK + 1
_BEGIN_CLAIM = "BEGIN CLAIM"  # the facade's word for a claim's transaction


class _Row(tuple):  # type: ignore[type-arg]
    """A row read by index or by column name, and dict(row), as sqlite3.Row allows."""

    names: tuple[str, ...]

    def __new__(cls, values: Any, names: tuple[str, ...]) -> _Row:
        row = super().__new__(cls, values)
        row.names = names
        return row

    def keys(self) -> list[str]:
        return list(self.names)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self.names.index(key))
        return super().__getitem__(key)


class _Rows:
    """A statement's result, read at once (the cursor goes with the next statement)."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows, self.rowcount = rows, rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


def _row_factory(cursor: Any) -> Callable[[Any], _Row]:
    names = tuple(c.name for c in cursor.description or ())
    return lambda values: _Row(values, names)


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s` (a literal % doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _pg_schema(schema: str) -> str:
    """SQLite's column types in PostgreSQL's words: REAL is 4 bytes there, INTEGER 4 (sizes need 8)."""
    return re.sub(r"\bINTEGER\b", "BIGINT", re.sub(r"\bREAL\b", "DOUBLE PRECISION", schema))


class _Postgres:
    """One autocommit connection, used under the store's lock as the SQLite one is: `BEGIN IMMEDIATE`
    opens a short transaction holding the write lock, anything else is one statement. A connection
    found broken between transactions is opened again."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self._timeout = url, timeout
        self._conn: Any = None
        self._down_since: float | None = None  # monotonic start of an outage this process is in
        self._connection()

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self.url,
                **_passfile(os.environ),
                fallback_application_name=_application_name(),
                autocommit=True,
                row_factory=_row_factory,
                connect_timeout=max(1, round(self._timeout)),
                # a write waiting for the write lock longer than the busy timeout fails, as in SQLite
                options=f"-c lock_timeout={round(self._timeout * 1000)}",
            )
        return self._conn

    @property
    def in_transaction(self) -> bool:
        import psycopg

        status = psycopg.pq.TransactionStatus
        return bool(self._conn.info.transaction_status in (status.INTRANS, status.INERROR))

    def execute(self, sql: str, args: Any = ()) -> _Rows:
        import psycopg

        try:
            rows = self._execute(sql, args)
        except psycopg.OperationalError as exc:
            if self._conn is not None and not self._conn.closed and not self._conn.broken:
                raise  # the statement's own failure (a lock timeout, say), on a connection still up
            self._outage_began(exc)
            raise LedgerUnreachable(self.url, exc) from exc
        if self._down_since is not None:
            down_s = round(time.monotonic() - self._down_since, 1)
            self._down_since = None
            log.warning("ledger_reachable", url=_without_password(self.url), down_s=down_s)
        return rows

    def _outage_began(self, exc: Exception) -> None:
        """One line when an outage starts and one when it ends (`ledger_reachable`), however often the
        workers retry in between: an hour of PostgreSQL maintenance is two lines, not thousands."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("ledger_unreachable", url=_without_password(self.url), reason=reason)

    def _execute(self, sql: str, args: Any) -> _Rows:
        if self.in_transaction:
            return self._run(self._conn, sql, args)
        try:
            return self._outside(sql, args)
        except Exception:
            if not self._conn.broken:
                raise
        # the server restarted or dropped us since the last statement: nothing of this one ran, and it
        # starts a transaction or only reads, so it is safe to send again on a new connection
        rows = self._outside(sql, args)
        log.warning("ledger_reconnected", url=_without_password(self.url))  # once it worked
        return rows

    def _outside(self, sql: str, args: Any) -> _Rows:
        conn = self._connection()
        if sql in ("BEGIN IMMEDIATE", _BEGIN_CLAIM):
            conn.execute("BEGIN")
            shared = "_shared" if sql == _BEGIN_CLAIM else ""
            conn.execute(f"SELECT pg_advisory_xact_lock{shared}(%s)", (_WRITE_LOCK,))
            return _Rows([], -1)
        return self._run(conn, sql, args)

    @staticmethod
    def _run(conn: Any, sql: str, args: Any) -> _Rows:
        # SQLite stores True as 1 in INTEGER columns; PostgreSQL wants the number said
        values = [int(a) if isinstance(a, bool) else a for a in args]
        cur = conn.execute(_pg_sql(sql), values)
        return _Rows(cur.fetchall() if cur.description else [], cur.rowcount)

    def executescript(self, script: str) -> None:
        self._connection().execute(script)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


WAKE_CHANNEL = "lipsyncd_work"
LISTEN_RETRY_S = 5.0


class _Listener(threading.Thread):
    """LISTEN on a connection of its own; each notification sets the wake event. A lost connection is
    opened again after a pause (the workers poll meanwhile)."""

    def __init__(self, url: str, wake: threading.Event) -> None:
        super().__init__(name="ledger-listener", daemon=True)
        self.url, self.wake, self._done = url, wake, threading.Event()
        self.listening = threading.Event()  # set once LISTEN ran: no notification is missed after it

    def stop(self) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        import psycopg

        while not self._done.is_set():
            try:
                with psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=5,
                    fallback_application_name=_application_name(),
                    **_passfile(os.environ),
                ) as conn:
                    conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    self.listening.set()
                    while not self._done.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self.wake.set()
            except psycopg.Error as exc:
                log.warning("ledger_listen_lost", error=str(exc), retry_in=LISTEN_RETRY_S)
                self._done.wait(LISTEN_RETRY_S)


def _passfile(environ: Any) -> dict[str, Any]:
    """The password of store.url as a systemd credential (LoadCredential=pgpass:...): that file, in
    pgpass format, is libpq's passfile, unless PGPASSFILE names one already."""
    folder = environ.get("CREDENTIALS_DIRECTORY")
    if environ.get("PGPASSFILE") or not folder or not (Path(folder) / "pgpass").is_file():
        return {}
    return {"passfile": str(Path(folder) / "pgpass")}


def _application_name() -> str:
    """What pg_stat_activity shows for this host's connections (unless store.url sets application_name):
    the database's operator sees which host holds how many."""
    return f"lipsyncd {socket.gethostname()}"[:63]  # PostgreSQL keeps 63 bytes


def _without_password(url: str) -> str:
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def _sqlite_revision(db: sqlite3.Connection) -> None:
    if "revision" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        db.execute("ALTER TABLE jobs ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")


def _pg_revision(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS revision BIGINT NOT NULL DEFAULT 0")


_MIGRATIONS: dict[str, list[Callable[[sqlite3.Connection], None]]] = {
    # 1: every column added before versions were recorded; 2: jobs.revision (links.json's order)
    "sqlite": [_add_missing_columns, _sqlite_revision],
    # 1: the schema as SQLite stores had it then; 2: jobs.revision
    "postgresql": [_pg_retry_at, _pg_revision],
}


def _migrate(db: sqlite3.Connection, backend: str, where: str) -> int:
    """Apply the steps the store lacks and record its new version, in one transaction (SQLite's write
    lock, or PostgreSQL's migration lock: one process or host at a time; on PostgreSQL the tables are
    created under that lock too). Returns the version found. A store newer than this code is refused."""
    db.execute("BEGIN IMMEDIATE" if backend == "sqlite" else "BEGIN")
    try:
        if backend == "postgresql":
            db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATE_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"the job store {where} is at schema version {found}, but this lipsyncd knows versions up to "
                f"{SCHEMA_VERSION}: a newer lipsyncd has upgraded it. Run that newer version here too (every "
                "host sharing store.url must run the same one); nothing was changed."
            )
        if backend == "postgresql":
            db.executescript(_pg_schema(_SCHEMA))
        for version, step in enumerate(_MIGRATIONS[backend][found:], start=found + 1):
            step(db)
            log.info("store_migrated", backend=backend, version=version)
        if found < SCHEMA_VERSION:
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return int(found)


# -- SQLite stays on a local disk ----------------------------------------------------------------------

MOUNTINFO = Path("/proc/self/mountinfo")
# file systems another host can write to: SQLite's locks and WAL index do not work across them
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre"}
_NETWORK_FUSE = {"sshfs", "glusterfs", "cephfs", "s3fs", "rclone", "davfs", "gcsfuse", "smbnetfs"}


def mount_type(path: Path, mountinfo: str) -> str:
    """The file system type of the mount holding `path` (resolved), from /proc/self/mountinfo's text:
    the longest mount point that contains it."""
    best, kind = "", ""
    for line in mountinfo.splitlines():
        fields_, _, after = line.partition(" - ")
        parts = fields_.split()
        if len(parts) < 5 or not after:
            continue
        point = parts[4].replace("\\040", " ")
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, after.split()[0]
    return kind


def is_network_fs(kind: str) -> bool:
    main, _, sub = kind.partition(".")
    return kind in _NETWORK_FS or (main == "fuse" and sub in _NETWORK_FUSE)


def _refuse_network_fs(state_dir: Path) -> None:
    try:
        kind = mount_type(state_dir.resolve(), MOUNTINFO.read_text())
    except OSError:  # no /proc: nothing to tell
        return
    if is_network_fs(kind):
        raise StoreError(
            f"the state directory {state_dir} is on a network file system ({kind}), and the job store is "
            "SQLite there: its locks and write-ahead log do not work across hosts, so the ledger would be "
            "corrupted. Move paths.state to a local disk, or set store.url to a PostgreSQL database to "
            "share the ledger between hosts."
        )


def _log_lost(job_id: str, output: str, claim: Claim, now: Any, what: str) -> None:
    log.warning(
        "claim_lost",
        job=job_id,
        video=output,
        worker=claim.owner,
        epoch=claim.epoch,
        held_by=now[0] if now else None,
        held_epoch=now[1] if now else None,
        refused=what,
    )


def _private_dir(state_dir: Path) -> None:
    """The state directory 0700 (keys and the job store: the daemon's user only), whether we create it or
    it is already there (a mount point, such as a tmpfs, comes 1777). Both watchers start at once under
    `lipsyncd run`, so the other one may create it first: that is not an error. Someone else's directory
    (an operator running `lipsyncd status` as another user) is left as it is."""
    with suppress(FileExistsError):
        state_dir.mkdir(parents=True)
    if state_dir.stat().st_mode & 0o7777 != 0o700:
        with suppress(OSError):  # not ours, or read-only: opening the store says what is wrong
            state_dir.chmod(0o700)


def _disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: "database or disk is full" (SQLite's word for ENOSPC, and for EDQUOT on most systems)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "disk is full" in str(exc)


def _free(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    return f"{free / 2**20:.1f} MiB" if free < 2**30 else f"{free / 2**30:.1f} GiB"


def _private_files(db: Path) -> None:
    """SQLite gives the -wal and -shm files the database file's mode: make that 0600 before it opens,
    whatever the umask, so job rows, links and upload ids are this user's alone."""
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with suppress(FileNotFoundError):  # absent, or removed just now by the other watcher closing it
            path.chmod(0o600)
    with suppress(FileExistsError):  # made before, or by the other watcher starting at the same moment
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


_VIDEO_COLUMNS = {f.name for f in fields(Video)} - {"job_id", "output", "position", "state", "updated"}


def outcome(videos: list[Video]) -> JobState:
    """What a job whose videos are all finished adds up to: done when none failed, failed when all did,
    partial when some did and at least one came out."""
    failed = sum(v.state == VideoState.FAILED for v in videos)
    if failed == 0:
        return JobState.DONE
    return JobState.FAILED if failed == len(videos) else JobState.PARTIAL


def failures_text(videos: list[Video]) -> str:
    """The failed videos of a job and why, one per line, in plain words."""
    failed = [v for v in videos if v.state == VideoState.FAILED]
    lines = [f"  - {v.source_written}: {v.error or 'failed (no reason recorded)'}" for v in failed]
    return f"{len(failed)} of {len(videos)} videos could not be made:\n" + "\n".join(lines)


def output_names(manifest: Manifest) -> list[str]:
    """VIDEO.mp4 per source; clashing stems (a/x.mp4, b/x.mov) get -2, -3 so nothing is overwritten."""
    names: list[str] = []
    for ref in manifest.videos:
        stem = _safe_stem(ref.path.stem)
        name, n = f"{stem}.mp4", 1
        while name in names:
            n += 1
            name = f"{stem}-{n}.mp4"
        names.append(name)
    return names


def _safe_stem(stem: str) -> str:
    return job_name(stem) or "video"


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data.update(
        distribute=bool(data["distribute"]),
        notify=tuple(json.loads(data["notify"])),
        state=JobState(data["state"]),
        notified=bool(data["notified"]),
    )
    return Job(**data)


def _video(row: sqlite3.Row) -> Video:
    data = dict(row)
    data.update(state=VideoState(data["state"]), evicted=bool(data["evicted"]))
    return Video(**data)


# -- the worker registry's rows ----------------------------------------------------------------------

WORKER_RUNNING, WORKER_STOPPED = "running", "stopped"


@dataclass(frozen=True)
class WorkerRow:
    name: str  # host:kind@slot, the owner its claims carry
    host: str
    kind: str  # render | upload
    pid: int
    started: float  # epoch seconds, the writing host's clock
    last_beat: float
    state: str  # running | stopped (a crashed worker stays running with an old last_beat: stale)


@dataclass(frozen=True)
class Held:
    owner: str
    job_id: str
    output: str
    state: str
    lease_until: float
