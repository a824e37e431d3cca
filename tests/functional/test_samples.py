"""The generated sample media really are what tests, the demo and the benchmark rely on them to be."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import yaml

from daemon import samples
from daemon.render import media
from daemon.render.audio import mel_spectrogram

pytest.importorskip("skimage")

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
HAAR = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]


def face_boxes(frames: list[np.ndarray]) -> list[Sequence[Sequence[int]]]:
    grey = (cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames)
    return [HAAR.detectMultiScale(g, 1.1, 5) for g in grey]


def test_face_clip_has_a_moving_face_haar_finds(tmp_path: Path) -> None:
    path = samples.write_face_clip(tmp_path / "face.mp4", 4.0, 25, (256, 256), seed=2)
    frames = list(media.iter_frames(path, media.probe_video(path)))
    assert len(frames) == 100
    boxes = face_boxes(frames[::2])
    found = [b[0] for b in boxes if len(b) == 1]
    assert len(found) >= 0.9 * len(boxes)
    centres = np.array([(x + w / 2, y + h / 2) for x, y, w, h in found])
    sizes = np.array([w for _, _, w, _ in found])
    assert np.ptp(centres[:, 0]) > 4
    assert np.ptp(centres[:, 1]) > 2
    assert np.ptp(sizes) > 4  # and zooms
    assert 60 < sizes.mean() < 130  # a face of the size a 256 px talking head has


def test_face_clip_seed_changes_the_motion(tmp_path: Path) -> None:
    a = next(samples.face_frames(1.0, 25, (64, 64), seed=0))
    b = next(samples.face_frames(1.0, 25, (64, 64), seed=1))
    assert np.mean(np.abs(a.astype(int) - b)) > 1


def test_face_clip_rejects_odd_rotation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 90"):
        samples.write_face_clip(tmp_path / "x.mp4", 1.0, rotate=45)


def test_speech_like_has_syllables_and_pauses() -> None:
    voice = samples.speech_like(4.0, seed=5)
    assert voice.dtype == np.float32
    assert len(voice) == 64000
    assert 0.3 < np.max(np.abs(voice)) <= 0.5
    rms = np.sqrt(np.mean(voice.reshape(-1, 640) ** 2, axis=1))  # one value per 25 fps video frame
    assert np.mean(rms < 1e-4) > 0.15
    assert np.mean(rms > 0.05) > 0.3
    loud = np.mean(mel_spectrogram(voice), axis=0)
    assert np.ptp(loud) > 2  # the mel features the model sees swing with it
    assert not np.array_equal(voice, samples.speech_like(4.0, seed=6))


def test_speech_like_is_voiced_in_the_speech_band() -> None:
    voice = samples.speech_like(2.0, seed=1).astype(np.float64)
    power = np.abs(np.fft.rfft(voice)) ** 2
    freqs = np.fft.rfftfreq(len(voice), 1 / 16000)
    band = power[(freqs > 100) & (freqs < 3000)].sum() / power.sum()
    assert band > 0.9


@pytest.mark.parametrize(("suffix", "channels"), [(".mp3", 6), (".ogg", 1), (".wav", 3)])
def test_write_audio_refuses_what_the_codec_cannot_store(tmp_path: Path, suffix: str, channels: int) -> None:
    with pytest.raises(ValueError, match="channels"):
        samples.write_audio(tmp_path / f"x{suffix}", np.zeros(1600, np.float32), channels=channels)


def test_write_audio_stores_the_asked_layout(tmp_path: Path) -> None:
    path = samples.write_audio(tmp_path / "six.flac", samples.speech_like(0.5), 16000, channels=6)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.channels) == ("flac", 16000, 6)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_still_is_a_face(tmp_path: Path, suffix: str) -> None:
    image = cv2.imread(str(samples.write_still(tmp_path / f"face{suffix}", (300, 200))))
    assert image is not None
    assert image.shape == (200, 300, 3)
    assert len(face_boxes([image])[0]) == 1


# ---------------------------------------------------------------- the shipped demo


def test_demo_media_are_small_and_usable() -> None:
    sizes = {p.name: p.stat().st_size for p in DEMO.iterdir()}
    assert sizes["anchor.mp4"] < 300_000
    assert sizes["speech.wav"] < 200_000
    assert sum(sizes.values()) < 500_000
    info = media.probe_video(DEMO / "anchor.mp4")
    assert (info.width, info.height, info.fps) == (256, 256, 25.0)
    assert 3.5 < info.duration < 4.5
    frames = list(media.iter_frames(DEMO / "anchor.mp4", info))
    assert sum(len(b) == 1 for b in face_boxes(frames[::10])) >= 9
    with av.open(str(DEMO / "speech.wav")) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels) == (16000, 1)
    voice = media.load_audio(DEMO / "speech.wav")
    assert 3.0 < len(voice) / 16000 < 5.0
    assert np.max(np.abs(voice)) > 0.1


def test_demo_manifest_names_the_demo_media() -> None:
    manifest = yaml.safe_load((DEMO / "demo.yaml").read_text(encoding="utf-8"))
    assert manifest == {"name": "demo", "audio": "speech.wav", "videos": ["anchor.mp4"]}
    assert (DEMO / manifest["audio"]).is_file()
    assert all((DEMO / v).is_file() for v in manifest["videos"])


def test_demo_manifest_passes_the_manifest_checks() -> None:
    from daemon.manifest import load_manifest

    manifest = load_manifest(DEMO / "demo.yaml", base_dir=DEMO, shared=DEMO)
    assert manifest.name == "demo"
    assert len(manifest.videos) == 1
