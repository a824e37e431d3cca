"""How a finished job is filed in the inbox, and the face check that fails or warns about a video."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from daemon.inbox import Inbox
from daemon.manifest import Manifest, MediaRef
from daemon.render.pipeline import RenderSettings
from daemon.render.service import face_check
from daemon.store import JobState, JobStore, Video, VideoState
from tests.poke import set_job, set_video


@pytest.fixture
def job_with(tmp_path: Path) -> tuple[Inbox, JobStore]:
    inbox = Inbox(tmp_path / "inbox", settle_time=0)
    store = JobStore(tmp_path / "state")
    claimed = inbox.claimed_dir / "promo.yaml"
    claimed.write_text("audio: a.wav\n")
    refs = tuple(MediaRef(f"media/{n}", tmp_path / n) for n in ("good.mp4", "cut.mp4"))
    m = Manifest(source=claimed, name="promo", audio=MediaRef("a.wav", tmp_path / "a.wav"), videos=refs)
    store.add_job(m, claimed_path=claimed, base_dir=inbox.folder)
    set_job(store, "promo", JobState.RENDERING)
    for name in ("good.mp4", "cut.mp4"):
        set_video(store, "promo", name, VideoState.RENDERING)
    return inbox, store


def test_a_partial_job_is_filed_in_done_with_an_error_file_naming_the_failed_video(
    job_with: tuple[Inbox, JobStore],
) -> None:
    inbox, store = job_with
    set_video(store, "promo", "good.mp4", VideoState.RENDERED)
    set_video(store, "promo", "cut.mp4", VideoState.FAILED, error="the file is cut short")
    set_job(store, "promo", JobState.RENDERED)
    store.finish_job("promo")
    filed = inbox.file_job(store.job("promo"), store.videos("promo"))  # type: ignore[arg-type]
    assert filed == inbox.done_dir / "promo.yaml"
    assert filed.read_text() == "audio: a.wav\n"
    report = (inbox.done_dir / "promo.error.txt").read_text()
    assert "media/cut.mp4: the file is cut short" in report
    assert "media/good.mp4" not in report
    assert not any(inbox.failed_dir.iterdir())
    assert not any(inbox.claimed_dir.iterdir())


def test_a_job_with_every_video_made_is_filed_in_done_alone(job_with: tuple[Inbox, JobStore]) -> None:
    inbox, store = job_with
    for name in ("good.mp4", "cut.mp4"):
        set_video(store, "promo", name, VideoState.RENDERED)
    set_job(store, "promo", JobState.RENDERED)
    store.finish_job("promo")
    inbox.file_job(store.job("promo"), store.videos("promo"))  # type: ignore[arg-type]
    assert sorted(p.name for p in inbox.done_dir.iterdir()) == ["promo.yaml"]


def _video(name: str = "media/presenter.mp4") -> Video:
    return Video("j", "presenter.mp4", 0, "/x", name, VideoState.RENDERING, 0, None, None, None, None,
                 None, None, None, None, None, None, None, False, 0.0)  # fmt: skip


@pytest.mark.parametrize(
    ("frames", "faceless", "policy", "fails", "warns"),
    [
        (156, 156, "fail", True, False),
        (156, 156, "pass_through", False, True),
        (156, 80, "fail", False, True),  # over half: ready, with a warning
        (156, 78, "fail", False, False),  # exactly half: no warning
        (156, 0, "fail", False, False),
        (0, 0, "fail", False, False),  # nothing rendered: not this check's business
    ],
)
def test_face_check(frames: int, faceless: int, policy: str, fails: bool, warns: bool) -> None:
    settings = replace(RenderSettings(), faceless_videos=policy, faceless_warning_share=0.5)
    problem, warning = face_check(frames, faceless, _video(), settings)
    assert (problem is not None, warning is not None) == (fails, warns)
    if fails:
        assert problem is not None
        assert problem.startswith("no face found in any of the 156 frames of presenter.mp4")
        assert "render.faceless_videos: pass_through" in problem
    if warns:
        assert warning is not None
        assert f"no face found in {faceless} of the 156 frames of presenter.mp4" in warning
