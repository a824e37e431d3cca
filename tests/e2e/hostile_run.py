"""Drive hostile cases through ONE real `lipsyncd render` process and judge what the user ends up with.

`drive()` writes the media, starts the daemon, drops every case's manifest, then the known-good one last,
waits for it, stops the daemon and returns what happened (`Run`). While it runs, inotify watches the folder
outside the share for any file being opened. The `check_*` functions assert what a case must show; the
test suite calls them, and bench/reliability_inputs.py turns their AssertionErrors into counted problems.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from watchdog.events import FileOpenedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from tests.e2e import hostile
from tests.e2e.harness import Daemon, Share, wait_for
from tests.e2e.hostile import ANY, JOB_FAILED, MIXED, REFUSED, RENDERED, Case, Make

# what a non-programmer must never be shown: tracebacks, OS error codes, FFmpeg/PyYAML internals, class names
JARGON = re.compile(
    r"Traceback|File \"|Errno|<unicode string>|<string>|\bav(?:format|codec|io|util|filter)?_\w+"
    r"|\b[A-Z]\w*(?:Error|Exception)\b|NoneType|<class |object at 0x"
)
# ...and what it must be told: something to do
ACTION = re.compile(
    r"\b(copy|export|re-export|save|check|give|put|correct|split|use|drop|rename|move|convert|scale)\b", re.I
)
ALLOWED = ("inbox/done", "inbox/failed", "inbox/.claimed", "outputs")  # where the daemon may write
PROBE = "probe.txt"  # opened by the driver itself, to know the watch on outside/ is live
Listing = dict[str, tuple[str, int, int]]


@dataclass(frozen=True)
class Seen:
    """Where a case's manifest ended up and what the user can read about it."""

    where: str  # done, failed, .claimed, inbox or gone
    error_file: str | None
    links: dict[str, Any] | None


@dataclass(frozen=True)
class Run:
    share: Share
    outside: hostile.Outside
    seen: dict[str, Seen]  # by case key
    opened: frozenset[str]  # files under outside/ that something opened, relative names
    alive: bool  # the daemon was still running after the last case
    exit_code: int  # of its SIGTERM shutdown
    before: Listing  # the share minus ALLOWED, before the first drop
    after: Listing  # ...and at the end, without the dropped manifests
    outside_before: Listing
    outside_after: Listing
    everything: bytes  # every file the daemon wrote or logged, to look for canaries in
    seconds: float


# ---------------------------------------------------------------- driving


def drive(root: Path, cases: list[Case], media: Mapping[str, Make], *, wait_s: float = 300) -> Run:
    """All of `cases`, then hostile.GOOD_CASE, through one daemon in a fresh share under `root`."""
    started = time.monotonic()
    share = Share(root / "shared")
    outside = hostile.make_outside(root / "outside")
    hostile.make_media(share.inbox / "media", media)
    hostile.link_escapes(share.inbox / "media", outside)
    before, outside_before = snapshot(share.root, ALLOWED), snapshot(outside.folder)
    observer, opens = watch_opens(outside)
    daemon = Daemon(share, "render")
    try:
        alive = _feed(share, daemon, cases, outside, wait_s)
    finally:
        exit_code = daemon.terminate()
        observer.stop()
        observer.join(timeout=10)
    every = [*cases, hostile.GOOD_CASE]
    links = links_by_manifest(share)
    dropped = {f"inbox/{c.manifest_name}" for c in every}
    return Run(
        share=share,
        outside=outside,
        seen={c.key: seen(share, c, links) for c in every},
        opened=frozenset(opens.opened - {PROBE}),
        alive=alive,
        exit_code=exit_code,
        before=before,
        after={k: v for k, v in snapshot(share.root, ALLOWED).items() if k not in dropped},
        outside_before=outside_before,
        outside_after={k: v for k, v in snapshot(outside.folder).items() if k != PROBE},
        everything=everything(share, daemon),
        seconds=time.monotonic() - started,
    )


def _feed(share: Share, daemon: Daemon, cases: list[Case], outside: hostile.Outside, wait_s: float) -> bool:
    """Drop the cases, wait until they are taken, drop the good one; True if the daemon is still up."""
    wait_for(lambda: "render_ready" in daemon.output(), 60, "the daemon to start", daemon)
    for case in cases:
        hostile.drop(share.inbox, case, outside)
    settle(lambda: not in_inbox(share, cases), 30)
    hostile.drop(share.inbox, hostile.GOOD_CASE, outside)
    good = share.inbox / "done" / hostile.GOOD_CASE.manifest_name
    wait_for(good.exists, wait_s, "the good job dropped last", daemon)
    settle(lambda: not any((share.inbox / ".claimed").iterdir()), 10)
    return daemon.proc.poll() is None


class _Opens(FileSystemEventHandler):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.opened: set[str] = set()

    def on_opened(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent):
            self.opened.add(os.path.relpath(os.fsdecode(event.src_path), self.root))


def watch_opens(outside: hostile.Outside) -> tuple[BaseObserver, _Opens]:
    """inotify IN_OPEN on everything under outside/; returns once a probe open has been seen."""
    handler = _Opens(outside.folder)
    observer = Observer()
    observer.schedule(handler, str(outside.folder), recursive=True)
    observer.start()
    probe = outside.path(PROBE)
    probe.write_text("probe\n")
    wait_for(lambda: probe.read_text() and PROBE in handler.opened, 10, "the inotify watch on outside/")
    return observer, handler


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> Listing:
    """Every path under `root` (links not followed) -> (kind, size, mtime), minus `skip` subtrees."""
    found = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in skip]
        for name in dirs + files:
            found[os.path.normpath(os.path.join(rel, name))] = _entry(Path(folder, name))
    return found


def _entry(path: Path) -> tuple[str, int, int]:
    if path.is_symlink() or not path.is_file():
        return ("link" if path.is_symlink() else "other", 0, 0)
    st = path.stat()
    return ("file", st.st_size, st.st_mtime_ns)


def settle(predicate: Callable[[], bool], timeout: float) -> bool:
    """Like wait_for, but a timeout is an answer, not a failure (a stuck case is reported by its own test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def in_inbox(share: Share, cases: Iterable[Case]) -> list[Case]:
    return [c for c in cases if os.path.lexists(share.inbox / c.manifest_name)]


def links_by_manifest(share: Share) -> dict[str, dict[str, Any]]:
    docs = {}
    for path in share.outputs.glob("*/links.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        docs[doc["manifest"]] = doc
    return docs


def seen(share: Share, case: Case, links: dict[str, dict[str, Any]]) -> Seen:
    name = case.manifest_name
    failed = _filed(share.inbox / "failed", name)
    if failed is not None:
        return Seen("failed", failed, links.get(name))
    places = [("done", share.inbox / "done"), (".claimed", share.inbox / ".claimed"), ("inbox", share.inbox)]
    where = next((label for label, folder in places if os.path.lexists(folder / name)), "gone")
    return Seen(where, None, links.get(name))


def _filed(failed: Path, name: str) -> str | None:
    """The error text of failed/NAME or, where that name was taken, of failed/STEM.N.SUFFIX that is about
    NAME ("" when there is no error file); None if the manifest is not in failed/."""
    stem, _, suffix = name.rpartition(".")
    for n in range(1, 10):
        candidate = failed / (name if n == 1 else f"{stem}.{n}.{suffix}")
        error = candidate.with_name(candidate.name.rsplit(".", 1)[0] + ".error.txt")
        text = error.read_text(encoding="utf-8", errors="replace") if error.exists() else ""
        if os.path.lexists(candidate) and (n == 1 or name in text):
            return text
    return None


def everything(share: Share, daemon: Daemon) -> bytes:
    blobs = [daemon.output().encode()]
    for root in (share.root, share.state):
        for folder, _, files in os.walk(root):
            paths = [Path(folder, f) for f in files]  # links are not followed: they point outside on purpose
            blobs += [p.read_bytes() for p in paths if p.is_file() and not p.is_symlink()]
    return b"\n".join(blobs)


# ---------------------------------------------------------------- judging


def assert_plain(message: str | None, names: tuple[str, ...], words: tuple[str, ...] = ()) -> None:
    """Names the file, says what is wrong in the case's words and what to do; no programmer's jargon."""
    assert message, "no message for the user"
    for name in names:
        assert name in message, f"the message does not name {name!r}:\n{message}"
    for word in words:
        assert word in message, f"the message does not say {word!r}:\n{message}"
    assert ACTION.search(message), f"the message does not say what to do:\n{message}"
    jargon = JARGON.search(message)
    assert jargon is None, f"programmer's jargon {jargon.group(0)!r} in:\n{message}"


def output_of(run: Run, links: dict[str, Any], video: dict[str, Any]) -> tuple[float, int, int]:
    """(seconds, width, height) of a rendered output, read back from the file."""
    path = run.share.outputs / links["job"] / video["output"]
    assert path.resolve().is_relative_to(run.share.outputs.resolve())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames / float(stream.average_rate or 0), stream.width, stream.height


def check_rendered(run: Run, case: Case, s: Seen) -> None:
    assert s.where == "done", f"ended in {s.where}: {s.error_file}"
    assert s.links is not None, f"ended in {s.where}: {s.error_file}"
    assert s.links["status"] == "done"
    assert s.links["error"] is None
    for video in s.links["videos"]:
        assert video["status"] == "rendered", video
        seconds, width, height = output_of(run, s.links, video)
        assert abs(seconds - case.seconds) <= 0.11, f"{video['output']}: {seconds} s, not {case.seconds}"
        if case.shape:
            assert (width, height) == case.shape


def check_mixed(run: Run, case: Case, s: Seen) -> None:
    assert s.where == "done"
    assert s.links is not None
    assert s.links["status"] == "partial"
    error_file = run.share.inbox / "done" / (case.manifest_name.rsplit(".", 1)[0] + ".error.txt")
    assert error_file.exists(), "a partial job's manifest has no error file beside it in done/"
    good, *bad = s.links["videos"]
    assert good["status"] == "rendered"
    assert abs(output_of(run, s.links, good)[0] - case.seconds) <= 0.11
    for video in bad:
        assert video["status"] == "failed", video
        assert_plain(video["error"], (Path(video["source"]).name,))


def check_failed(run: Run, case: Case, s: Seen) -> None:
    assert s.where == "failed", f"the manifest ended in {s.where}, not in inbox/failed/"
    assert_plain(s.error_file, case.named(), case.words)
    if case.expect == REFUSED:
        assert s.links is None, "a refused manifest must not become a job"
    elif case.expect == JOB_FAILED or s.links is not None:
        assert s.links is not None
        assert s.links["status"] == "failed"
        assert all(v["status"] == "failed" for v in s.links["videos"])


def check_any(run: Run, case: Case, s: Seen) -> None:
    """Either outcome is fine (fuzzed input), as long as it is a clean one."""
    if s.where == "done":
        check_rendered(run, case, s)
    else:
        check_failed(run, case, s)


def check_outside(run: Run, case: Case) -> None:
    for name in case.outside:
        assert name not in run.opened, f"{name} outside the share was opened"
        assert run.outside.canaries[name].encode() not in run.everything, f"the contents of {name} leaked"


CHECKS = {RENDERED: check_rendered, MIXED: check_mixed, ANY: check_any}


def check(run: Run, case: Case) -> None:
    """Everything `case` promises; AssertionError says what was not kept."""
    CHECKS.get(case.expect, check_failed)(run, case, run.seen[case.key])
    check_outside(run, case)


def outcome(run: Run, case: Case) -> str:
    """What happened, in the tally's words (observed, whatever was expected)."""
    s = run.seen[case.key]
    read = [n for n in case.outside if n in run.opened]
    note = f" (after reading outside/{', '.join(read)})" if read else ""
    if s.where == "done" and s.links:
        statuses = [v["status"] for v in s.links["videos"]]
        if all(x == "rendered" for x in statuses):
            return "rendered" + note
        return f"{statuses.count('failed')} bad video(s) failed in links.json, the good one rendered" + note
    if s.where == "failed":
        kind = "job failed" if s.links else "refused"
        return (f"{kind}: inbox/failed/ + error file" if s.error_file else f"{kind}: no error file") + note
    return f"stuck in inbox/{s.where}/ with no message" if s.where != "gone" else "vanished"
