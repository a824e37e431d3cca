"""Intake: complete manifests in the inbox become queued jobs in the store, or land in failed/ with a
plain-words error file. Runs in its own thread so a long render never delays noticing new work.

Several intakes (processes, or hosts sharing the inbox folder) may see the same manifest: the rename into
.claimed/ only narrows that (on a network share a retried rename can report failure after it happened,
and every rescan retakes claimed manifests that have no job). The job store decides: the job is recorded
together with a take unique on the claimed file (name, content, inode), so one intake makes the job (and
its reconciler files the manifest) and the others log one line and leave the file alone."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

import structlog
from watchdog.observers.api import BaseObserver

from daemon.inbox import Inbox, watch
from daemon.lease import host_name
from daemon.manifest import ManifestError, error_report, load_manifest, manifest_bytes
from daemon.store import Effect, JobState, JobStore, LedgerUnreachable, ManifestTaken, StateDiskFull, Take
from daemon.submitted_media import sweep_media

log = structlog.get_logger(__name__)


class Intake:
    def __init__(
        self,
        inbox: Inbox,
        store: JobStore,
        *,
        shared: Path,
        outputs_dir: Path,
        locks_dir: Path,
        webhooks: Collection[str],
        models: Callable[[], Collection[str]],
        on_job: Callable[[], None] = lambda: None,
        media_keep: float | None = None,  # None: submit's copies are left alone
        taker: str | None = None,  # who takes manifests, in the store's takes: host:pid by default
    ) -> None:
        self.inbox = inbox
        self.store = store
        self.shared = shared
        self.outputs_dir = outputs_dir
        self.locks_dir = locks_dir
        self.webhooks = webhooks
        self.models = models
        self.on_job = on_job
        self.media_keep = media_keep
        self.taker = taker or f"{host_name()}:{os.getpid()}"

    def recover(self) -> None:
        """At start: manifests claimed before a crash but never recorded as jobs are processed again;
        those whose job finished but which were not filed yet (a kill in between) are asked to be filed
        (an effect the render's reconciler applies, at its start-up). Only at start: while running, the
        intent that finishes a job records its filing."""
        finished = (JobState.FAILED, JobState.CANCELLED, JobState.RENDERED, JobState.DONE, JobState.PARTIAL)
        for claimed in self.retake_unrecorded():
            job = self.store.job_by_claim(claimed)
            if job is not None and job.state in finished:
                self.store.ask(Effect.FILE, job.id)

    def retake_unrecorded(self) -> list[Path]:
        """Take again the claimed manifests that have no job (the store was locked, say); returns the
        claimed manifests that do have one."""
        recorded = []
        for claimed in self.inbox.claimed():
            if self.store.job_by_claim(claimed) is None:
                log.info("manifest_recovered", manifest=claimed.name)
                self.take(claimed)
            else:
                recorded.append(claimed)
        return recorded

    def sweep(self, *, rescan: bool, by_mtime: bool = False) -> int:
        """Take every complete manifest; with `rescan`, look at the whole folder first (lost events) and
        retry claimed manifests that could not become jobs yet (the store was locked, say). `by_mtime`:
        a rescanned file unchanged for the settle time by its mtime is complete already."""
        if rescan:
            self.retake_unrecorded()
            for path in self.inbox.scan():
                self.inbox.note(path, moved=by_mtime and self.inbox.settled_by_mtime(path))
        taken = 0
        for path in self.inbox.ready_paths():
            claimed = self.inbox.claim(path)
            if claimed is not None:
                self.take(claimed)
                taken += 1
        if rescan and self.media_keep is not None:
            self.tidy_media(self.media_keep)
        return taken

    def tidy_media(self, keep: float) -> None:
        try:
            sweep_media(self.store, self.inbox.folder.resolve() / "media", keep)
        except OSError as exc:  # tidying must never stop the intake; the next rescan tries again
            log.warning("submitted_media_not_removed", error=str(exc))

    def take(self, claimed: Path) -> None:
        if not _utf8(claimed.name):
            report = (
                f"lipsyncd could not start a job from {claimed.name!r}.\n\nWhat is wrong:\n"
                "  - the file name is not valid UTF-8 text (it was probably copied from an old system).\n\n"
                "How to fix it: rename the manifest (letters, digits, - and _ are safe) and drop it into the "
                "inbox again.\n"
            )
            if self._reject(claimed, report):
                problems = ["file name is not UTF-8"]
                log.warning("manifest_rejected", manifest=repr(claimed.name), problems=problems)
            return
        try:
            manifest = load_manifest(
                claimed,
                base_dir=self.inbox.folder,
                shared=self.shared,
                webhooks=self.webhooks,
                models=self.models(),
            )
            take = self._take_of(claimed)
        except ManifestError as exc:
            if self._reject(claimed, error_report(exc)):
                log.warning("manifest_rejected", manifest=claimed.name, problems=exc.problems)
            return
        except OSError as exc:
            if self._reject(claimed, f"lipsyncd could not read {claimed.name}: {exc}\n"):
                log.error("manifest_unreadable", manifest=claimed.name, error=str(exc))
            return
        try:  # the job and its take in one transaction (+ its view)
            job = self.store.add_job(manifest, claimed_path=claimed, base_dir=self.inbox.folder, take=take)
        except ManifestTaken as exc:
            log.info("manifest_taken_elsewhere", manifest=claimed.name, job=exc.job_id, taker=exc.taker)
            return
        log.info(
            "job_queued",
            job=job.id,
            manifest=claimed.name,
            videos=len(manifest.videos),
            distribute=job.distribute,
        )
        self.on_job()

    def _take_of(self, claimed: Path) -> Take:
        """The store's key for this manifest: its claimed name, its content and its inode number."""
        try:  # never through a symlink out of the share, never blocked on a pipe
            digest = hashlib.sha256(manifest_bytes(claimed)).hexdigest()
        except ManifestError:
            digest = "unreadable"
        try:
            file_id = str(os.lstat(claimed).st_ino)
        except OSError:
            file_id = ""
        name = claimed.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return Take(name, digest, file_id, self.taker)

    def _reject(self, claimed: Path, report: str) -> bool:
        """File under failed/ unless another intake is doing so; False (one line logged) if it is."""
        take = self._take_of(claimed)
        try:
            self.store.take_rejection(take)
        except ManifestTaken as exc:
            log.info("manifest_taken_elsewhere", manifest=take.name, job=None, taker=exc.taker)
            return False
        try:
            if not os.path.lexists(claimed):  # another intake filed it and let go of its take before ours
                log.info("manifest_filed_elsewhere", manifest=take.name)
                return False
            self.inbox.file_failed(claimed, claimed.name, report)
            return True
        finally:
            self.store.rejection_filed(take)


class IntakeThread(threading.Thread):
    """watchdog events + a periodic full rescan; every loop checks the one stop event."""

    def __init__(self, intake: Intake, stop: threading.Event, *, rescan_interval: float, polling: bool,
                 beat: Callable[[], None] = lambda: None, poll_interval: float = 1.0) -> None:  # fmt: skip
        super().__init__(name="intake", daemon=True)
        self.intake = intake
        self.stop = stop
        self.rescan_interval = rescan_interval
        self.polling = polling
        self.poll_interval = poll_interval
        self.beat = beat
        self.wake = threading.Event()

    def run(self) -> None:
        observer = self._observer()
        next_rescan = 0.0
        try:
            while not self.stop.is_set():
                rescan = time.monotonic() >= next_rescan
                if rescan:
                    next_rescan = time.monotonic() + self.rescan_interval
                self._sweep(rescan)
                self.beat()
                self.wake.wait(timeout=0.25)
                self.wake.clear()
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)

    def _observer(self) -> BaseObserver | None:
        """Events when the system gives them; without (inotify limits used up) the rescans still work."""
        try:
            return watch(self.intake.inbox, self.wake, polling=self.polling, poll_interval=self.poll_interval)
        except OSError as exc:
            log.warning(
                "inbox_events_unavailable", error=str(exc), fallback=f"rescan every {self.rescan_interval}s"
            )
            return None

    def _sweep(self, rescan: bool) -> None:
        try:
            self.intake.sweep(rescan=rescan)
        except StateDiskFull as exc:  # one plain line; the claimed manifest is taken on a later rescan
            log.warning("intake_waits_for_space", reason=str(exc))
        except LedgerUnreachable:  # the store said so once; a claimed manifest is taken on a later rescan
            pass
        except Exception:  # one bad file must not stop the intake; the next sweep tries again
            log.exception("intake_error")


def _utf8(name: str) -> bool:
    """Linux names are bytes; ones that are not UTF-8 reach Python as surrogates SQLite cannot store."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
