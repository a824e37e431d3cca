"""links.json: the status and download links of one job, next to its outputs.

It is a view of the job store, never edited in place: each writer reads the job's rows and replaces the
whole file (temp file + rename) while holding a per-job lock, so the render and upload processes cannot
overwrite a newer view with an older one, and a reader never sees half a file. Secrets never go in.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from daemon.files import write_atomic
from daemon.linkspage import PAGE_NAME, render_page
from daemon.store import Job, JobStore, Video, VideoState

log = structlog.get_logger(__name__)

LINKS_NAME = "links.json"
POSTER_SUFFIX = ".poster.jpg"  # NAME.poster.jpg beside NAME.mp4: one frame, embedded in links.html
FORMAT_VERSION = 1


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def job_view(job: Job, videos: list[Video], folder: Path | None = None) -> dict[str, Any]:
    """The JSON document for one job. Pure but for `folder` (the job's output folder): given, a video
    only shows a local copy whose file is there. The unit tests check it field by field."""
    return {
        "version": FORMAT_VERSION,
        "revision": job.revision,  # rises with each change of the job: the newer of two views is the higher
        "job": job.id,
        "manifest": job.manifest,
        "status": job.state.value,
        "error": job.error,
        "audio": job.audio_written,
        "distribute": job.distribute,
        "created_at": iso(job.created),
        "updated_at": iso(max([job.updated, *(v.updated for v in videos)])),
        "page_url": job.page_url,  # links.html in storage, with its own link (links.upload_page)
        "page_expires_at": iso(job.page_expires_at),
        "videos": [_video_view(v, folder) for v in videos],
        "summary": summary(job, videos),
        "problems": problems(videos),
    }


def summary(job: Job, videos: list[Video]) -> str:
    """ "2 of 3 ready": videos the user can use now (uploaded, or rendered when the job keeps them local)
    out of all; ", 1 in progress" while some are still to come (why the others failed: `problems`)."""
    usable = (VideoState.READY,) if job.distribute else (VideoState.RENDERED, VideoState.READY)
    ready = sum(v.state in usable for v in videos)
    failed = sum(v.state == VideoState.FAILED for v in videos)
    pending = len(videos) - ready - failed
    return f"{ready} of {len(videos)} ready" + (f", {pending} in progress" if pending else "")


def problems(videos: list[Video]) -> list[str]:
    """Each failed video and each warning, in plain words, naming the video."""
    found = [f"{v.source_written} failed: {v.error}" for v in videos if v.state == VideoState.FAILED]
    return found + [f"{v.source_written}: {v.warning}" for v in videos if v.warning]


def _video_view(video: Video, folder: Path | None = None) -> dict[str, Any]:
    return {
        "source": video.source_written,
        "output": video.output,
        "status": video.state.value,
        "progress": round(video.progress, 3),
        "error": video.error,
        "model": video.model,
        "frames": video.frames,
        "frames_without_face": video.faceless_frames,
        "duration_s": None if video.duration is None else round(video.duration, 2),
        "size": video.size,
        "sha256": video.sha256,
        "object_key": video.object_key,
        "url": video.url,
        "expires_at": iso(video.expires_at),
        "local_copy": _local_copy(video, folder),
        "warning": video.warning,
        # the worker (host:render@slot) rendering it now, or that rendered it
        "worker": video.worker or (video.owner if video.state == VideoState.RENDERING else None),
        "uploaded_by": video.uploaded_by,
    }


def _local_copy(video: Video, folder: Path | None) -> bool:
    """True only for a rendered file not evicted, and, when the folder is known, actually there."""
    if video.evicted or video.state not in (VideoState.RENDERED, VideoState.UPLOADING, VideoState.READY):
        return False
    return folder is None or (folder / video.output).is_file()


class UnsafeOutput(OSError):
    """A job's output folder is not a plain folder inside the outputs (a planted symlink, say)."""


def job_dir(outputs_dir: Path, job_id: str) -> Path:
    """outputs/JOB, made if missing; refused if it is a symlink or not a folder, so nothing is ever
    written outside the outputs through it."""
    folder = outputs_dir / job_id
    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() or not folder.is_dir():
        raise UnsafeOutput(
            errno.EEXIST,
            f"{folder} is a symbolic link or not a folder; lipsyncd only writes into real "
            "folders inside the outputs. Remove it and submit the job again",
        )
    return folder


def write_links(
    store: JobStore, job_id: str, outputs_dir: Path, locks_dir: Path, *, wait: bool = True
) -> Path:
    """Rewrite outputs_dir/JOB/links.json from the store, atomically, under the job's lock (with
    wait=False, BlockingIOError when another process holds it)."""
    with job_lock(locks_dir, job_id, wait=wait):
        return _write_view(store, job_id, job_dir(outputs_dir, job_id))


def _write_view(store: JobStore, job_id: str, folder: Path) -> Path:
    job = store.job(job_id)
    if job is None:
        raise KeyError(job_id)
    videos = store.videos(job_id)
    document = job_view(job, videos, folder)
    path = folder / LINKS_NAME
    if _current(path) == document and (folder / PAGE_NAME).exists():
        return path
    return write_view_files(folder, document, _unchanged_since(store, job))


def _unchanged_since(store: JobStore, job: Job) -> Callable[[], bool]:
    """Whether the store still says what this view was made from (no newer revision): asked just before
    each rename. The job lock is each host's own, so a view made on one host before a pause (SIGSTOP, a
    stalled VM) must not land over the newer one another host wrote meanwhile: the newer change's writer
    has its own. What slips between this question and the rename, the reconciler's check after the
    rename catches (daemon.reconcile)."""
    return lambda: store.revision(job.id) <= job.revision


def write_view_files(
    folder: Path, document: dict[str, Any], still_current: Callable[[], bool] | None = None
) -> Path:
    """links.html, then links.json, from the same view: the page can never show an older view than the
    JSON that readers poll (the JSON going last also makes an unchanged JSON mean an up-to-date page).
    links.json matters more: when the page cannot be written (a full disk: the page is the bigger file),
    the old page is removed rather than left behind the JSON, and the view check puts it back later."""
    place = None if still_current is None else _place_if(still_current)
    page = folder / PAGE_NAME
    try:
        write_text_atomic(page, render_page(document, _posters(folder, document)), place=place)
    except OSError as exc:
        page.unlink(missing_ok=True)
        log.warning("links_page_write_failed", job=document.get("job"), error=str(exc))
    return write_json_atomic(folder / LINKS_NAME, document, place=place)


def _place_if(still_current: Callable[[], bool]) -> Callable[[Path, Path], Path]:
    def place(tmp: Path, path: Path) -> Path:
        if not still_current():  # the store moved on since this view was made: it is left unwritten
            tmp.unlink(missing_ok=True)
            log.debug("links_view_superseded", job=path.parent.name, file=path.name)
            return path
        os.replace(tmp, path)
        return path

    return place


def poster_path(folder: Path, output: str) -> Path:
    return folder / (Path(output).stem + POSTER_SUFFIX)


def _posters(folder: Path, document: dict[str, Any]) -> dict[str, bytes]:
    posters = {}
    for video in document["videos"]:
        try:
            posters[video["output"]] = poster_path(folder, video["output"]).read_bytes()
        except OSError:
            continue  # not rendered yet, or its poster could not be made: the page shows a placeholder
    return posters


def _current(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def refresh_views(store: JobStore, outputs_dir: Path, locks_dir: Path, job_ids: Iterable[str]) -> int:
    """After a restart: remove temp files a killed writer left and rewrite any links.json that differs
    from the store (a kill between a commit and its links.json write). Returns how many were rewritten."""
    return sum(_refresh_view(store, outputs_dir / job_id, locks_dir, job_id) for job_id in job_ids)


def _refresh_view(store: JobStore, folder: Path, locks_dir: Path, job_id: str) -> bool:
    if not folder.is_dir() or folder.is_symlink():
        return False
    try:
        with job_lock(locks_dir, job_id, wait=False):
            for name in (LINKS_NAME, PAGE_NAME):
                for stale in folder.glob(f".{name}.*.tmp"):
                    stale.unlink(missing_ok=True)
            before = _current(folder / LINKS_NAME)
            changed: bool = before != _current(_write_view(store, job_id, folder))
            return changed
    except BlockingIOError:
        return False  # another process is writing this view right now: it is being refreshed anyway


class ViewChecker:
    """The periodic check of every job's links.json against the store, so a view edited or truncated by
    hand, or left stale by a write that failed (disk full), is put right without waiting for the job's
    next change. Cheap when nothing changed: one query for all jobs and one stat per view; a view is read
    again only when its file or its job changed since it was last found right."""

    GRACE = 2.0  # seconds a valid but older view is left to the writer that just committed a change

    def __init__(self, store: JobStore, outputs_dir: Path, locks_dir: Path) -> None:
        self.store, self.outputs_dir, self.locks_dir = store, outputs_dir, locks_dir
        self._verified: dict[str, tuple[float, tuple[int, int, int] | None]] = {}

    def check(self) -> list[tuple[str, str]]:
        """Rewrite the views that are not the store's; returns (job id, what was wrong) per rewrite."""
        repaired = []
        for job_id, changed in self.store.view_stamps().items():
            path = self.outputs_dir / job_id / LINKS_NAME
            seen = (changed, file_signature(path))
            if self._verified.get(job_id) == seen:
                continue
            fresh = time.time() - changed < self.GRACE
            try:
                was = self._repair(job_id, path, fresh)
            except (OSError, KeyError):
                continue  # tried again on the next pass
            if was == "busy":
                continue
            if was:
                repaired.append((job_id, was))
            self._verified[job_id] = (changed, file_signature(path))
        return repaired

    def _repair(self, job_id: str, path: Path, fresh: bool) -> str | None:
        """None if the view is right (or its folder is gone: an operator removed it), "busy" if it could
        not be looked at now, else what was wrong with it, after rewriting it."""
        folder = path.parent
        if not folder.is_dir() or folder.is_symlink():
            return None
        try:
            with job_lock(self.locks_dir, job_id, wait=False):
                return self._compare_and_write(job_id, path, fresh)
        except BlockingIOError:
            return "busy"  # another process is writing this view right now

    def _compare_and_write(self, job_id: str, path: Path, fresh: bool) -> str | None:
        job = self.store.job(job_id)
        if job is None:
            return None
        videos = self.store.videos(job_id)
        document = job_view(job, videos, path.parent)
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            was = "missing"
        except (OSError, ValueError):
            was = "not valid JSON"
        else:
            if current == document and (path.parent / PAGE_NAME).exists():
                return None
            if fresh:
                return "busy"  # its writer committed just now and is about to write it
            was = "without its links.html" if current == document else "different from the job store"
        write_view_files(path.parent, document, _unchanged_since(self.store, job))
        return was


def file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def write_json_atomic(
    path: Path, document: dict[str, Any], place: Callable[[Path, Path], Path] | None = None
) -> Path:
    return write_text_atomic(path, json.dumps(document, ensure_ascii=False, indent=2) + "\n", place=place)


def write_text_atomic(path: Path, text: str, place: Callable[[Path, Path], Path] | None = None) -> Path:
    return write_atomic(path, text, mode=0o644, fsync=True, place=place)  # readers see it whole


@contextmanager
def job_lock(locks_dir: Path, job_id: str, *, wait: bool = True) -> Iterator[None]:
    """An advisory lock shared by every process that writes this job's links.json. With wait=False,
    BlockingIOError when another holds it."""
    locks_dir.mkdir(parents=True, exist_ok=True)
    with open(locks_dir / f"{job_id}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
