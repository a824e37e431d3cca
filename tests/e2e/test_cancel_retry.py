"""`lipsyncd cancel` and `lipsyncd retry` against a running render daemon: a render in flight stops and
its video is never finished; a failed job, its cause fixed, renders again until it is done."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from daemon.samples import speech_like, write_audio
from tests.e2e.harness import Daemon, Share, statuses, wait_for


def test_cancel_a_rendering_job_then_retry_a_failed_one(tmp_path: Path, media: dict[str, Path]) -> None:
    share = Share(tmp_path / "shared")
    folder = share.inbox / "media"
    shutil.copy(media["face"], folder / "face.mp4")
    write_audio(folder / "long.wav", speech_like(40.0, seed=4))  # long enough to catch it rendering
    (folder / "broken.wav").write_bytes(b"not a wave file at all")
    daemon = Daemon(share, "render")
    try:
        wait_for(lambda: any(e["event"] == "render_ready" for e in daemon.events()), 60, "ready", daemon)
        share.drop("long.yaml", {"audio": "media/long.wav", "videos": ["media/face.mp4"]})
        wait_for(lambda: _progress(share, "long") > 0.02, 120, "the render under way", daemon)

        done = share.lipsyncd("cancel", "long")
        assert done.returncode == 0, done.stderr
        wait_for(
            lambda: any(e["event"] == "render_cancelled" for e in daemon.events()), 30, "noticed", daemon
        )
        wait_for(lambda: (share.inbox / "failed" / "long.error.txt").exists(), 30, "manifest filed", daemon)
        assert statuses(share.links("long")) == ["cancelled"]
        assert "cancel" in (share.inbox / "failed" / "long.error.txt").read_text()
        assert not (share.outputs / "long" / "face.mp4").exists()  # never finished
        again = share.lipsyncd("cancel", "long")
        assert again.returncode == 1
        assert "cannot be cancelled" in again.stderr

        share.drop("broken.yaml", {"audio": "media/broken.wav", "videos": ["media/face.mp4"]})
        wait_for(lambda: (doc := share.links("broken")) and doc["status"] == "failed", 60, "failed", daemon)
        (video,) = json.loads(share.lipsyncd("status", "broken", "--json").stdout)[0]["videos"]
        assert "cannot be used" in video["error"]  # says why (before: "the job failed")
        assert (share.inbox / "failed" / "broken.error.txt").exists()

        write_audio(folder / "broken.wav", speech_like(2.0, seed=5))  # the operator fixes the audio
        done = share.lipsyncd("retry", "broken")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: (doc := share.links("broken")) and doc["status"] == "done", 120, "done", daemon)
        assert statuses(share.links("broken")) == ["rendered"]
        assert (share.inbox / "done" / "broken.yaml").exists()  # filed again, where a done job's belongs
        assert not (share.inbox / "failed" / "broken.error.txt").exists()
        nothing = share.lipsyncd("retry", "broken")
        assert nothing.returncode == 1
        assert "no failed or cancelled video" in nothing.stderr
        # the cancelled render was not taken up again while the other job ran
        assert statuses(share.links("long")) == ["cancelled"]
    finally:
        daemon.terminate()


def _progress(share: Share, job: str) -> float:
    doc = share.links(job)
    return doc["videos"][0]["progress"] if doc and doc["videos"][0]["status"] == "rendering" else 0.0


def test_a_cancelled_rendered_job_is_not_uploaded(
    tmp_path: Path, media: dict[str, Path], s3_client: Any, external: dict[str, Any]
) -> None:
    """Rendered, waiting for its upload, then cancelled: the upload watcher leaves it alone (no object,
    no link); a retry with --all renders and shares it after all."""
    share = Share(tmp_path / "shared", {"storage": external})
    shutil.copy(media["face"], share.inbox / "media" / "face.mp4")
    shutil.copy(media["speech"], share.inbox / "media" / "speech.wav")
    share.drop("promo.yaml", {"audio": "media/speech.wav", "videos": ["media/face.mp4"], "distribute": True})
    assert share.lipsyncd("render", "--once").returncode == 0
    assert statuses(share.links("promo")) == ["rendered"]
    done = share.lipsyncd("cancel", "promo")
    assert done.returncode == 0, done.stderr

    assert share.lipsyncd("upload", "--once").returncode == 0
    listed = s3_client.list_objects_v2(Bucket=external["bucket"], Prefix=external["prefix"] + "/")
    assert listed.get("Contents", []) == []
    assert statuses(share.links("promo")) == ["cancelled"]
    assert share.links("promo")["videos"][0]["url"] is None  # type: ignore[index]

    assert share.lipsyncd("retry", "promo", "--all").returncode == 0
    assert share.lipsyncd("run", "--once").returncode == 0
    assert statuses(share.links("promo")) == ["ready"]
