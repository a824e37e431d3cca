"""Operator mistakes and faults on the render side (issue 16), for real: a state directory on a tmpfs that
fills up mid-render and empties again, a job store a crash left inconsistent, a state directory that is a
mount point, and `rm -rf` of a job's output folder while its video renders.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.samples import speech_like, write_audio, write_face_clip
from tests.e2e import sandbox
from tests.e2e.harness import Daemon, Share, statuses, wait_for

FAST_INBOX = {"settle_time": "0.3s", "rescan_interval": "2s"}
CLIP_S = 24.0  # long enough that a test can act while the video renders (~5 s at 256x256 on 2 cores)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("long-media")
    return {
        "clip": write_face_clip(folder / "clip.mp4", CLIP_S, 25, (256, 256)),
        "audio": write_audio(folder / "voice.wav", speech_like(CLIP_S, seed=1)),
    }


@contextlib.contextmanager
def tmpfs_state(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs as the state directory, mode 1777 as a fresh mount point comes; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=1777"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def long_media(share: Share, clip: dict[str, Path], *names: str) -> dict[str, Any]:
    """The long clip under each name and speech as long: a manifest rendering them all."""
    media = share.inbox / "media"
    media.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clip["audio"], media / "voice.wav")
    for name in names:
        shutil.copyfile(clip["clip"], media / f"{name}.mp4")
    return {"audio": "media/voice.wav", "videos": [f"media/{n}.mp4" for n in names], "distribute": False}


def finished(share: Share, name: str) -> Any:
    return (doc := share.links(name)) and doc["status"] in ("done", "partial", "failed") and doc


def rendering(share: Share, name: str, at_least: float = 0.02) -> bool:
    doc = share.links(name)
    return doc is not None and any(
        v["status"] == "rendering" and v["progress"] >= at_least for v in doc["videos"]
    )


def events(daemon: Daemon, *names: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") in names]


# -- the state disk fills up mid-render ----------------------------------------------------------------


def test_state_disk_full_mid_render_is_named_waits_and_finishes_once_space_is_back(
    tmp_path: Path, long_clip: dict[str, Path]
) -> None:
    """The state directory's disk fills while a video renders: the log says in one plain line (no
    traceback, backing off) that the *state* disk is full, nothing fails, and once the filler is deleted the
    job finishes, every video rendered, without a restart. (It used to fail the video as "the disk holding
    the outputs is full", log a traceback every 5 s, and leave a video `rendering` inside a finished job.)"""
    if not sandbox.can_mount(tmp_path):
        pytest.skip("needs root to mount a small tmpfs as the state directory")
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX})
    manifest = long_media(share, long_clip, "first", "second")
    with tmpfs_state(share.state, "4m") as state:
        daemon = Daemon(share, "render")
        try:
            sandbox.ready(daemon)
            share.drop("full.yaml", manifest)
            wait_for(lambda: rendering(share, "full"), 60, "the first video rendering", daemon)
            filler = sandbox.fill(state, leave=0)
            seen = wait_for(
                lambda: events(
                    daemon, "state_disk_full", "video_failed", "job_fail_unrecorded", "job_failed"
                ),
                60,
                "the full state disk noticed",
                daemon,
            )
            during = share.links("full")
            filler.unlink()
            doc = wait_for(lambda: finished(share, "full"), 90, "the job after space came back", daemon)
            alive = daemon.proc.poll() is None
            in_state = sorted(p.name for p in state.iterdir())
        finally:
            assert daemon.terminate() == 0
    output = daemon.output()
    full = events(daemon, "state_disk_full")
    print(f"\nstate disk full: {len(full)} line(s), first: {seen[0].get('reason')!r}")
    assert seen[0]["event"] == "state_disk_full", seen[0]
    reason = seen[0]["reason"]
    assert f"state directory {share.state}" in reason
    assert "is full" in reason
    assert "free" in reason
    assert "outputs" not in reason
    assert during, during
    assert "failed" not in statuses(during), during
    assert "Traceback" not in output, output[-3000:]
    assert 1 <= len(full) <= 5, "one line per try, backing off"
    assert events(daemon, "state_disk_writable")
    assert alive, doc
    assert doc["status"] == "done", doc
    assert statuses(doc) == ["rendered", "rendered"], doc
    assert all(v["error"] is None for v in doc["videos"])
    assert all((share.outputs / "full" / v["output"]).stat().st_size > 0 for v in doc["videos"])
    assert "scratch" not in in_state, f"render scratch lives beside the outputs, not in {in_state}"


def test_a_video_left_unrendered_inside_a_finished_job_renders_after_a_restart(tmp_path: Path) -> None:
    """What the old code left behind after a full state disk: a job `done` (or `rendered`) holding a video
    still `rendering`. At the next start the render watcher requeues the video, reopens the job and renders
    it; the job ends `done` again. (It used to sit `queued` forever: no job state the watcher picks.)"""
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX})
    sandbox.tiny_media(share.inbox / "media")
    manifest = {
        "audio": "media/voice.wav",
        "videos": ["media/face.mp4", "media/face.png"],
        "distribute": False,
    }
    daemon = Daemon(share, "render")
    try:
        sandbox.ready(daemon)
        share.drop("stuck.yaml", manifest)
        wait_for(lambda: finished(share, "stuck"), 60, "the job done", daemon)
    finally:
        assert daemon.terminate() == 0
    with contextlib.closing(sqlite3.connect(share.state / "lipsyncd.db")) as db, db:
        db.execute("UPDATE videos SET state = 'rendering', progress = 0.4 WHERE output = 'face.mp4'")
    assert sandbox.store_rows(share.state, "SELECT state FROM jobs") == [("done",)]
    again = Daemon(share, "render")
    try:
        sandbox.ready(again)
        doc = wait_for(
            lambda: (d := share.links("stuck")) and statuses(d) == ["rendered", "rendered"] and d,
            30,
            "the stranded video rendered after the restart",
            again,
        )
        job_done = wait_for(
            lambda: sandbox.store_rows(share.state, "SELECT state FROM jobs") == [("done",)], 10, "job done"
        )
    finally:
        assert again.terminate() == 0
    assert job_done
    assert doc["status"] == "done"
    assert events(again, "job_reopened")
    assert "Traceback" not in again.output()
    assert len(list((share.inbox / "done").iterdir())) == 1, "the manifest is filed once, not again"


def test_a_state_dir_that_is_a_mount_point_is_made_private(tmp_path: Path) -> None:
    """A tmpfs mounted as the state directory comes mode 1777; the daemon makes it 0700 as the README
    promises (it only did so for a directory it created itself)."""
    if not sandbox.can_mount(tmp_path):
        pytest.skip("needs root to mount a tmpfs as the state directory")
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX})
    with tmpfs_state(share.state, "4m") as state:
        assert state.stat().st_mode & 0o7777 == 0o1777
        daemon = Daemon(share, "render")
        try:
            sandbox.ready(daemon)
            mode = state.stat().st_mode & 0o7777
        finally:
            assert daemon.terminate() == 0
    assert mode == 0o700, oct(mode)


# -- the output folder removed while its video renders ---------------------------------------------------


@pytest.mark.parametrize("sources_too", [False, True], ids=["folder", "folder-and-source"])
def test_output_folder_removed_mid_render(
    tmp_path: Path, long_clip: dict[str, Path], sources_too: bool
) -> None:
    """`rm -rf outputs/latest_batch/JOB` while its video renders: the video renders again into a re-made
    folder and ends `rendered`; if its source was deleted too it fails saying so in plain words. Never the
    misleading "check the disk"."""
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX})
    manifest = long_media(share, long_clip, "anchor")
    daemon = Daemon(share, "render")
    try:
        sandbox.ready(daemon)
        share.drop("gone.yaml", manifest)
        wait_for(lambda: rendering(share, "gone", 0.1), 60, "the video rendering", daemon)
        folder = share.outputs / "gone"
        shutil.rmtree(folder, ignore_errors=True)
        if sources_too:
            (share.inbox / "media" / "anchor.mp4").unlink()
        doc = wait_for(lambda: finished(share, "gone"), 90, "the job after the folder was removed", daemon)
    finally:
        assert daemon.terminate() == 0
    video = doc["videos"][0]
    print(f"\nfolder removed mid-render ({'source too' if sources_too else 'folder only'}): {video}")
    assert "check the disk" not in str(doc)
    assert "Traceback" not in daemon.output()
    if sources_too:
        assert doc["status"] == "failed"
        assert video["status"] == "failed"
        assert "was removed while anchor.mp4 was rendering" in video["error"], video["error"]
        assert "media/anchor.mp4" in video["error"]
        assert "gone too" in video["error"]
    else:
        assert doc["status"] == "done", doc
        assert video["status"] == "rendered", doc
        assert (folder / "anchor.mp4").stat().st_size == video["size"] > 0
        assert events(daemon, "output_folder_removed")
        assert not list(folder.glob(".*.part.mp4"))
