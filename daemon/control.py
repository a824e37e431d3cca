"""`lipsyncd cancel` and `lipsyncd retry`: an operator's changes to a job, through the store's state
rules (daemon/store.py), with the manifest filed where the job's new state says it belongs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.inbox import Inbox
from daemon.manifest import job_failure_report
from daemon.store import InvalidTransition, Job, JobState, JobStore

log = structlog.get_logger(__name__)
CANCELLED_BY_OPERATOR = "cancelled with `lipsyncd cancel`"


class ControlError(Exception):
    """Why the job cannot be changed, in plain words."""


@dataclass(frozen=True)
class Outcome:
    job: str
    was: JobState
    videos: list[str]

    def line(self, verb: str) -> str:
        return f"{self.job}: {verb} (was {self.was.value}; videos: {', '.join(self.videos) or 'none'})"


def cancel(store: JobStore, inbox: Inbox, job_id: str) -> Outcome:
    job = _job(store, job_id)
    try:
        was, videos = store.cancel_job(job_id, CANCELLED_BY_OPERATOR)
    except InvalidTransition:
        raise ControlError(
            f"job {job_id!r} is {job.state.value}: a finished job cannot be cancelled "
            "(`lipsyncd retry` renders its failed videos again)"
        ) from None
    if was == JobState.QUEUED and not job.rerenders and Path(job.claimed_path).exists():
        # no render took it (its move to rendering now fails), so no one else files its manifest
        inbox.file_failed(
            Path(job.claimed_path), job.manifest, job_failure_report(job.manifest, CANCELLED_BY_OPERATOR)
        )
    log.info("job_cancelled", job=job_id, was=was.value, videos=videos)
    return Outcome(job_id, was, videos)


def retry(store: JobStore, inbox: Inbox, job_id: str, *, every_video: bool = False) -> Outcome:
    job = _job(store, job_id)
    try:
        was, videos = store.retry_job(job_id, every_video=every_video)
    except InvalidTransition:
        raise ControlError(
            f"job {job_id!r} is {job.state.value}: only a finished job (done, partial, failed or cancelled) "
            "can be retried; wait for it, or cancel it first"
        ) from None
    except ValueError as exc:
        raise ControlError(f"job {job_id!r} is {job.state.value}: {exc}") from None
    if was in (JobState.FAILED, JobState.CANCELLED):
        _unfile(inbox, job)
    log.info("job_retried", job=job_id, was=was.value, videos=videos)
    return Outcome(job_id, was, videos)


def _job(store: JobStore, job_id: str) -> Job:
    job = store.job(job_id)
    if job is None:
        raise ControlError(f"no job named {job_id!r}")
    return job


def _unfile(inbox: Inbox, job: Job) -> None:
    """The manifest of a failed job waits in failed/ beside its error file; it goes back to where it was
    claimed, so the render files it under done/ when the job succeeds this time (and no error file says it
    failed). Left where it is when a newer manifest holds that claimed name."""
    claimed = Path(job.claimed_path)
    report = job_failure_report(job.manifest, job.error or "")
    stem, dot, suffix = job.manifest.rpartition(".")
    for n in range(1, 1000):
        name = job.manifest if n == 1 else (f"{stem}.{n}.{suffix}" if dot else f"{job.manifest}.{n}")
        filed = inbox.failed_dir / name
        error_file = filed.with_name(filed.name.rsplit(".", 1)[0] + ".error.txt")
        if not error_file.exists():
            return
        if filed.exists() and error_file.read_text(encoding="utf-8", errors="replace") == report:
            if claimed.exists() or job.rerenders:
                return
            claimed.parent.mkdir(parents=True, exist_ok=True)
            filed.rename(claimed)
            error_file.unlink(missing_ok=True)
            log.info("manifest_unfiled", job=job.id, manifest=job.manifest)
            return
