"""Several worker processes share the job store: each video is claimed by one render worker with a lease,
and a worker paused past its lease loses the video to another one; its late writes are refused."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

from daemon.samples import speech_like, write_audio
from tests.e2e.harness import Daemon, Share, statuses, wait_for
from tests.e2e.sandbox import ready, store_rows

HOST = socket.gethostname()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


def test_two_render_workers_and_an_upload_worker_share_a_job(
    tmp_path: Path, media: dict[str, Path], external: dict[str, Any]
) -> None:
    """`lipsyncd run` with render.workers 2 starts two render workers and one upload worker: every video
    is rendered exactly once and uploaded once, and links.json names the worker that rendered each."""
    share = Share(
        tmp_path / "shared",
        {"storage": external, "render": {"workers": 2, "lease_seconds": "3s"}, "upload": {"workers": 1}},
    )
    names = []
    for n in range(4):
        name = f"v{n}.mp4"
        shutil.copy(media["face" if n % 2 else "face_b"], share.inbox / "media" / name)
        names.append(name)
    shutil.copy(media["speech"], share.inbox / "media" / "speech.wav")
    run = Daemon(share, "run")
    try:
        wait_for(lambda: len(events(run, "render_ready")) == 2, 90, "both render workers ready", run)
        share.drop(
            "team.yaml",
            {"audio": "media/speech.wav", "videos": [f"media/{n}" for n in names], "distribute": True},
        )
        links = wait_for(
            lambda: (d := share.links("team")) and d["status"] == "done" and d, 240, "the job done", run
        )
    finally:
        assert run.terminate() == 0
    assert statuses(links) == ["ready"] * 4
    workers = {f"{HOST}:render@0", f"{HOST}:render@1"}
    # both took videos: slot 1 looks every second, and four renders take longer than that
    assert {v["worker"] for v in links["videos"]} == workers, links["videos"]
    assert {v["uploaded_by"] for v in links["videos"]} == {f"{HOST}:upload@0"}
    rendered = events(run, "video_rendered")
    assert sorted(e["video"] for e in rendered) == names, "each video rendered exactly once"
    for event in rendered:  # the log line names the worker, as links.json does
        assert event["worker"] == next(v["worker"] for v in links["videos"] if v["output"] == event["video"])
    assert sorted(e["video"] for e in events(run, "video_ready")) == names, "each video made ready once"
    ready_workers = {e["worker"] for e in events(run, "render_ready")}
    assert ready_workers == workers
    assert [e["intake"] for e in sorted(events(run, "render_ready"), key=lambda e: e["worker"])] == [
        True,
        False,
    ]


def test_a_worker_paused_past_its_lease_loses_the_video_and_its_late_writes_are_refused(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    """SIGSTOP the worker rendering a long video past its 2 s lease: the other worker takes the video over
    (epoch 2) and publishes its file. SIGCONT the first: it finds its claim lost (claim_lost), stops, and
    leaves the new owner's file, row and links.json as they are."""
    share = Share(tmp_path / "shared", {"render": {"lease_seconds": "2s"}})
    shutil.copy(media["face"], share.inbox / "media" / "face.mp4")
    write_audio(share.inbox / "media" / "long.wav", speech_like(16.0, seed=4))  # 400 frames: a few seconds
    workers = {n: Daemon(share, "render", "--slot", str(n)) for n in (0, 1)}
    try:
        for daemon in workers.values():
            ready(daemon)
        share.drop("slow.yaml", {"audio": "media/long.wav", "videos": ["media/face.mp4"]})

        def owner() -> tuple[str, int] | None:
            rows = store_rows(share.state, "SELECT owner, epoch, state, progress FROM videos")
            if rows and rows[0][2] == "rendering" and rows[0][3] > 0:
                return rows[0][0], rows[0][1]
            return None

        first, epoch = wait_for(owner, 120, "a worker rendering the video")
        assert epoch == 1
        old = int(first.rsplit("@", 1)[1])
        paused, other = workers[old], workers[1 - old]
        paused.proc.send_signal(signal.SIGSTOP)
        try:
            links = wait_for(
                lambda: (d := share.links("slow")) and d["status"] == "done" and d, 180, "taken over", other
            )
        finally:
            paused.proc.send_signal(signal.SIGCONT)
        video = links["videos"][0]
        assert video["worker"] == f"{HOST}:render@{1 - old}"
        final = share.outputs / "slow" / "face.mp4"
        published = (final.stat().st_ino, sha256(final))
        assert published[1] == video["sha256"]
        rows = store_rows(share.state, "SELECT owner, epoch, attempts, state FROM videos")
        assert rows == [(f"{HOST}:render@{1 - old}", 2, 2, "rendered")]
        lost = wait_for(lambda: events(paused, "claim_lost"), 60, "the paused worker's claim_lost", paused)
        assert lost[0]["job"] == "slow"
        assert lost[0]["video"] == "face.mp4"
        assert (lost[0]["worker"], lost[0]["epoch"]) == (first, 1)
        wait_for(lambda: events(paused, "render_abandoned"), 60, "the paused worker giving up", paused)
        # its late writes changed nothing: the new owner's file, row and view stand
        assert (final.stat().st_ino, sha256(final)) == published
        assert store_rows(share.state, "SELECT owner, epoch, attempts, state FROM videos") == rows
        assert share.links("slow") == links
        assert not events(paused, "video_rendered")
        assert [e["video"] for e in events(other, "video_rendered")] == ["face.mp4"]
        assert [e["previous"] for e in events(other, "lease_taken_over")] == [first]
    finally:
        for daemon in workers.values():
            daemon.proc.send_signal(signal.SIGCONT)
            assert daemon.terminate() == 0
    assert [p.name for p in (share.outputs / "slow").iterdir() if p.name.startswith(".")] == []
