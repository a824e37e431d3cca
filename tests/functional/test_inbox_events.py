"""The inbox watcher with real inotify: what counts as complete when it arrives."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from daemon.inbox import Inbox, watch


def ready_within(inbox: Inbox, wake: threading.Event, seconds: float) -> list[Path]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        wake.wait(0.05)
        wake.clear()
        ready = inbox.ready_paths()
        if ready:
            return ready
    return []


def test_a_manifest_renamed_in_from_outside_the_inbox_is_taken_at_once(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox", settle_time=60)
    wake = threading.Event()
    observer = watch(inbox, wake, polling=False)
    try:
        staged = tmp_path / "job.yaml.tmp"  # written beside the inbox, then renamed in (a script's way)
        staged.write_text("name: job\n")
        os.rename(staged, inbox.folder / "job.yaml")
        assert ready_within(inbox, wake, 5.0) == [inbox.folder / "job.yaml"]  # not after 60 s of settling
        (inbox.folder / "written.yaml").write_text("name: written\n")  # written in place: it must settle
        assert ready_within(inbox, wake, 0.5) == []
        os.rename(inbox.folder / "written.yaml", tmp_path / "away.yaml")  # moved out: nothing to take
        assert ready_within(inbox, wake, 0.3) == []
    finally:
        observer.stop()
        observer.join(timeout=5)
