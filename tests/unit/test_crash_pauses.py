"""The crash suite's pause verdict: every claim taken over from a frozen worker must be refused to it (a
claim_lost or *_abandoned line naming the video) and no success line may follow for it."""

from __future__ import annotations

from tests.e2e.crash import Pause, _refused, check_pauses


def pause(refused: tuple[str, ...], late: tuple[str, ...] = ()) -> Pause:
    held = (("j1", "a.mp4", 2), ("j2", "b.mp4", 3))
    return Pause(1, "render", 0, held, held[:1], 5.2, refused, late)


def test_a_taken_claim_must_be_refused_to_the_paused_worker() -> None:
    assert pause(("j1/a.mp4",)).ok
    assert not pause(("j2/b.mp4",)).ok  # refused, but not the video that was taken over
    assert not pause(()).ok
    assert check_pauses([pause(("j1/a.mp4",))]).ok
    assert not check_pauses([pause(("j1/a.mp4",)), pause(())]).ok


def test_a_success_line_after_the_thaw_fails_the_pause() -> None:
    assert not pause(("j1/a.mp4",), ("video_rendered j1/a.mp4",)).ok


def test_refusals_are_read_from_claim_lost_and_abandoned_lines() -> None:
    events = [
        {"event": "claim_lost", "job": "j1", "video": "a.mp4"},
        {"event": "render_abandoned", "job": "j2", "video": "b.mp4"},
        {"event": "upload_abandoned", "job": "j3", "video": "c.mp4"},
        {"event": "video_rendered", "job": "j4", "video": "d.mp4"},
    ]
    assert _refused(events) == ["j1/a.mp4", "j2/b.mp4", "j3/c.mp4"]
