"""The user's story through a real `lipsyncd render` process: drop a manifest, wait for links.json,
open the video."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import av
import pytest

from tests.e2e.harness import Daemon, Share, statuses, wait_for


def put_media(share: Share, media: dict[str, Path], *names: str) -> None:
    for name in names:
        shutil.copy(media[name], share.inbox / "media" / media[name].name)


@pytest.fixture
def share(tmp_path: Path, media: dict[str, Path]) -> Share:
    s = Share(tmp_path / "shared")
    put_media(s, media, "face", "face_b", "speech", "long_speech")
    return s


def test_dropped_manifest_becomes_videos_and_links(share: Share) -> None:
    daemon = Daemon(share, "render")
    try:
        share.drop(
            "promo.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4", "media/anchor_b.mp4"]}
        )
        links = wait_for(
            lambda: (doc := share.links("promo")) and doc["status"] == "done" and doc, 120, "job done", daemon
        )
    finally:
        assert daemon.terminate() == 0
    assert statuses(links) == ["rendered", "rendered"]
    for video in links["videos"]:
        out = share.outputs / "promo" / video["output"]
        assert video["size"] == out.stat().st_size
        assert len(video["sha256"]) == 64
        assert video["model"] == "baseline"
        with av.open(str(out)) as container:
            v, a = container.streams.video[0], container.streams.audio[0]
            assert (v.codec_context.name, a.codec_context.name) == ("h264", "aac")
            frames = sum(1 for _ in container.decode(video=0))
            assert v.average_rate is not None
            fps = float(v.average_rate)
        assert abs(frames / fps - 3.0) <= 1 / fps, "duration must match the audio within one frame"
    assert (share.inbox / "done" / "promo.yaml").exists()
    assert not any(p.name.startswith(".") for p in (share.outputs / "promo").iterdir())
    events = {e["event"] for e in daemon.events()}
    assert {"job_queued", "video_rendered", "job_rendered", "model_loaded"} <= events


def test_the_worker_opens_its_model_before_the_first_job(share: Share) -> None:
    daemon = Daemon(share, "render")  # the first job of a fresh start renders without loading anything
    try:
        loaded = wait_for(
            lambda: [e for e in daemon.events() if e["event"] == "model_loaded"], 60, "model opened", daemon
        )
    finally:
        assert daemon.terminate() == 0
    assert loaded[0]["model"] == "baseline"
    assert "job" not in loaded[0]  # no job asked for it
    assert (share.root.parent / f"{share.root.name}-models" / "baseline" / "model.onnx").is_file()


def test_bad_manifest_fails_clearly_while_a_good_one_renders(share: Share) -> None:
    daemon = Daemon(share, "render")
    try:
        share.drop(
            "bad.yaml", {"audio": "media/speech.wav", "videos": ["media/missing.mp4"], "colour": "red"}
        )
        share.drop("good.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"]})
        wait_for(
            lambda: (share.inbox / "failed" / "bad.error.txt").exists(), 60, "bad manifest filed", daemon
        )
        wait_for(
            lambda: (doc := share.links("good")) and doc["status"] == "done", 120, "good job done", daemon
        )
    finally:
        daemon.terminate()
    report = (share.inbox / "failed" / "bad.error.txt").read_text()
    assert "'colour'" in report
    assert "missing.mp4" in report
    assert "does not exist" in report
    assert (share.inbox / "failed" / "bad.yaml").exists()
    assert share.links("bad") is None


def test_a_manifest_written_slowly_is_not_taken_early(share: Share) -> None:
    daemon = Daemon(share, "render")
    try:
        path = share.inbox / "slow.yaml"
        lines = ["audio: media/speech.wav\n", "videos:\n", "  - media/anchor.mp4\n", "distribute: false\n"]
        with path.open("w") as out:  # a slow writer: settle_time is 1 s, each line comes 0.6 s later
            for line in lines:
                out.write(line)
                out.flush()
                time.sleep(0.6)
        wait_for(
            lambda: (doc := share.links("slow")) and doc["status"] == "done", 120, "slow job done", daemon
        )
    finally:
        daemon.terminate()
    assert not (share.inbox / "failed").joinpath("slow.error.txt").exists()
    assert (share.inbox / "done" / "slow.yaml").read_text() == "".join(lines)


def test_kill_9_mid_render_then_restart_redoes_only_unfinished_work(share: Share) -> None:
    manifest = {"audio": "media/long.wav", "videos": ["media/anchor_b.mp4", "media/anchor.mp4"]}
    daemon = Daemon(share, "render")
    share.drop("crash.yaml", manifest)
    wait_for(
        lambda: statuses(share.links("crash")) == ["rendered", "rendering"],
        120,
        "second video rendering",
        daemon,
    )
    daemon.kill9()
    first = share.outputs / "crash" / "anchor_b.mp4"
    first_stat = first.stat()
    assert not (share.outputs / "crash" / "anchor.mp4").exists()
    daemon = Daemon(share, "render")
    try:
        links = wait_for(
            lambda: (d := share.links("crash")) and d["status"] == "done" and d, 120, "done", daemon
        )
    finally:
        daemon.terminate()
    assert statuses(links) == ["rendered", "rendered"]
    assert first.stat().st_mtime_ns == first_stat.st_mtime_ns, "the finished video was rendered again"
    rendered = [e for e in daemon.events() if e["event"] == "video_rendered"]
    assert [e["video"] for e in rendered] == ["anchor.mp4"]
    assert [p.name for p in (share.outputs / "crash").iterdir() if p.name.startswith(".")] == []


def test_render_once_processes_the_inbox_and_exits(share: Share) -> None:
    share.drop("once.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"]})
    result = share.lipsyncd("render", "--once")
    assert result.returncode == 0, result.stderr
    assert statuses(share.links("once")) == ["rendered"]
    status = share.lipsyncd("status", "--json")
    assert '"once"' in status.stdout
    assert '"rendered"' in status.stdout


def test_audio_longer_than_allowed_fails_with_the_key_to_change(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    share = Share(tmp_path / "shared", {"render": {"max_video_seconds": "2s", "batch_size": 8}})
    put_media(share, media, "face", "speech")
    share.drop("long.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"]})
    result = share.lipsyncd("render", "--once")
    assert result.returncode == 0, result.stderr
    report = (share.inbox / "failed" / "long.error.txt").read_text()
    assert "render.max_video_seconds" in report
    assert "Split the voice-over" in report
    assert share.links("long")["status"] == "failed"  # type: ignore[index]
