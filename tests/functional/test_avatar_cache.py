"""The avatar cache with the real Haar detector on generated clips: a second render of the same video runs
no detection and gives the same boxes; another detector, another video or a damaged entry misses.

Boxes are compared at the tracker, not in the output files: libx264 with threads does not encode the same
frames to the same bytes twice here (checked: identical input frames, outputs differing by up to 34 levels).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from daemon.files import file_sha256
from daemon.render.avatar_cache import AvatarCache
from daemon.render.baseline import write_baseline
from daemon.render.faces import FaceTracker, HaarDetector
from daemon.render.media import iter_frames, probe_video
from daemon.render.model import LipSyncModel
from daemon.render.pipeline import RenderResult, RenderSettings, VideoRender, prepare_audio
from daemon.render.types import Box
from daemon.samples import speech_like, write_audio, write_face_clip


class CountingHaar:
    """The real HaarDetector, counting its runs; `name` lets a test pose as another detector."""

    def __init__(self, name: str = "haar") -> None:
        self.inner = HaarDetector()
        self.name = name
        self.calls = 0
        self.takes_grey = True  # as Haar: the pipeline hands it the luma plane

    @property
    def fingerprint(self) -> str:
        return f"{self.name}: {self.inner.fingerprint}"

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        self.calls += 1
        return self.inner.detect(frame_bgr)

    def detect_near(self, frame_bgr: np.ndarray, last: Box) -> list[Box]:
        self.calls += 1
        return self.inner.detect_near(frame_bgr, last)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    return {
        "video": write_face_clip(folder / "anchor.mp4", 2.0, 25, (320, 240), seed=5),
        "other": write_face_clip(folder / "other.mp4", 2.0, 25, (320, 240), seed=9),
        "audio": write_audio(folder / "speech.wav", speech_like(1.6)),
        "short_audio": write_audio(folder / "short.wav", speech_like(0.8)),
    }


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LipSyncModel:
    folder = tmp_path_factory.mktemp("models") / "baseline"
    write_baseline(folder)
    return LipSyncModel.open(folder, providers=["CPUExecutionProvider"])


def render(
    tmp_path: Path, model: LipSyncModel, video: Path, audio: Path, detector: CountingHaar, cache: AvatarCache
) -> tuple[RenderResult, Path]:
    out = tmp_path / f"out-{detector.calls}-{len(list(tmp_path.glob('out-*')))}.mp4"
    result = VideoRender(
        source=video,
        audio=prepare_audio(audio),
        out_path=out,
        model=model,
        detector=detector,
        settings=RenderSettings(batch_size=8),
        scratch_dir=tmp_path / "scratch",
        stop=threading.Event(),
        cache=cache,
    ).run()
    return result, out


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]


def test_second_render_of_the_same_video_runs_no_detection(
    tmp_path: Path, media: dict[str, Path], model: LipSyncModel
) -> None:
    cache = AvatarCache(tmp_path / "avatars")
    first_detector, second_detector = CountingHaar(), CountingHaar()
    first, first_out = render(tmp_path, model, media["video"], media["audio"], first_detector, cache)
    second, second_out = render(tmp_path, model, media["video"], media["audio"], second_detector, cache)
    assert first_detector.calls > 0
    assert first.detector_calls > 0
    assert second_detector.calls == 0
    assert second.detector_calls == 0
    assert second.cached_detections == first.detector_calls
    assert len(list((tmp_path / "avatars").glob("*.npz"))) == 1
    assert len(decoded(second_out)) == len(decoded(first_out)) == first.frames


def test_another_detector_misses_the_cache(
    tmp_path: Path, media: dict[str, Path], model: LipSyncModel
) -> None:
    cache = AvatarCache(tmp_path / "avatars")
    render(tmp_path, model, media["video"], media["audio"], CountingHaar("haar"), cache)
    other = CountingHaar("s3fd")
    result, _ = render(tmp_path, model, media["video"], media["audio"], other, cache)
    assert other.calls > 0
    assert result.cached_detections == 0
    assert len(list((tmp_path / "avatars").glob("*.npz"))) == 2


def test_the_key_is_the_content_not_the_name(
    tmp_path: Path, media: dict[str, Path], model: LipSyncModel
) -> None:
    cache = AvatarCache(tmp_path / "avatars")
    render(tmp_path, model, media["video"], media["audio"], CountingHaar(), cache)
    renamed = shutil.copy(media["video"], tmp_path / "renamed.mp4")
    same, other = CountingHaar(), CountingHaar()
    render(tmp_path, model, Path(renamed), media["audio"], same, cache)
    render(tmp_path, model, media["other"], media["audio"], other, cache)
    assert same.calls == 0
    assert other.calls > 0


def test_a_longer_render_detects_only_the_new_frames(tmp_path: Path, media: dict[str, Path]) -> None:
    """The cache keeps raw detections, so a partial entry extends and replays to identical boxes."""
    video = media["video"]
    info = probe_video(video)
    frames = list(iter_frames(video, info))
    cache = AvatarCache(tmp_path / "avatars")

    def boxes(count: int, detector: CountingHaar, cache: AvatarCache = cache) -> list[Box | None]:
        memo = cache.track(video, detector, info)
        tracker = FaceTracker(detector, detect_every=5, memo=memo)
        found = [crop.box for _, crop in tracker.track(frames[:count])]
        cache.save(memo)
        return found

    fresh = CountingHaar()
    expected = boxes(len(frames), fresh, AvatarCache(tmp_path / "elsewhere"))
    short, longer, replay = CountingHaar(), CountingHaar(), CountingHaar()
    boxes(20, short)
    assert boxes(len(frames), longer) == expected
    assert 0 < longer.calls < fresh.calls
    assert boxes(len(frames), replay) == expected
    assert replay.calls == 0


def test_a_damaged_entry_is_a_miss_and_is_replaced(
    tmp_path: Path, media: dict[str, Path], model: LipSyncModel
) -> None:
    cache = AvatarCache(tmp_path / "avatars")
    render(tmp_path, model, media["video"], media["short_audio"], CountingHaar(), cache)
    (entry,) = (tmp_path / "avatars").glob("*.npz")
    entry.write_bytes(b"not a numpy archive")
    again = CountingHaar()
    result, _ = render(tmp_path, model, media["video"], media["short_audio"], again, cache)
    assert again.calls > 0
    assert result.cached_detections == 0
    third = CountingHaar()
    render(tmp_path, model, media["video"], media["short_audio"], third, cache)
    assert third.calls == 0
    assert entry.name.startswith(file_sha256(media["video"]))
    assert not list((tmp_path / "avatars").glob(".*"))  # no temp files left behind
