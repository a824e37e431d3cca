"""render.decoder: NVDEC through PyAV's CUDA hwaccel where it opens, else the CPU decoder with one log line
saying why; and the doctor's GPU-side lines. This machine has no GPU, so the fallback is what runs here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from daemon.config import Config, PathsConfig, RenderConfig
from daemon.doctor import nvdec_check, trt_cache_check
from daemon.render import media
from daemon.render.media import iter_frames, nvdec_unusable, probe_video, video_decoder
from daemon.samples import write_face_clip


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    nvdec_unusable.cache_clear()
    media._log_cpu_decoder.cache_clear()
    yield
    nvdec_unusable.cache_clear()
    media._log_cpu_decoder.cache_clear()


def test_a_build_without_cuda_hwaccel_decodes_on_the_cpu_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(media, "hwdevices_available", lambda: ["vaapi"])
    with capture_logs() as logs:
        assert video_decoder("nvdec") is None
        assert video_decoder("nvdec") is None  # said once per process, not per video
    lines = [e for e in logs if e["event"] == "decoder_cpu"]
    assert len(lines) == 1
    assert lines[0]["log_level"] == "warning"  # asked for by name: a warning
    assert "no CUDA hwaccel" in lines[0]["reason"]


def test_auto_on_a_machine_without_a_cuda_device_falls_back_quietly() -> None:
    if nvdec_unusable(0) is None:
        pytest.skip("NVDEC works on this machine")
    with capture_logs() as logs:
        assert video_decoder("auto") is None
    (line,) = [e for e in logs if e["event"] == "decoder_cpu"]
    assert line["log_level"] == "info"
    assert line["requested"] == "auto"
    assert "decoding on the CPU" in line["reason"]


def test_cpu_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media, "nvdec_unusable", lambda device=0: pytest.fail("probed"))
    with capture_logs() as logs:
        assert video_decoder("cpu") is None
    assert logs == []
    with pytest.raises(ValueError, match=r"render\.decoder"):
        video_decoder("vdpau")


def test_a_usable_nvdec_is_a_cuda_hwaccel_on_the_models_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[tuple[object, ...], dict[str, object]]] = []
    monkeypatch.setattr(media, "nvdec_unusable", lambda device=0: None)
    accel = object()

    def hwaccel(*args: object, **kwargs: object) -> object:
        made.append((args, kwargs))
        return accel

    monkeypatch.setattr(media, "HWAccel", hwaccel)
    assert video_decoder("auto", 3) is accel
    # a stream NVDEC cannot take (a profile it lacks) still decodes, in software
    assert made == [(("cuda",), {"device": "3", "allow_software_fallback": True})]


def test_frames_are_the_same_through_the_decoder_choice(tmp_path: Path) -> None:
    clip = write_face_clip(tmp_path / "c.mp4", 0.4, 25, (128, 96))
    info = probe_video(clip)
    plain = list(iter_frames(clip, info))
    chosen = list(iter_frames(clip, info, video_decoder("auto")))
    assert len(chosen) == len(plain) > 0
    assert all(np.array_equal(a, b) for a, b in zip(plain, chosen, strict=True))


def test_doctor_nvdec_line() -> None:
    def gone(device: int) -> str:
        return "no CUDA device for NVDEC on GPU 0 (x); decoding on the CPU"

    auto = nvdec_check(Config(), gone)
    assert auto.ok
    assert not auto.warn
    assert "no CUDA device" in auto.detail
    asked = nvdec_check(Config(render=RenderConfig(decoder="nvdec")), gone)
    assert asked.ok  # renders still work, on the CPU decoder ...
    assert asked.warn  # ... but not as asked
    works = nvdec_check(Config(render=RenderConfig(gpus=[2])), lambda device: None)
    assert works.ok
    assert "GPU 2" in works.detail
    assert "cpu" in nvdec_check(Config(render=RenderConfig(decoder="cpu")), gone).detail


def test_doctor_trt_cache_line(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "trt-cache"
    (folder / "w2l" / "fp16-abc").mkdir(parents=True)
    (folder / "w2l" / "fp16-abc" / "READY").write_text("x")
    (folder / "w2l" / ".fp16-def.building-1").mkdir()  # a build in progress is not counted
    check = trt_cache_check(folder, "tensorrt")
    assert check.ok
    assert "1 built (w2l/fp16-abc)" in check.detail
    assert "used when render.providers is tensorrt" in trt_cache_check(folder, "auto").detail
    fresh = trt_cache_check(tmp_path / "new-state" / "trt-cache", "tensorrt")  # nothing made yet
    assert fresh.ok
    assert "none built yet" in fresh.detail
    assert Config(paths=PathsConfig(state=tmp_path)).state_dir == tmp_path.resolve()
