"""`journalctl JOB=x` tells one job's story: the real render watcher logging to a real journald."""

from __future__ import annotations

import shutil
import socket
import uuid
from pathlib import Path

from tests.e2e.harness import Share
from tests.functional.test_journald import journald, pytestmark, read_journal  # noqa: F401 - fixture, skips


def test_one_jobs_story_in_the_journal(tmp_path: Path, media: dict[str, Path], journald: list[str]) -> None:  # noqa: F811
    share = Share(tmp_path / "shared", {"logging": {"format": "journald"}})
    for name in ("face", "speech"):
        shutil.copy(media[name], share.inbox / "media")
    job = f"story-{uuid.uuid4().hex[:8]}"
    share.drop(f"{job}.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"]})
    result = share.lipsyncd("render", "--once")
    assert result.returncode == 0, result.stderr
    entries = read_journal(journald, f"JOB={job}", count=4)
    events = [e["EVENT"] for e in entries]
    assert events[0] == "job_queued"
    assert "video_rendered" in events
    assert events[-1] == "job_rendered"
    rendered = next(e for e in entries if e["EVENT"] == "video_rendered")
    assert rendered["VIDEO"] == "anchor.mp4"
    assert rendered["MODEL"] == "baseline"
    assert rendered["SYSLOG_IDENTIFIER"] == "lipsyncd-render"
    assert rendered["PRIORITY"] == "6"
    host = socket.gethostname()  # one journal gathered from many hosts still reads apart
    assert (rendered["HOST"], rendered["WORKER"]) == (host, f"{host}:render@0")
    assert all(e["HOST"] == host for e in entries)
    assert "video_rendered" in str(rendered["MESSAGE"])
