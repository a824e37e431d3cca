"""Rendered files that vanish before their upload: sent back to the render queue a bounded number of
times, never while the job's render pass is still running; and a store made before the count existed."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from daemon.distribute.watcher import MAX_RERENDERS, DistributeSettings, UploadWatcher
from daemon.store import JobState, JobStore, VideoState
from tests.poke import set_job, set_video
from tests.unit.test_store_links import manifest


@pytest.fixture
def store(tmp_path: Path, ledger_url: str | None) -> JobStore:
    return JobStore(tmp_path / "state", url=ledger_url)


def rendered(store: JobStore, tmp_path: Path, *, job_state: JobState = JobState.RENDERED) -> None:
    """Job `promo` with a.mp4 rendered (the file itself is not there: it vanished)."""
    for name in ("a.wav", "a.mp4"):
        (tmp_path / name).write_bytes(b"x")
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    set_job(store, "promo", JobState.RENDERING)
    set_video(store, "promo", "a.mp4", VideoState.RENDERING)
    set_video(store, "promo", "a.mp4", VideoState.RENDERED, size=1, sha256="ab" * 32)
    if job_state == JobState.RENDERED:
        set_job(store, "promo", JobState.RENDERED)


def watcher(store: JobStore, tmp_path: Path) -> UploadWatcher:
    settings = DistributeSettings(bucket="lipsyncd", prefix="p")
    return UploadWatcher(
        store,
        None,
        settings,
        outputs_dir=tmp_path / "outputs",
        locks_dir=tmp_path / "locks",
        stop=threading.Event(),
    )


def render_once_more(store: JobStore) -> None:
    """What the render watcher does with the requeued job, the file still not reaching the upload."""
    set_job(store, "promo", JobState.RENDERING)
    set_video(store, "promo", "a.mp4", VideoState.RENDERING)
    set_video(store, "promo", "a.mp4", VideoState.RENDERED)
    set_job(store, "promo", JobState.RENDERED)


def test_a_vanished_file_is_rendered_again_at_most_max_rerenders_times(
    store: JobStore, tmp_path: Path
) -> None:
    rendered(store, tmp_path)
    upload = watcher(store, tmp_path)
    for n in range(1, MAX_RERENDERS + 1):
        upload.step()
        job, video = store.job("promo"), store.video("promo", "a.mp4")
        assert job is not None
        assert video is not None
        assert (job.state, job.rerenders, video.state) == (JobState.QUEUED, n, VideoState.QUEUED)
        assert video.error is not None
        assert "vanished" in video.error
        assert "rendering it again" in video.error
        render_once_more(store)
    upload.step()
    upload.shutdown()
    job, video = store.job("promo"), store.video("promo", "a.mp4")
    assert job is not None
    assert video is not None
    assert video.state == VideoState.FAILED
    assert "removed each time" in (video.error or "")
    assert job.state == JobState.FAILED
    assert "no video of this job could be shared" in (job.error or "")


def test_nothing_is_sent_back_while_the_job_is_still_rendering(store: JobStore, tmp_path: Path) -> None:
    """The render watcher picks its job's queued videos once per pass: one queued in the middle of it
    would be left behind, so the video waits until the job is rendered."""
    rendered(store, tmp_path, job_state=JobState.RENDERING)
    upload = watcher(store, tmp_path)
    upload.step()
    video = store.video("promo", "a.mp4")
    assert video is not None
    assert video.state == VideoState.RENDERED
    assert store.render_again("promo", "a.mp4", "gone") is False
    set_job(store, "promo", JobState.RENDERED)
    upload.step()
    upload.shutdown()
    video = store.video("promo", "a.mp4")
    assert video is not None
    assert video.state == VideoState.QUEUED


def test_a_store_from_before_the_rerender_count_gains_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    JobStore(state).close()
    with sqlite3.connect(state / "lipsyncd.db") as db:
        db.execute("ALTER TABLE jobs DROP COLUMN rerenders")
    store = JobStore(state)
    rendered(store, tmp_path)
    job = store.job("promo")
    assert job is not None
    assert job.rerenders == 0


@pytest.mark.parametrize("job_state", [JobState.RENDERED, JobState.DONE])
def test_a_video_another_upload_worker_made_ready_meanwhile_is_left_alone(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job_state: JobState
) -> None:
    """Two upload workers (seen in the long crash run): this one lists the video as rendered, the other
    uploads it, makes it ready and removes the local copy; the file is then gone here. Neither a render
    again nor a failure may follow, and the worker must not crash (it exited on InvalidTransition)."""
    rendered(store, tmp_path)
    listed = store.videos_in(VideoState.RENDERED)
    set_video(store, "promo", "a.mp4", VideoState.UPLOADING)
    set_video(store, "promo", "a.mp4", VideoState.READY, evicted=1)
    if job_state == JobState.DONE:  # the other worker also finished the job: the fail path is taken
        set_job(store, "promo", JobState.DONE)
    monkeypatch.setattr(store, "videos_in", lambda *states: listed)  # the list read before the upload
    upload = watcher(store, tmp_path)
    try:
        upload.step()
    finally:
        upload.shutdown()
    job, video = store.job("promo"), store.video("promo", "a.mp4")
    assert job is not None
    assert video is not None
    # its only video ready: the job is done (this step may finish it), never sent back nor failed
    assert (job.state, job.rerenders, video.state, video.error) == (JobState.DONE, 0, VideoState.READY, None)
