"""A render worker thawed past its lease may start files of its lost claim after the new owner removed the
earlier epochs' files, and be killed before it notices the loss (the crash suite's pauses found one such
`..e2.c.part.mp4` left for good). The restarted worker's recovery removes them, whatever their age, and
leaves the live claim's files and anything written after it read the claims."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from daemon.inbox import Inbox
from daemon.manifest import load_manifest
from daemon.render.pipeline import RenderSettings
from daemon.render.registry import ModelPool
from daemon.render.service import RenderPaths, RenderService
from daemon.samples import speech_like, write_audio, write_face_clip
from daemon.store import JobStore


def test_recovery_removes_fresh_files_of_lost_claims_and_keeps_live_ones(tmp_path: Path) -> None:
    share = tmp_path / "share"
    media = share / "inbox" / "media"
    media.mkdir(parents=True)
    write_audio(media / "a.wav", speech_like(0.5))
    for name in ("v0", "v1"):
        write_face_clip(media / f"{name}.mp4", 0.2, 25, (64, 64), seed=1)
    (share / "inbox" / "job.yaml").write_text("audio: media/a.wav\nvideos: [media/v0.mp4, media/v1.mp4]\n")
    inbox = Inbox(share / "inbox", settle_time=0)
    claimed = inbox.claim(share / "inbox" / "job.yaml")
    assert claimed is not None
    store = JobStore(tmp_path / "state")
    manifest = load_manifest(claimed, base_dir=inbox.folder, shared=share)
    job = store.add_job(manifest, claimed_path=claimed, base_dir=inbox.folder)
    first = store.claim_next_video("host:render@0", 0.01)
    assert first is not None
    assert first[1].epoch == 1
    time.sleep(0.05)  # its lease lapses: render@1 takes v0 over (epoch 2)
    second = store.claim_next_video("host:render@1", 60.0)
    assert second is not None
    assert (second[0].output, second[1].epoch) == ("v0.mp4", 2)
    folder = share / "out" / job.id
    folder.mkdir(parents=True)
    dead = [".e1.v0.mp4", "..e1.v0.part.mp4", ".e1.v0.poster.jpg", ".e1.v0.poster.jpg.x1.tmp"]
    live = [".e2.v0.mp4", "..e2.v0.part.mp4", ".e2.v0.poster.jpg"]
    kept = ["v0.poster.jpg", "links.json", ".e7.v1.mp4"]  # the last one is changed after recovery reads
    for name in dead + live + kept:
        (folder / name).write_bytes(b"x")
    later = time.time() + 60
    os.utime(folder / ".e7.v1.mp4", (later, later))
    service = RenderService(
        store,
        inbox,
        [ModelPool(tmp_path / "models", providers="cpu", precision=None, threads=1)],
        paths=RenderPaths(share / "out", tmp_path / "scratch", tmp_path / "locks", tmp_path / "models"),
        settings=RenderSettings(batch_size=8),
        default_model="baseline",
        detector="haar",
        stop=threading.Event(),
        worker="host:render@0",  # restarted after a kill: its claim of v0 was taken over
        lease_s=60.0,
    )
    service.recover()
    left = {p.name for p in folder.iterdir()}
    assert sorted(n for n in left if n.startswith(".")) == sorted([*live, ".e7.v1.mp4"])
    assert {"v0.poster.jpg", "links.json"} <= left
