"""When a render shows some of the video's frames again: only then are frames spilled for replay and
avatar inputs (MuseTalk's latents, 32 KB a frame) kept in memory within the render."""

from __future__ import annotations

import pytest

from daemon.render.pipeline import shows_frames_again
from daemon.render.types import VideoInfo


def clip(seconds: float, *, still: bool = False) -> VideoInfo:
    return VideoInfo(width=1920, height=1080, fps=25.0, duration=seconds, rotation=0, is_still=still)


@pytest.mark.parametrize(
    ("video_s", "frames", "again"),
    [
        (12.0, 250, False),  # the bench's case: the video outlasts the audio, every frame shown once
        (10.0, 250, True),  # as long as the audio: a container's duration is an estimate, so a second's slack
        (10.0, 300, True),  # 2 s of audio past the video's end: ping-pong or freeze
        (10.5, 250, True),
        (11.0, 250, False),
        (300.0, 7500, True),
        (302.0, 7500, False),
    ],
)
def test_frames_are_shown_again_only_when_the_audio_outlasts_the_video(
    video_s: float, frames: int, again: bool
) -> None:
    assert shows_frames_again(clip(video_s), frames) is again


def test_a_still_is_always_shown_again() -> None:
    assert shows_frames_again(clip(0.04, still=True), 1)
