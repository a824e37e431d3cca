"""The inbox's rules: complete files only, claimed once, filed under done/ or failed/ without overwriting."""

from __future__ import annotations

import os
import time
from pathlib import Path

from daemon.inbox import Inbox


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_file_is_taken_only_after_settling(tmp_path: Path) -> None:
    clock = Clock()
    inbox = Inbox(tmp_path, settle_time=2.0, clock=clock)
    path = tmp_path / "job.yaml"
    path.write_text("audio: a")
    inbox.note(path)
    assert inbox.ready_paths() == []
    clock.now = 1.5
    with path.open("a") as f:  # the writer is still going: the clock starts again
        f.write("\nvideos: [b]")
    os.utime(path, ns=(1, 2))
    assert inbox.ready_paths() == []
    clock.now = 3.0
    assert inbox.ready_paths() == []
    clock.now = 3.6
    assert inbox.ready_paths() == [path]
    assert inbox.ready_paths() == []  # taken once


def test_renamed_into_place_is_taken_at_once(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, settle_time=60, clock=Clock())
    path = tmp_path / "job.yaml"
    path.write_text("x")
    inbox.note(path, moved=True)
    assert inbox.ready_paths() == [path]


def test_only_visible_manifests_directly_in_the_inbox(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, settle_time=0, clock=Clock())
    for name in ("a.yaml", "b.JSON", "c.yml", ".d.yaml.tmp", ".e.yaml", "f.txt", "media/g.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [p.name for p in inbox.scan()] == ["a.yaml", "b.JSON", "c.yml"]
    inbox.note(tmp_path / "media" / "g.yaml")
    inbox.note(tmp_path / ".e.yaml")
    assert inbox.ready_paths() == []


def test_claim_is_exclusive_and_filing_never_overwrites(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, settle_time=0)
    path = tmp_path / "job.yaml"
    path.write_text("one")
    claimed = inbox.claim(path)
    assert claimed is not None
    assert not path.exists()
    assert inbox.claim(path) is None
    first = inbox.file_done(claimed, "job.yaml")
    path.write_text("two")
    second = inbox.file_done(inbox.claim(path), "job.yaml")  # type: ignore[arg-type]
    assert (first.name, second.name) == ("job.yaml", "job.2.yaml")
    assert first.read_text() == "one"
    assert second.read_text() == "two"


def test_failed_has_error_file_next_to_it(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, settle_time=0)
    path = tmp_path / "bad.yaml"
    path.write_text("x")
    target = inbox.file_failed(inbox.claim(path), "bad.yaml", "what is wrong")  # type: ignore[arg-type]
    assert target == tmp_path / "failed" / "bad.yaml"
    assert (tmp_path / "failed" / "bad.error.txt").read_text() == "what is wrong"
    assert sorted(p.name for p in (tmp_path / "failed").iterdir()) == ["bad.error.txt", "bad.yaml"]


def test_failures_with_the_same_stem_keep_their_own_error_files(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, settle_time=0)
    for name, report in (("clash.yaml", "yaml report"), ("clash.json", "json report")):
        (tmp_path / name).write_text("x")
        inbox.file_failed(inbox.claim(tmp_path / name), name, report)  # type: ignore[arg-type]
    failed = sorted(p.name for p in (tmp_path / "failed").iterdir())
    assert failed == ["clash.2.error.txt", "clash.2.json", "clash.error.txt", "clash.yaml"]
    assert (tmp_path / "failed" / "clash.error.txt").read_text() == "yaml report"
    assert (tmp_path / "failed" / "clash.2.error.txt").read_text() == "json report"


def test_a_one_off_pass_waits_only_for_what_is_left_of_the_settle_time(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, settle_time=10)
    assert inbox.settle_left() == 0.0  # nothing noted: no wait
    old, recent, future = tmp_path / "old.yaml", tmp_path / "recent.yaml", tmp_path / "future.yaml"
    for path, age in ((old, 60), (recent, 7), (future, -30)):  # future: a writer whose clock runs ahead
        path.write_text("x")
        os.utime(path, (time.time() - age,) * 2)
    assert inbox.settled_by_mtime(old)
    assert not inbox.settled_by_mtime(recent)
    assert not inbox.settled_by_mtime(future)
    inbox.note(old)
    assert inbox.settle_left() <= 0
    inbox.note(recent)
    assert 2.5 < inbox.settle_left() <= 3.0  # ten seconds from its last change, not from now
    inbox.note(future)
    assert 9.5 < inbox.settle_left() <= 10.0  # taken as just changed: a full period
