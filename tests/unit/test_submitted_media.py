"""Media copied by `lipsyncd submit` are removed once their job finished and inbox.media_keep passed
(before: kept for ever, one folder per submit)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from daemon.inbox import Inbox
from daemon.intake import Intake
from daemon.manifest import Manifest, MediaRef
from daemon.store import JobState, JobStore, VideoState
from daemon.submit import Submission, submit
from daemon.submitted_media import sweep_media
from tests.poke import set_job, set_video


def _submitted(tmp_path: Path, inbox: Path, name: str) -> Path:
    """A real submit of media from outside the share: returns its folder under inbox/media."""
    outside = tmp_path / "outside" / name
    outside.mkdir(parents=True)
    (outside / "s.wav").write_bytes(b"s")
    (outside / "f.mp4").write_bytes(b"f")
    submit(
        Submission(outside / "s.wav", (outside / "f.mp4",), name=name), inbox=inbox, shared=tmp_path / "share"
    )
    (folder,) = [p for p in (inbox / "media").iterdir() if p.name.startswith(f"{name}-")]
    return folder


def _job(store: JobStore, folder: Path, name: str) -> None:
    manifest = Manifest(
        source=folder / f"{name}.yaml",
        name=name,
        audio=MediaRef("s.wav", folder / "s.wav"),
        videos=(MediaRef("f.mp4", folder / "f.mp4"),),
    )
    store.add_job(manifest, claimed_path=folder / f"{name}.yaml", base_dir=folder)


def test_finished_jobs_media_go_after_the_keep_time_others_stay(tmp_path: Path) -> None:
    inbox = tmp_path / "share" / "inbox"
    store = JobStore(tmp_path / "state")
    done, failed, cancelled, busy, unused = (
        _submitted(tmp_path, inbox, name) for name in ("done", "failed", "cancelled", "busy", "unused")
    )
    for folder in (done, failed, cancelled, busy):
        _job(store, folder, folder.name.split("-")[0])
    set_job(store, "done", JobState.RENDERING)
    set_video(store, "done", "f.mp4", VideoState.RENDERING)
    set_video(store, "done", "f.mp4", VideoState.RENDERED)
    set_job(store, "done", JobState.RENDERED)
    set_job(store, "done", JobState.DONE)
    set_job(store, "failed", JobState.FAILED, error="bad audio")
    store.cancel_job("cancelled", "cancelled")
    set_job(store, "busy", JobState.RENDERING)
    users = inbox / "media" / "mine"  # the user's own folder: never touched
    users.mkdir()
    now = time.time()

    assert sweep_media(store, inbox / "media", keep=600, now=now) == []  # kept for a retry first
    removed = sweep_media(store, inbox / "media", keep=600, now=now + 601)
    assert sorted(removed) == sorted([done, failed, cancelled])
    assert busy.is_dir()
    assert unused.is_dir()
    assert users.is_dir()
    old = now - 7200
    os.utime(unused, (old, old))  # a copy no job uses, two hours old: its manifest never came
    assert sweep_media(store, inbox / "media", keep=0, now=now) == [unused]
    assert busy.is_dir()
    assert users.is_dir()


def test_the_intake_rescan_tidies(tmp_path: Path) -> None:
    inbox = tmp_path / "share" / "inbox"
    store = JobStore(tmp_path / "state")
    folder = _submitted(tmp_path, inbox, "promo")
    _job(store, folder, "promo")
    set_job(store, "promo", JobState.FAILED, error="bad audio")
    intake = Intake(
        Inbox(inbox, settle_time=0.0), store, shared=tmp_path / "share", outputs_dir=tmp_path / "out",
        locks_dir=tmp_path / "locks", webhooks=(), models=lambda: ["baseline"], media_keep=0.0,
    )  # fmt: skip
    for manifest in inbox.glob("*.yaml"):
        manifest.unlink()  # only the tidying is under test here
    intake.sweep(rescan=True)
    assert not folder.exists()
