"""Honest outcomes through real daemon processes: a job with a broken video among good ones ends
`partial` (filed in done/ with an error file naming the broken one), a clip without a face fails in plain
words unless render.faceless_videos says to pass it through, and the webhook of a partial job says so."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from daemon.render.media import VideoEncoder
from tests.e2e.conftest import WebhookReceiver
from tests.e2e.harness import Share, statuses, wait_for


def put(share: Share, media: dict[str, Path], *names: str) -> None:
    for name in names:
        shutil.copy(media[name], share.inbox / "media" / media[name].name)


def cut_copy(share: Share, source: Path, name: str = "cut.mp4") -> None:
    """The first half of a good clip: a copy or upload that stopped midway."""
    data = source.read_bytes()
    (share.inbox / "media" / name).write_bytes(data[: len(data) // 2])


def faceless_clip(path: Path, seconds: float = 1.0, fps: int = 25) -> Path:
    """A slowly shifting colour gradient: a real video with no face in any frame."""
    ramp = np.linspace(0, 255, 128, dtype=np.uint8)
    with VideoEncoder(path, 128, 128, fps, None) as encoder:
        for i in range(int(seconds * fps)):
            frame = np.stack(
                [
                    np.tile(ramp, (128, 1)),
                    np.tile(ramp[:, None], (1, 128)),
                    np.full((128, 128), 3 * i, np.uint8),
                ],
                axis=2,
            )
            encoder.write(np.ascontiguousarray(frame))
    return path


def test_one_truncated_video_and_one_good_make_a_partial_job(tmp_path: Path, media: dict[str, Path]) -> None:
    share = Share(tmp_path / "shared")
    put(share, media, "face", "speech")
    cut_copy(share, media["face"])
    share.drop("mixed.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4", "media/cut.mp4"]})
    result = share.lipsyncd("render", "--once")
    assert result.returncode == 0, result.stderr
    links = share.links("mixed")
    assert links is not None, links
    assert links["status"] == "partial", links
    assert links["summary"] == "1 of 2 ready", links
    assert statuses(links) == ["rendered", "failed"]
    good, cut = links["videos"]
    assert (good["local_copy"], cut["local_copy"]) == (True, False)
    assert not (share.outputs / "mixed" / "cut.mp4").exists()
    assert cut["error"]
    assert links["problems"] == [f"media/cut.mp4 failed: {cut['error']}"]
    # filed with its good video's results in done/, the error file beside it says which video and why
    assert (share.inbox / "done" / "mixed.yaml").exists()
    assert not any((share.inbox / "failed").iterdir())
    report = (share.inbox / "done" / "mixed.error.txt").read_text()
    assert f"media/cut.mp4: {cut['error']}" in report
    assert "media/anchor.mp4" not in report
    status = share.lipsyncd("status", "mixed")
    assert status.returncode == 0
    assert "1 of 2 ready" in status.stdout
    assert "media/cut.mp4 failed:" in status.stdout


def test_a_clip_without_a_face_fails_in_plain_words(tmp_path: Path, media: dict[str, Path]) -> None:
    share = Share(tmp_path / "shared")
    put(share, media, "speech")
    faceless_clip(share.inbox / "media" / "presenter.mp4")
    share.drop("blank.yaml", {"audio": "media/speech.wav", "videos": ["media/presenter.mp4"]})
    assert share.lipsyncd("render", "--once").returncode == 0
    links = share.links("blank")
    assert links is not None, links
    assert links["status"] == "failed", links
    assert statuses(links) == ["failed"], links
    error = links["videos"][0]["error"]
    assert error.startswith("no face found in any of the 75 frames of presenter.mp4"), error
    assert "render.faceless_videos: pass_through" in error
    assert not links["videos"][0]["local_copy"]
    assert not (share.outputs / "blank" / "presenter.mp4").exists()
    assert "no face found in any of the 75 frames" in (share.inbox / "failed" / "blank.error.txt").read_text()


def test_a_clip_without_a_face_passes_through_when_configured_with_a_warning(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    share = Share(tmp_path / "shared", {"render": {"faceless_videos": "pass_through"}})
    put(share, media, "speech")
    faceless_clip(share.inbox / "media" / "presenter.mp4")
    share.drop("blank.yaml", {"audio": "media/speech.wav", "videos": ["media/presenter.mp4"]})
    assert share.lipsyncd("render", "--once").returncode == 0
    links = share.links("blank")
    assert links is not None, links
    assert links["status"] == "done", links
    assert statuses(links) == ["rendered"], links
    video = links["videos"][0]
    assert video["frames_without_face"] == video["frames"] == 75
    assert video["local_copy"]
    assert video["warning"].startswith("no face found in 75 of the 75 frames of presenter.mp4 (100%)")
    assert links["problems"] == [f"media/presenter.mp4: {video['warning']}"]
    assert (share.inbox / "done" / "blank.yaml").exists()
    assert not (share.inbox / "done" / "blank.error.txt").exists()
    status = share.lipsyncd("status").stdout
    assert "blank (done, 1 of 1 ready):" in status
    assert "media/presenter.mp4: no face found in 75 of the 75" in status


def test_the_webhook_of_a_partial_job_says_partial_and_why(
    tmp_path: Path, media: dict[str, Path], external: dict[str, Any], webhook_receiver: WebhookReceiver
) -> None:
    url = webhook_receiver.url
    share = Share(
        tmp_path / "shared", {"storage": external, "webhooks": {"team": {"kind": "json", "url": url}}}
    )
    put(share, media, "face", "speech")
    cut_copy(share, media["face"])
    share.drop(
        "mixed.yaml",
        {
            "audio": "media/speech.wav",
            "videos": ["media/anchor.mp4", "media/cut.mp4"],
            "distribute": True,
            "notify": ["team"],
        },
    )
    assert share.lipsyncd("run", "--once").returncode == 0
    wait_for(lambda: webhook_receiver.bodies, 10, "webhook call")
    body = webhook_receiver.bodies[0]
    links = share.links("mixed")
    assert links is not None, links
    assert links["status"] == "partial", links
    assert links["summary"] == "1 of 2 ready", links
    assert (body["status"], body["summary"]) == ("partial", "1 of 2 ready"), body
    assert [v["name"] for v in body["videos"]] == ["anchor.mp4"]
    assert body["failed"] == [
        {"name": "cut.mp4", "source": "media/cut.mp4", "error": links["videos"][1]["error"]}
    ]
    assert (share.inbox / "done" / "mixed.error.txt").exists()
