"""The rules of `lipsyncd cancel` and `lipsyncd retry` on the store and the inbox's filing."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.control import ControlError, cancel, retry
from daemon.inbox import Inbox
from daemon.manifest import Manifest, MediaRef, job_failure_report
from daemon.store import InvalidTransition, JobState, JobStore, VideoState, check_move
from tests.poke import set_job, set_video


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    inbox = Inbox(tmp_path / "inbox", settle_time=0.0)
    inbox.make_folders()
    return inbox


@pytest.fixture
def store(tmp_path: Path, ledger_url: str | None) -> JobStore:
    return JobStore(tmp_path / "state", url=ledger_url)


def _job(
    store: JobStore, inbox: Inbox, name: str = "promo", videos: tuple[str, ...] = ("a.mp4", "b.mp4")
) -> Path:
    claimed = inbox.claimed_dir / f"{name}.yaml"
    claimed.write_text("name: x\n")
    manifest = Manifest(
        source=inbox.folder / f"{name}.yaml",
        name=name,
        audio=MediaRef("s.wav", inbox.folder / "s.wav"),
        videos=tuple(MediaRef(v, inbox.folder / v) for v in videos),
    )
    store.add_job(manifest, claimed_path=claimed, base_dir=inbox.folder)
    return claimed


def _states(store: JobStore, job: str) -> list[VideoState]:
    return [v.state for v in store.videos(job)]


def test_cancel_a_queued_job_files_its_manifest(store: JobStore, inbox: Inbox) -> None:
    claimed = _job(store, inbox)
    outcome = cancel(store, inbox, "promo")
    assert outcome.was == JobState.QUEUED
    assert outcome.videos == ["a.mp4", "b.mp4"]
    assert _states(store, "promo") == [VideoState.CANCELLED] * 2
    assert not claimed.exists()
    assert "cancel" in (inbox.failed_dir / "promo.error.txt").read_text()
    with pytest.raises(ControlError, match="cannot be cancelled"):
        cancel(store, inbox, "promo")
    with pytest.raises(ControlError, match="no job named 'other'"):
        cancel(store, inbox, "other")


def test_cancel_leaves_finished_videos_alone(store: JobStore, inbox: Inbox) -> None:
    _job(store, inbox)
    set_job(store, "promo", JobState.RENDERING)
    set_video(store, "promo", "a.mp4", VideoState.FAILED, error="no face")
    set_video(store, "promo", "b.mp4", VideoState.RENDERING)
    assert cancel(store, inbox, "promo").videos == ["b.mp4"]
    assert _states(store, "promo") == [VideoState.FAILED, VideoState.CANCELLED]


def test_retry_only_finished_jobs_and_only_what_failed(store: JobStore, inbox: Inbox) -> None:
    _job(store, inbox)
    with pytest.raises(ControlError, match="only a finished job"):
        retry(store, inbox, "promo")
    set_job(store, "promo", JobState.RENDERING)
    set_video(store, "promo", "a.mp4", VideoState.FAILED, error="no face")
    for state in (VideoState.RENDERING, VideoState.RENDERED, VideoState.UPLOADING, VideoState.READY):
        set_video(store, "promo", "b.mp4", state, url="https://x/b" if state == VideoState.READY else None)
    set_job(store, "promo", JobState.RENDERED)
    set_job(store, "promo", JobState.DONE)
    assert retry(store, inbox, "promo").videos == ["a.mp4"]
    assert _states(store, "promo") == [VideoState.QUEUED, VideoState.READY]
    job = store.job("promo")
    assert job is not None
    assert job.state == JobState.QUEUED
    assert job.error is None


def test_retry_all_renders_ready_videos_again_with_fresh_links(store: JobStore, inbox: Inbox) -> None:
    _job(store, inbox, videos=("a.mp4",))
    for state in (VideoState.RENDERING, VideoState.RENDERED, VideoState.UPLOADING, VideoState.READY):
        set_video(store, "promo", "a.mp4", state)
    set_video(store, "promo", "a.mp4", url="https://x/a", object_key="k", evicted=True)
    for job_state in (JobState.RENDERING, JobState.RENDERED, JobState.DONE):
        set_job(store, "promo", job_state)
    with pytest.raises(ControlError, match="no failed or cancelled video; --all"):
        retry(store, inbox, "promo")
    assert retry(store, inbox, "promo", every_video=True).videos == ["a.mp4"]
    video = store.video("promo", "a.mp4")
    assert video is not None
    assert (video.state, video.url, video.object_key, video.evicted) == (
        VideoState.QUEUED,
        None,
        None,
        False,
    )


def test_retry_of_a_failed_job_takes_its_manifest_back_from_failed(store: JobStore, inbox: Inbox) -> None:
    claimed = _job(store, inbox)
    reason = "the audio 's.wav' cannot be used"
    for output in ("a.mp4", "b.mp4"):
        set_video(store, "promo", output, VideoState.FAILED, error=reason)
    set_job(store, "promo", JobState.FAILED, error=reason)
    inbox.file_failed(claimed, "promo.yaml", job_failure_report("promo.yaml", reason))
    retry(store, inbox, "promo")
    assert claimed.exists()  # the render files it under done/ when the job finishes
    assert list(inbox.failed_dir.iterdir()) == []


def test_daemon_moves_never_reopen_a_finished_state() -> None:
    """Retry's moves are its own: a render or upload step can still not undo a failure or a cancel."""
    for old, new in ((JobState.FAILED, JobState.QUEUED), (VideoState.CANCELLED, VideoState.QUEUED)):
        with pytest.raises(InvalidTransition):
            check_move(old, new)
        check_move(old, new, retry=True)
    with pytest.raises(InvalidTransition):
        check_move(JobState.RENDERING, JobState.QUEUED, retry=True)
