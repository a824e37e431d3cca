"""links.json: the status and download links of one job, next to its outputs (DESIGN.md section 2).

It is a view of the job store, never edited in place: each writer reads the job's rows and replaces the
whole file (temp file + rename) while holding a per-job lock, so the render and upload processes cannot
overwrite a newer view with an older one, and a reader never sees half a file. Secrets never go in.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.store import Job, JobStore, Video

LINKS_NAME = "links.json"
FORMAT_VERSION = 1


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def job_view(job: Job, videos: list[Video]) -> dict[str, Any]:
    """The JSON document for one job. Pure: the unit tests check it field by field."""
    return {
        "version": FORMAT_VERSION,
        "job": job.id,
        "manifest": job.manifest,
        "status": job.state.value,
        "error": job.error,
        "audio": job.audio_written,
        "distribute": job.distribute,
        "created_at": iso(job.created),
        "updated_at": iso(max([job.updated, *(v.updated for v in videos)])),
        "videos": [_video_view(v) for v in videos],
    }


def _video_view(video: Video) -> dict[str, Any]:
    return {
        "source": video.source_written,
        "output": video.output,
        "status": video.state.value,
        "progress": round(video.progress, 3),
        "error": video.error,
        "model": video.model,
        "frames": video.frames,
        "frames_without_face": video.faceless_frames,
        "size": video.size,
        "sha256": video.sha256,
        "object_key": video.object_key,
        "url": video.url,
        "expires_at": iso(video.expires_at),
        "local_copy": not video.evicted,
    }


def write_links(store: JobStore, job_id: str, outputs_dir: Path, locks_dir: Path) -> Path:
    """Rewrite outputs_dir/JOB/links.json from the store, atomically, under the job's lock."""
    folder = outputs_dir / job_id
    with job_lock(locks_dir, job_id):
        job = store.job(job_id)
        if job is None:
            raise KeyError(job_id)
        document = job_view(job, store.videos(job_id))
        return write_json_atomic(folder / LINKS_NAME, document)


def write_json_atomic(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out, ensure_ascii=False, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def job_lock(locks_dir: Path, job_id: str) -> Iterator[None]:
    """An advisory lock shared by every process that writes this job's links.json."""
    locks_dir.mkdir(parents=True, exist_ok=True)
    with open(locks_dir / f"{job_id}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
