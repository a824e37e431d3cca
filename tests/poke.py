"""Tests only: put a job or video in a given state the way the daemon's intent methods do (one checked
move, its columns, its views asked for), without the story of how it got there."""

from __future__ import annotations

from typing import Any

from daemon.store import JobState, JobStore, VideoState


def set_video(
    store: JobStore, job_id: str, output: str, state: VideoState | None = None, **values: Any
) -> None:
    store._video_change(job_id, output, state, **values)


def set_job(store: JobStore, job_id: str, state: JobState, *, error: str | None = None) -> None:
    with store._change() as db:
        store._move_job(db, job_id, state, error=error)
