"""The media `lipsyncd submit` copied into inbox/media/ (one folder per submit) are removed once every
job using them finished (done, failed, cancelled: any state with no work to come) and `inbox.media_keep`
has passed, so a retry can still render them. One sweep in the render daemon's intake sees every way a
job finishes (rendering, uploading, `lipsyncd cancel`), whichever process made it."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import structlog

from daemon.store import JobState, JobStore

log = structlog.get_logger(__name__)

# NAME-YYYYmmdd-HHMMSS-XXXXXXXX: the folders submit makes (daemon/submit.py); anything else is the user's
SUBMIT_FOLDER = re.compile(r"-\d{8}-\d{6}-[A-Za-z0-9_]{8}$")
UNUSED_GRACE = 3600.0  # a copy whose manifest is not a job yet may still be on its way into the inbox
_ACTIVE = (JobState.QUEUED.value, JobState.RENDERING.value, JobState.RENDERED.value)


def sweep_media(store: JobStore, media_dir: Path, keep: float, now: float | None = None) -> list[Path]:
    """Remove the submit folders due for removal; returns them."""
    now = time.time() if now is None else now
    folders = _submit_folders(media_dir)
    if not folders:
        return []
    finished: dict[Path, float] = {}  # folder -> when its last job finished (inf while one is active)
    for job in store.jobs():
        videos = store.videos(job.id)
        for path in (job.audio, *(v.source for v in videos)):
            folder = _folder_of(Path(path), media_dir)
            if folder is not None:
                done = job.state.value not in _ACTIVE
                finished[folder] = max(finished.get(folder, 0.0), job.updated if done else float("inf"))
    removed = []
    for folder in folders:
        if folder in finished:
            due = finished[folder] + keep <= now
        else:
            due = _mtime(folder) + max(keep, UNUSED_GRACE) <= now
        if due:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            log.info("submitted_media_removed", folder=folder.name, used=folder in finished)
    return removed


def _submit_folders(media_dir: Path) -> list[Path]:
    if not media_dir.is_dir():
        return []
    return [
        p for p in media_dir.iterdir() if SUBMIT_FOLDER.search(p.name) and p.is_dir() and not p.is_symlink()
    ]


def _folder_of(path: Path, media_dir: Path) -> Path | None:
    """The submit folder directly under media_dir that holds `path`, if any."""
    try:
        parts = path.relative_to(media_dir).parts
    except ValueError:
        return None
    return media_dir / parts[0] if len(parts) > 1 else None


def _mtime(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:
        return float("inf")
