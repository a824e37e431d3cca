"""Operator mistakes on the upload side, through real daemon processes and the session's SeaweedFS: a job
folder removed before its upload, links.json overwritten by hand, and local copies evicted once each."""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

from daemon.links import job_view
from daemon.store import JobStore
from tests.e2e.harness import Daemon, Share, wait_for

FAST_INBOX = {"settle_time": "0.3s", "rescan_interval": "2s"}


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def finished(share: Share, name: str) -> Any:
    return (doc := share.links(name)) and doc["status"] in ("done", "partial", "failed") and doc


def store_view(share: Share, job: str) -> dict[str, Any]:
    store = JobStore(share.state)
    try:
        found = store.job(job)
        assert found is not None
        return job_view(found, store.videos(job))
    finally:
        store.close()


def test_rendered_file_removed_before_upload_is_rendered_again_or_failed_plainly(
    tmp_path: Path, media: dict[str, Path], external: dict[str, Any]
) -> None:
    """`rm -rf outputs/latest_batch/JOB` between render and upload: the video is rendered again and
    shared (the link downloads the bytes links.json names); where its presenter file is gone too, it
    fails with a reason that says so. Before, both stayed `rendered` forever."""
    share = Share(tmp_path / "shared", {"storage": external, "inbox": FAST_INBOX})
    media_dir = share.inbox / "media"
    shutil.copy(media["speech"], media_dir / "voice.wav")
    shutil.copy(media["face"], media_dir / "face.mp4")
    shutil.copy(media["face"], media_dir / "presenter.mp4")
    for name, video in (("again", "face.mp4"), ("gone", "presenter.mp4")):
        manifest = {"audio": "media/voice.wav", "videos": [f"media/{video}"], "distribute": True}
        share.drop(f"{name}.yaml", manifest)
    assert share.lipsyncd("render", "--once").returncode == 0
    assert [v["status"] for v in share.links("again")["videos"]] == ["rendered"]  # type: ignore[index]
    shutil.rmtree(share.outputs / "again")
    shutil.rmtree(share.outputs / "gone")
    (media_dir / "presenter.mp4").unlink()

    run = Daemon(share, "run")
    try:
        again = wait_for(lambda: finished(share, "again"), 90, "the removed job rendered again", run)
        gone = wait_for(lambda: finished(share, "gone"), 30, "the job without its source failed", run)
    finally:
        assert run.terminate(timeout=60) == 0

    video = again["videos"][0]
    assert again["status"] == "done", again
    assert video["status"] == "ready", again
    assert hashlib.sha256(fetch(video["url"])).hexdigest() == video["sha256"]
    failed = gone["videos"][0]
    assert gone["status"] == "failed", gone
    assert failed["status"] == "failed", gone
    assert "vanished" in failed["error"], failed
    assert "media/presenter.mp4 is gone too" in failed["error"], failed
    vanished = [e for e in run.events() if e["event"] == "rendered_file_vanished"]
    assert [e["job"] for e in vanished] == ["again"], vanished
    assert "rendering it again" in vanished[0]["reason"]
    # each manifest filed once, when first rendered: a second render files nothing
    assert sorted(p.name for p in (share.inbox / "done").iterdir()) == ["again.yaml", "gone.yaml"]
    assert list((share.inbox / ".claimed").iterdir()) == []


def test_hand_edited_links_json_is_repaired_while_running_and_copies_are_evicted_once(
    tmp_path: Path, media: dict[str, Path], external: dict[str, Any]
) -> None:
    """A finished job's links.json overwritten with garbage, then with a wrong but valid document, is
    rewritten from the store within seconds, without a restart. Each local copy is evicted (and logged)
    exactly once."""
    share = Share(tmp_path / "shared", {"storage": external, "inbox": FAST_INBOX})
    shutil.copy(media["speech"], share.inbox / "media" / "voice.wav")
    shutil.copy(media["face"], share.inbox / "media" / "face.mp4")
    shutil.copy(media["face_b"], share.inbox / "media" / "face_b.mp4")
    videos = ["media/face.mp4", "media/face_b.mp4"]
    share.drop("kept.yaml", {"audio": "media/voice.wav", "videos": videos, "distribute": True})
    run = Daemon(share, "run")
    try:
        wait_for(lambda: finished(share, "kept"), 90, "the job distributed", run)
        path = share.outputs / "kept" / "links.json"
        expected = store_view(share, "kept")
        assert json.loads(path.read_text()) == expected

        path.write_text("{ this is not json")
        wait_for(lambda: share_view(path) == expected, 15, "the garbage links.json rewritten", run)
        wrong = {**expected, "status": "failed"}
        path.write_text(json.dumps(wrong))
        wait_for(lambda: share_view(path) == expected, 15, "the edited links.json rewritten", run)
        assert store_view(share, "kept") == expected
        repaired = [e for e in run.events() if e["event"] == "links_view_repaired"]
        assert [(e["job"], e["was"]) for e in repaired] == [
            ("kept", "not valid JSON"),
            ("kept", "different from the job store"),
        ]
    finally:
        assert run.terminate(timeout=60) == 0
    evicted = [(e["job"], e["video"]) for e in run.events() if e["event"] == "local_copy_evicted"]
    assert sorted(evicted) == [("kept", "face.mp4"), ("kept", "face_b.mp4")], evicted


def share_view(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
