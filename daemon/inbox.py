"""The inbox: notice manifests (watchdog events plus a periodic full rescan), take them only when complete,
claim each by an atomic rename so it is processed once, and file it under done/ or failed/ at the end.
A job that made some of its videos but not all (`partial`) is filed under done/ (its good videos are
there to use) with NAME.error.txt beside it naming each video that failed and why, as failed/ has.

Watch handlers only note paths; the decision to take a file is made by `Inbox.ready_paths`, called from
one intake thread. A file that arrived by rename is complete; any other must keep the same size and mtime
for `settle_time` seconds (a slow writer over Samba or NFS keeps changing both).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from daemon.files import write_atomic
from daemon.manifest import is_manifest_name, job_failure_report
from daemon.store import Job, JobState, Video, VideoState, failures_text

log = structlog.get_logger(__name__)

CLAIMED, DONE, FAILED = ".claimed", "done", "failed"


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float
    moved: bool = False


class Inbox:
    """The folder and its sub-folders; no threads here, so it is easy to test step by step."""

    def __init__(
        self, folder: Path, *, settle_time: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.folder = folder
        self.claimed_dir = folder / CLAIMED
        self.done_dir = folder / DONE
        self.failed_dir = folder / FAILED
        self.settle_time = settle_time
        self._clock = clock
        self._seen: dict[Path, _Seen] = {}
        self._lock = threading.Lock()
        self.make_folders()

    def scan(self) -> list[Path]:
        """Every candidate manifest directly in the inbox (the backstop when events are lost)."""
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            log.error("inbox_unreadable", folder=str(self.folder), error=str(exc))
            return []
        return sorted(
            Path(e.path)
            for e in entries
            if e.is_file(follow_symlinks=False) and is_manifest_name(Path(e.name))
        )

    def note(self, path: Path, *, moved: bool = False) -> None:
        """A watch event or a rescan saw `path`; `moved` means it was renamed into place (complete)."""
        if path.parent != self.folder or not is_manifest_name(path):
            return
        with self._lock:
            seen = self._seen.get(path)
            if seen is None:
                self._seen[path] = _Seen(-1, -1, self._clock(), moved)
            elif moved:
                seen.moved = True

    def settle_left(self) -> float:
        """Seconds until every noted file not yet taken has gone `settle_time` unchanged by its mtime
        (0.0 when none is noted): a one-off pass (`render --once`) waits this long, not a full period."""
        with self._lock:
            paths = list(self._seen)
        return max((self.settle_time - self._mtime_age(p) for p in paths), default=0.0)

    def settled_by_mtime(self, path: Path) -> bool:
        """Unchanged for `settle_time` already, by its mtime against this host's clock."""
        return self._mtime_age(path) >= self.settle_time

    @staticmethod
    def _mtime_age(path: Path) -> float:
        try:
            return max(0.0, time.time() - path.lstat().st_mtime)  # a future mtime (skew): just changed
        except FileNotFoundError:
            return float("inf")  # gone: nothing to wait for

    def ready_paths(self) -> list[Path]:
        """The noted files that are complete now; forgets files that went away."""
        ready = []
        with self._lock:
            for path, seen in list(self._seen.items()):
                if self._is_ready(path, seen):
                    ready.append(path)
                    del self._seen[path]
        return sorted(ready)

    def _is_ready(self, path: Path, seen: _Seen) -> bool:
        try:
            stat = path.lstat()
        except FileNotFoundError:
            del self._seen[path]
            return False
        now = self._clock()
        if (stat.st_size, stat.st_mtime_ns) != (seen.size, seen.mtime_ns):
            seen.size, seen.mtime_ns, seen.since = stat.st_size, stat.st_mtime_ns, now
            return seen.moved
        return seen.moved or now - seen.since >= self.settle_time

    def claim(self, path: Path) -> Path | None:
        """Rename into .claimed/ (atomic): None if it is gone. On a network share a retried rename can
        report the file gone after it moved it, and two hosts may pick the same name: a target that is
        there after a failed rename is returned too, and the job store decides who takes it."""
        if not self.claimed_dir.is_dir():  # the inbox was made again (tidied, or a share mounted over it)
            self.make_folders()
            log.warning("inbox_folders_recreated", folder=str(self.folder))
        target = _free_name(self.claimed_dir, path.name)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return target if target.is_file() else None
        return target

    def make_folders(self) -> None:
        for sub in (self.folder, self.claimed_dir, self.done_dir, self.failed_dir):
            sub.mkdir(parents=True, exist_ok=True)

    def claimed(self) -> list[Path]:
        if not self.claimed_dir.is_dir():
            return []
        return sorted(p for p in self.claimed_dir.iterdir() if p.is_file())

    def file_done(self, claimed: Path, original_name: str, report: str | None = None) -> Path:
        """Move to done/; with a report (some videos failed), next to NAME.error.txt as in failed/."""
        self.make_folders()
        if report is not None:
            return self._file_with_report(self.done_dir, claimed, original_name, report)
        target = _free_name(self.done_dir, original_name)
        os.replace(claimed, target)
        return target

    def file_job(self, job: Job, videos: list[Video]) -> Path:
        """File a finished job's claimed manifest by its outcome: failed/ with the job's error (failed or
        cancelled), or done/,
        with an error file naming each failed video and why when some failed (a partial job)."""
        claimed = Path(job.claimed_path)
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            return self.file_failed(claimed, job.manifest, job_failure_report(job.manifest, job.error or ""))
        if not any(v.state == VideoState.FAILED for v in videos):
            return self.file_done(claimed, job.manifest)
        report = (
            f"lipsyncd made only some of the videos of {job.manifest}.\n\n{failures_text(videos)}\n\n"
            "The other videos are in the job's output folder (see its links.json). Fix the files named "
            "above and submit a manifest with just those videos.\n"
        )
        return self.file_done(claimed, job.manifest, report)

    def file_failed(self, claimed: Path, original_name: str, report: str) -> Path:
        """Move to failed/ next to NAME.error.txt (written first, atomically, so both are there together).
        Neither may replace an earlier failure's files: clash.yaml and clash.json each get their own."""
        self.make_folders()
        return self._file_with_report(self.failed_dir, claimed, original_name, report)

    @staticmethod
    def _file_with_report(folder: Path, claimed: Path, original_name: str, report: str) -> Path:
        n = 1
        while True:
            target = _free_name(folder, original_name, start=n)
            error_file = target.with_name(target.name.rsplit(".", 1)[0] + ".error.txt")
            if not error_file.exists():
                break
            n += 1
        write_atomic(error_file, report)
        try:
            os.replace(claimed, target)
        except FileNotFoundError:  # another host filed it first: no report without its manifest
            error_file.unlink(missing_ok=True)
            raise
        return target


def _free_name(folder: Path, name: str, start: int = 1) -> Path:
    """folder/name, or folder/STEM.2.SUFFIX ... when taken: nothing in done/ or failed/ is overwritten."""
    stem, dot, suffix = name.rpartition(".")

    def numbered(n: int) -> Path:
        if n == 1:
            return folder / name
        return folder / (f"{stem}.{n}.{suffix}" if dot else f"{name}.{n}")

    n = start
    while numbered(n).exists():
        n += 1
    return numbered(n)


class _Handler(FileSystemEventHandler):
    """Only notes paths: the intake thread decides (watchdog's dispatcher must never block)."""

    def __init__(self, inbox: Inbox, wake: threading.Event) -> None:
        self.inbox = inbox
        self.wake = wake

    def on_created(self, event: FileSystemEvent) -> None:
        self._note(event.src_path, moved=False)

    def on_modified(self, event: FileSystemEvent) -> None:
        self._note(event.src_path, moved=False)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._note(event.src_path, moved=False)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.dest_path:  # empty: moved out of the inbox (full events)
            self._note(event.dest_path, moved=True)

    def _note(self, raw: str | bytes, *, moved: bool) -> None:
        path = Path(os.fsdecode(raw))
        if not path.is_dir():
            self.inbox.note(path, moved=moved)
            self.wake.set()


def start_observer(
    folder: Path,
    handler: FileSystemEventHandler,
    *,
    polling: bool,
    recursive: bool = False,
    poll_interval: float = 1.0,
    full_events: bool = False,
) -> BaseObserver:
    """inotify (native) by default; polling (a listing every `poll_interval`) for network shares, where
    other clients' writes never reach this host's inotify. `full_events`: a file renamed in from outside
    the folder is a move (not a creation), so it is known complete at once."""
    observer: BaseObserver
    if polling:
        observer = PollingObserver(timeout=poll_interval)
    elif full_events:
        observer = Observer(generate_full_events=True)  # type: ignore[call-arg]  # inotify's option
    else:
        observer = Observer()
    observer.schedule(handler, str(folder), recursive=recursive)
    observer.daemon = True
    observer.start()
    return observer


def watch(inbox: Inbox, wake: threading.Event, *, polling: bool, poll_interval: float = 1.0) -> BaseObserver:
    handler = _Handler(inbox, wake)
    return start_observer(inbox.folder, handler, polling=polling, poll_interval=poll_interval,
                          full_events=True)  # fmt: skip
