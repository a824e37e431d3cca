from __future__ import annotations

from pathlib import Path

import pytest

from daemon.samples import speech_like, write_audio, write_face_clip


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated once per session: a moving face (the astronaut photo) and speech-like audio."""
    folder = tmp_path_factory.mktemp("media")
    return {
        "face": write_face_clip(folder / "anchor.mp4", 2.0, 25, (256, 256)),
        "face_b": write_face_clip(folder / "anchor_b.mp4", 1.0, 30, (320, 240), seed=3),
        "speech": write_audio(folder / "speech.wav", speech_like(3.0, seed=1)),
        "long_speech": write_audio(folder / "long.wav", speech_like(6.0, seed=2)),
    }
