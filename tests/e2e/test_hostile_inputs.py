"""Hostile and broken inputs through ONE real `lipsyncd render` process (issue 6, part 4).

Every case of tests/e2e/hostile.py is dropped into the inbox of a running daemon, then a known-good
manifest last (tests/e2e/hostile_run.py drives it). Each must render (links.json `rendered`, with the
audio's duration) or end with a message a non-programmer understands: the manifest in inbox/failed/ with
NAME.error.txt, or the video `failed` in links.json with a plain `error`. The daemon must still be alive
and serving at the end, must not have opened any file outside the shared folder (inotify watches the
outside folder for opens) and must not have written anywhere in the share but inbox/done|failed|.claimed
and outputs/. A named pipe as a manifest gets a daemon of its own: it can wedge the intake.

`pytest -s` prints the tally (class of input -> what happened) that the README's Reliability section quotes.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import hostile
from tests.e2e.harness import Daemon, Share, wait_for
from tests.e2e.hostile import Case
from tests.e2e.hostile_run import Run, check, drive, outcome, settle

pytestmark = pytest.mark.timeout(400)
EVERY = [*hostile.CASES, hostile.GOOD_CASE]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return drive(tmp_path_factory.mktemp("hostile"), hostile.CASES, hostile.MEDIA)


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.key, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in EVERY])
def test_input(run: Run, case: Case) -> None:
    check(run, case)


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
    job_dirs = list(run.share.outputs.iterdir())
    assert all(p.is_dir() and not p.is_symlink() for p in job_dirs)
    assert not [p for d in job_dirs for p in d.iterdir() if p.name.startswith(".")], "temp files left"


def tally(run: Run) -> dict[str, list[str]]:
    """class of input -> the distinct outcomes seen; known daemon bugs (strict xfails) are marked."""
    found: dict[str, list[str]] = defaultdict(list)
    for case in EVERY:
        result = outcome(run, case) + (" [known bug, xfail]" if case.xfail else "")
        if result not in found[case.cls]:
            found[case.cls].append(result)
    return found


def test_tally(run: Run) -> None:
    found = tally(run)
    width = max(len(cls) for cls in found)
    print(f"\nHostile inputs: {len(hostile.CASES)} manifests + 1 good, one daemon, {run.seconds:.0f} s")
    print("\n".join(f"  {cls:<{width}}  ->  {'; '.join(results)}" for cls, results in found.items()))
    print(f"  daemon alive at the end: {run.alive}; outside files opened: {sorted(run.opened) or 'none'}")
    assert len(found) >= 50


# ---------------------------------------------------------------- a named pipe as the manifest


@contextlib.contextmanager
def _released(fifo_names: list[Path]) -> Iterator[None]:
    """Whatever happens, open each pipe for writing once, so a reader blocked on it gets end-of-file."""
    try:
        yield
    finally:
        for path in fifo_names:
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading it, which is good
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_a_named_pipe_as_manifest_does_not_wedge_the_inbox(tmp_path: Path) -> None:
    """Reading a pipe called pipe.yaml blocked the intake thread until someone wrote to it (fixed in inbox.py:
    only regular files are taken)."""
    share = Share(tmp_path / "shared")
    for name in ("voice.wav", "anchor.mp4"):
        hostile.MEDIA[name](share.inbox / "media" / name)
    pipe = share.inbox / "pipe.yaml"
    daemon = Daemon(share, "render")
    try:
        with _released([pipe, share.inbox / ".claimed" / pipe.name, share.inbox / "failed" / pipe.name]):
            wait_for(lambda: "render_ready" in daemon.output(), 60, "the daemon to start", daemon)
            os.mkfifo(pipe)
            settle(lambda: not pipe.exists(), 5)  # taken (claimed) or left alone: either is fine
            hostile.drop(share.inbox, hostile.GOOD_CASE, hostile.Outside(tmp_path))
            good = hostile.GOOD_CASE.manifest_name
            wait_for(lambda: not (share.inbox / good).exists(), 15, "the good manifest to be taken", daemon)
            wait_for((share.inbox / "done" / good).exists, 60, "the good job", daemon)
    finally:
        daemon.terminate()


# ---------------------------------------------------------------- a job name too long for the disk


def test_a_job_name_too_long_for_the_disk_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """'name:' of 100 Chinese characters is 300 bytes, over the 255-byte limit of a file name: the job's lock
    file could not be made and the daemon exited 1, again at every start (fixed: names are cut by bytes)."""
    share = Share(tmp_path / "shared")
    for name in ("voice.wav", "anchor.mp4"):
        hostile.MEDIA[name](share.inbox / "media" / name)
    share.drop(
        "long-name.yaml", {"name": "促" * 100, "audio": "media/voice.wav", "videos": ["media/anchor.mp4"]}
    )
    share.drop("good.yaml", {"audio": "media/voice.wav", "videos": ["media/anchor.mp4"]})
    for _ in range(2):  # and again after a restart: a queued job must not stop it from starting
        daemon = Daemon(share, "render")
        try:
            wait_for((share.inbox / "done" / "good.yaml").exists, 60, "the good job", daemon)
            wait_for(
                lambda: not any((share.inbox / ".claimed").iterdir()), 30, "the long name handled", daemon
            )
            assert daemon.proc.poll() is None
        finally:
            daemon.terminate()
    assert (share.inbox / "done" / "long-name.yaml").exists() or (
        share.inbox / "failed" / "long-name.yaml"
    ).exists()
