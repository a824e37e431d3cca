"""The render pipeline in one process on real small files: length policies, faceless frames, stills,
stopping midway, and the baseline model's mouth following the audio at lag 0."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from daemon.render.audio import SAMPLE_RATE
from daemon.render.baseline import write_baseline
from daemon.render.faces import HaarDetector, track_faces
from daemon.render.media import iter_frames, load_audio, probe_video
from daemon.render.model import LipSyncModel
from daemon.render.pipeline import Interrupted, RenderResult, RenderSettings, VideoRender, prepare_audio
from daemon.samples import speech_like, write_audio, write_face_clip, write_still


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LipSyncModel:
    folder = tmp_path_factory.mktemp("models") / "baseline"
    write_baseline(folder)
    return LipSyncModel.open(folder, providers=["CPUExecutionProvider"])


def render(
    tmp_path: Path, model: LipSyncModel, video: Path, audio: Path, **settings: Any
) -> tuple[Path, RenderResult]:
    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir(exist_ok=True)
    job = VideoRender(
        source=video,
        audio=prepare_audio(audio),
        out_path=out,
        model=model,
        detector=HaarDetector(),
        settings=RenderSettings(batch_size=8, **settings),
        scratch_dir=tmp_path / "scratch",
        stop=threading.Event(),
    )
    return out, job.run()


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_short_video_pingpongs_to_the_audio_length(tmp_path: Path, model: LipSyncModel) -> None:
    video = write_face_clip(tmp_path / "short.mp4", 1.0, 25)
    audio = write_audio(tmp_path / "a.wav", speech_like(3.0))
    out, result = render(tmp_path, model, video, audio)
    assert result.frames == 75
    assert frame_count(out) == 75


def test_long_video_is_cut_to_the_audio(tmp_path: Path, model: LipSyncModel) -> None:
    video = write_face_clip(tmp_path / "long.mp4", 3.0, 25)
    audio = write_audio(tmp_path / "a.wav", speech_like(1.2))
    out, _ = render(tmp_path, model, video, audio)
    assert frame_count(out) == 30


def test_still_image_speaks_for_the_whole_audio(tmp_path: Path, model: LipSyncModel) -> None:
    still = write_still(tmp_path / "avatar.png")
    audio = write_audio(tmp_path / "a.wav", speech_like(2.0))
    out, result = render(tmp_path, model, still, audio)
    assert frame_count(out) == 50
    assert result.faceless_frames == 0


def test_frames_without_a_face_pass_through_and_are_counted(tmp_path: Path, model: LipSyncModel) -> None:
    blank = tmp_path / "blank.mp4"
    with av.open(str(blank), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((128, 128, 3), 40, np.uint8), format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    audio = write_audio(tmp_path / "a.wav", speech_like(1.0))
    out, result = render(tmp_path, model, blank, audio)
    assert result.faceless_frames == 25
    assert frame_count(out) == 25


def test_stop_midway_leaves_no_file(tmp_path: Path, model: LipSyncModel) -> None:
    video = write_face_clip(tmp_path / "v.mp4", 2.0, 25)
    audio = write_audio(tmp_path / "a.wav", speech_like(8.0))
    stop = threading.Event()
    out = tmp_path / "out.mp4"
    job = VideoRender(
        source=video,
        audio=prepare_audio(audio),
        out_path=out,
        model=model,
        detector=HaarDetector(),
        settings=RenderSettings(batch_size=4),
        scratch_dir=tmp_path / "scratch",
        stop=stop,
        on_progress=lambda fraction: stop.set(),
    )
    with pytest.raises(Interrupted):
        job.run()
    assert list(tmp_path.glob("*out*")) == []
    assert [t for t in threading.enumerate() if t.name.startswith("render-")] == []


def loudness_per_frame(wav: np.ndarray, fps: float, frames: int) -> np.ndarray:
    hop = SAMPLE_RATE / fps
    return np.array(
        [np.sqrt(np.mean(wav[int(i * hop) : int((i + 1) * hop)] ** 2) + 1e-12) for i in range(frames)]
    )


def test_baseline_mouth_follows_loudness_at_lag_zero(tmp_path: Path, model: LipSyncModel) -> None:
    video = write_face_clip(tmp_path / "v.mp4", 6.0, 25, (256, 256))
    audio = write_audio(tmp_path / "a.wav", speech_like(6.0, seed=7))
    out, _ = render(tmp_path, model, video, audio)
    info = probe_video(video)
    source = list(iter_frames(video, info))
    rendered = list(iter_frames(out, probe_video(out)))
    boxes = [crop.box for _, crop in track_faces(iter(source), HaarDetector())]
    change = []
    for before, after, box in zip(source, rendered, boxes, strict=False):
        assert box is not None
        mouth = (slice(box.y1 + box.height // 2, box.y2), slice(box.x1, box.x2))
        change.append(np.abs(after[mouth].astype(float) - before[mouth].astype(float)).mean())
    loud = loudness_per_frame(load_audio(audio), info.fps, len(change))
    change_arr = np.array(change)

    def corr(lag: int) -> float:
        a = change_arr[max(lag, 0) : len(change_arr) + min(lag, 0)]
        b = loud[max(-lag, 0) : len(loud) + min(-lag, 0)]
        return float(np.corrcoef(a, b)[0, 1])

    scores = {lag: corr(lag) for lag in range(-4, 5)}
    best = max(scores, key=lambda lag: scores[lag])
    assert best == 0, scores
    assert scores[0] > 0.6, scores
