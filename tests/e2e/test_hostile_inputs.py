"""Hostile and broken inputs through ONE real `lipsyncd render` process (issue 6, part 4).

Every case of tests/e2e/hostile.py is dropped into the inbox of a running daemon, then a known-good
manifest last. Each must render (links.json `rendered`, with the audio's duration) or end with a message
a non-programmer understands: the manifest in inbox/failed/ with NAME.error.txt, or the video `failed`
in links.json with a plain `error`. The daemon must still be alive and serving at the end, must not have
opened any file outside the shared folder (inotify watches the outside folder for opens) and must not
have written anywhere in the share but inbox/done|failed|.claimed and outputs/.

`pytest -s` prints the tally (class of input -> what happened) that the README's Reliability section quotes.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
from watchdog.events import FileOpenedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from tests.e2e import hostile
from tests.e2e.harness import Daemon, Share, wait_for
from tests.e2e.hostile import MIXED, REFUSED, RENDERED, Case

pytestmark = pytest.mark.timeout(400)

# what a non-programmer must never be shown: tracebacks, OS error codes, FFmpeg/PyYAML internals, class names
JARGON = re.compile(
    r"Traceback|File \"|Errno|<unicode string>|<string>|\bav(?:format|codec|io|util|filter)?_\w+"
    r"|\b[A-Z]\w*(?:Error|Exception)\b|NoneType|<class |object at 0x"
)
# ...and what it must be told: something to do
ACTION = re.compile(
    r"\b(copy|export|re-export|save|check|give|put|correct|split|use|drop|rename|move|convert)\b", re.I
)
ALLOWED = ("inbox/done", "inbox/failed", "inbox/.claimed", "outputs")  # where the daemon may write
PROBE = "probe.txt"  # opened by the test itself, to know the watch on outside/ is live


@dataclass(frozen=True)
class Seen:
    """Where a case's manifest ended up and what the user can read about it."""

    where: str  # done, failed, .claimed, inbox or gone
    error_file: str | None
    links: dict[str, Any] | None


@dataclass
class Run:
    share: Share
    outside: hostile.Outside
    seen: dict[str, Seen]
    opened: set[str]  # files under outside/ something opened, relative names
    alive: bool
    exit_code: int
    before: dict[str, tuple[str, int, int]]
    after: dict[str, tuple[str, int, int]]
    outside_before: dict[str, tuple[str, int, int]]
    outside_after: dict[str, tuple[str, int, int]]
    everything: bytes  # every file the daemon wrote or logged, to look for canaries in
    seconds: float


# ---------------------------------------------------------------- the one daemon run


class _Opens(FileSystemEventHandler):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.opened: set[str] = set()

    def on_opened(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent):
            self.opened.add(os.path.relpath(os.fsdecode(event.src_path), self.root))


def watch_opens(outside: hostile.Outside) -> tuple[BaseObserver, _Opens]:
    handler = _Opens(outside.folder)
    observer = Observer()
    observer.schedule(handler, str(outside.folder), recursive=True)
    observer.start()
    probe = outside.path(PROBE)
    probe.write_text("probe\n")
    wait_for(lambda: probe.read_text() and PROBE in handler.opened, 10, "the inotify watch on outside/")
    return observer, handler


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, int, int]]:
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


def in_inbox(share: Share, cases: list[Case]) -> list[Case]:
    return [c for c in cases if os.path.lexists(share.inbox / c.manifest_name)]


def links_by_manifest(share: Share) -> dict[str, dict[str, Any]]:
    docs = {}
    for path in share.outputs.glob("*/links.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        docs[doc["manifest"]] = doc
    return docs


def seen(share: Share, case: Case, links: dict[str, dict[str, Any]]) -> Seen:
    name = case.manifest_name
    places = [
        ("failed", share.inbox / "failed"),
        ("done", share.inbox / "done"),
        (".claimed", share.inbox / ".claimed"),
        ("inbox", share.inbox),
    ]
    where = next((label for label, folder in places if os.path.lexists(folder / name)), "gone")
    error = share.inbox / "failed" / (name.rsplit(".", 1)[0] + ".error.txt")
    text = error.read_text(encoding="utf-8", errors="replace") if error.exists() else None
    return Seen(where, text, links.get(name))


def everything(share: Share, daemon: Daemon) -> bytes:
    blobs = [daemon.output().encode()]
    for root in (share.root, share.state):
        for folder, _, files in os.walk(root):
            paths = [Path(folder, f) for f in files]  # links are not followed: they point outside on purpose
            blobs += [p.read_bytes() for p in paths if p.is_file() and not p.is_symlink()]
    return b"\n".join(blobs)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    started = time.monotonic()
    root = tmp_path_factory.mktemp("hostile")
    share = Share(root / "shared")
    outside = hostile.make_outside(root / "outside")
    hostile.make_media(share.inbox / "media")
    hostile.link_escapes(share.inbox / "media", outside)
    before, outside_before = snapshot(share.root, ALLOWED), snapshot(outside.folder)
    observer, opens = watch_opens(outside)
    daemon = Daemon(share, "render")
    try:
        wait_for(lambda: "render_ready" in daemon.output(), 60, "the daemon to start", daemon)
        for case in hostile.CASES:
            hostile.drop(share.inbox, case, outside)
        settle(lambda: not in_inbox(share, hostile.CASES), 30)
        hostile.drop(share.inbox, hostile.GOOD_CASE, outside)
        good = hostile.GOOD_CASE.manifest_name
        wait_for(lambda: (share.inbox / "done" / good).exists(), 300, "the good job dropped last", daemon)
        settle(lambda: not any((share.inbox / ".claimed").iterdir()), 10)
        alive = daemon.proc.poll() is None
    finally:
        exit_code = daemon.terminate()
        observer.stop()
        observer.join(timeout=10)
    links = links_by_manifest(share)
    manifests = {c.manifest_name for c in [*hostile.CASES, hostile.GOOD_CASE]}
    yield Run(
        share=share,
        outside=outside,
        seen={c.key: seen(share, c, links) for c in [*hostile.CASES, hostile.GOOD_CASE]},
        opened=opens.opened - {PROBE},
        alive=alive,
        exit_code=exit_code,
        before=before,
        after={
            k: v
            for k, v in snapshot(share.root, ALLOWED).items()
            if k not in {f"inbox/{m}" for m in manifests}
        },
        outside_before=outside_before,
        outside_after={k: v for k, v in snapshot(outside.folder).items() if k != PROBE},
        everything=everything(share, daemon),
        seconds=time.monotonic() - started,
    )


# ---------------------------------------------------------------- checks


def assert_plain(message: str | None, names: tuple[str, ...], words: tuple[str, ...]) -> None:
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
    assert s.where == "done" and s.links is not None, f"ended in {s.where}: {s.error_file}"
    assert s.links["status"] == "done" and s.links["error"] is None
    for video in s.links["videos"]:
        assert video["status"] == "rendered", video
        seconds, width, height = output_of(run, s.links, video)
        assert abs(seconds - case.seconds) <= 1 / 25 + 0.07, (
            f"{video['output']}: {seconds} s, not {case.seconds}"
        )
        if case.shape:
            assert (width, height) == case.shape


def check_mixed(run: Run, case: Case, s: Seen) -> None:
    assert s.where == "done" and s.links is not None and s.links["status"] == "done"
    good, *bad = s.links["videos"]
    assert good["status"] == "rendered" and abs(output_of(run, s.links, good)[0] - case.seconds) <= 0.11
    for video in bad:
        assert video["status"] == "failed", video
        assert_plain(video["error"], (Path(video["source"]).name,), ())


def check_failed(case: Case, s: Seen) -> None:
    assert s.where == "failed", f"the manifest ended in {s.where}, not in inbox/failed/"
    assert_plain(s.error_file, case.named(), case.words)
    if case.expect == REFUSED:
        assert s.links is None, "a refused manifest must not become a job"
    else:
        assert s.links is not None and s.links["status"] == "failed"
        assert all(v["status"] == "failed" for v in s.links["videos"])


def check_outside(run: Run, case: Case) -> None:
    for name in case.outside:
        assert name not in run.opened, f"{name} outside the share was opened"
        assert run.outside.canaries[name].encode() not in run.everything, f"the contents of {name} leaked"


CHECKS = {RENDERED: check_rendered, MIXED: check_mixed}


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.key, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in [*hostile.CASES, hostile.GOOD_CASE]])
def test_input(run: Run, case: Case) -> None:
    s = run.seen[case.key]
    if case.expect in CHECKS:
        CHECKS[case.expect](run, case, s)
    else:
        check_failed(case, s)
    check_outside(run, case)


def test_daemon_kept_serving(run: Run) -> None:
    assert run.alive, "the daemon died during the hostile inputs"
    assert run.exit_code == 0


def test_nothing_else_outside_the_share_was_read(run: Run) -> None:
    """Files no case names (cases check their own) were neither opened nor quoted anywhere."""
    named = {name for case in hostile.CASES for name in case.outside}
    assert run.opened - named == set()
    for name, canary in run.outside.canaries.items():
        if name not in named:
            assert canary.encode() not in run.everything, f"the contents of outside/{name} leaked"


def test_nothing_written_outside_the_outputs(run: Run) -> None:
    assert run.after == run.before, "the daemon changed the share outside inbox/done|failed|.claimed, outputs"
    assert run.outside_after == run.outside_before, "the daemon changed the folder outside the share"
    job_dirs = [p for p in run.share.outputs.iterdir()]
    assert all(p.is_dir() and not p.is_symlink() for p in job_dirs)
    assert not [p for d in job_dirs for p in d.iterdir() if p.name.startswith(".")], "temp files left"


def outcome(s: Seen, case: Case) -> str:
    """What happened, in the tally's words (observed, whatever was expected)."""
    if s.where == "done" and s.links:
        statuses = [v["status"] for v in s.links["videos"]]
        if all(x == "rendered" for x in statuses):
            return "rendered"
        return f"{statuses.count('failed')} bad video(s) failed in links.json, the good one rendered"
    if s.where == "failed":
        kind = "job failed" if s.links else "refused"
        return f"{kind}: inbox/failed/ + error file" if s.error_file else f"{kind}: no error file"
    return f"stuck in inbox/{s.where}/ with no message" if s.where != "gone" else "vanished"


def test_tally(run: Run) -> None:
    tally: dict[str, list[str]] = defaultdict(list)
    for case in [*hostile.CASES, hostile.GOOD_CASE]:
        result = outcome(run.seen[case.key], case)
        if result not in tally[case.cls]:
            tally[case.cls].append(result)
    width = max(len(cls) for cls in tally)
    lines = [f"  {cls:<{width}}  ->  {'; '.join(results)}" for cls, results in tally.items()]
    print(f"\nHostile inputs: {len(hostile.CASES)} manifests + 1 good, one daemon, {run.seconds:.0f} s")
    print("\n".join(lines))
    print(f"  daemon alive at the end: {run.alive}; outside files opened: {sorted(run.opened) or 'none'}")
