"""Several inference workers (one per GPU on a CUDA machine) share a job's videos. No GPU here: two CPU
workers stand in for two GPUs, which exercises the same dispatch code."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from daemon.inbox import Inbox
from daemon.manifest import load_manifest
from daemon.render.family import LipSyncFamily
from daemon.render.pipeline import RenderSettings
from daemon.render.registry import ModelPool
from daemon.render.service import RenderPaths, RenderService
from daemon.samples import speech_like, write_audio, write_face_clip
from daemon.store import JobState, JobStore, VideoState


def test_videos_of_a_job_spread_over_all_workers(tmp_path: Path, ledger_url: str | None) -> None:
    share = tmp_path / "share"
    media = share / "inbox" / "media"
    media.mkdir(parents=True)
    write_audio(media / "a.wav", speech_like(1.0))
    for i in range(4):
        write_face_clip(media / f"v{i}.mp4", 1.0, 25, (128, 128), seed=i)
    manifest_path = share / "inbox" / "job.yaml"
    manifest_path.write_text(
        "audio: media/a.wav\nvideos: [media/v0.mp4, media/v1.mp4, media/v2.mp4, media/v3.mp4]\n"
    )
    inbox = Inbox(share / "inbox", settle_time=0)
    claimed = inbox.claim(manifest_path)
    assert claimed is not None
    store = JobStore(tmp_path / "state", url=ledger_url)
    job = store.add_job(
        load_manifest(claimed, base_dir=inbox.folder, shared=share),
        claimed_path=claimed,
        base_dir=inbox.folder,
    )
    pools = [ModelPool(tmp_path / "models", providers="cpu", precision=None, threads=1) for _ in range(2)]
    used: list[tuple[int, str]] = []
    for pool in pools:

        def counted(
            name: str, _o: Callable[[str], LipSyncFamily] = pool.get, _p: ModelPool = pool
        ) -> LipSyncFamily:
            used.append((id(_p), threading.current_thread().name))
            return _o(name)

        pool.get = counted  # type: ignore[method-assign]
    service = RenderService(
        store,
        inbox,
        pools,
        paths=RenderPaths(share / "out", tmp_path / "scratch", tmp_path / "locks", tmp_path / "models"),
        settings=RenderSettings(batch_size=8),
        default_model="baseline",
        detector="haar",
        stop=threading.Event(),
    )
    service.render_job(job)
    assert [v.state for v in store.videos(job.id)] == [VideoState.RENDERED] * 4
    assert store.job(job.id).state == JobState.DONE  # type: ignore[union-attr]
    assert {pool for pool, _ in used} == {id(p) for p in pools}, "every worker took videos"
    assert all(name.startswith("gpu-worker") for _, name in used)
