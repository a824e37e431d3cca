"""What the crash suite found, each as a small test that failed until the daemon was fixed (9147a9d):
A. a `.links.json.*.tmp` left by a writer killed mid-rewrite was never removed;
B. the local copy could be deleted while links.json still showed the video without a link;
C. a links.json older than the store (a kill between a commit and its rewrite) was never rewritten;
D. a manifest whose job was finished by a render killed before filing it stayed in inbox/.claimed.
E. the periodic rescan filed the manifest of a job the render thread was finishing, whose own filing then
   failed and marked the finished job failed (the long run found it in D's fix; now only the start-up
   recovery files finished jobs' manifests).

Two kinds of reproduction. Where a real part can hold the daemon at the crash point, the test kills it
there for real (B: the storage paused with SIGSTOP and the job's links.json lock held, exactly as another
writer would hold it; E: the job store's write lock and the links.json lock held in turn). Where the
crash window is a few milliseconds inside one function and nothing outside can widen it (A, C, D), the
test runs the real daemon to completion and then puts back the state that a SIGKILL in that window
leaves behind (a temp file, an older links.json, a manifest still in .claimed), as the suite saw it
happen; then it restarts the real daemon and checks that it recovers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from daemon.distribute.embedded import EmbeddedS3
from daemon.links import job_lock
from tests.e2e.crash import external_storage
from tests.e2e.crash_probe import store_write_lock
from tests.e2e.harness import Daemon, Share, statuses, wait_for


@pytest.fixture
def share(
    tmp_path: Path, media: dict[str, Path], embedded_s3: EmbeddedS3, s3_bucket: str, s3_prefix: str
) -> Share:
    storage = external_storage(tmp_path, embedded_s3, s3_bucket, s3_prefix)
    s = Share(tmp_path / "shared", {"storage": storage.section or {}})
    for name in ("face", "speech"):
        shutil.copy(media[name], s.inbox / "media")
    return s


def drop(share: Share, job: str, *, distribute: bool = True) -> None:
    share.drop(
        f"{job}.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"], "distribute": distribute}
    )


def video_state(share: Share, job: str) -> str | None:
    with sqlite3.connect(share.state / "lipsyncd.db", timeout=30) as db:
        row = db.execute("SELECT state FROM videos WHERE job_id = ?", (job,)).fetchone()
    return row[0] if row else None


def job_state(share: Share, job: str) -> str | None:
    with sqlite3.connect(share.state / "lipsyncd.db", timeout=30) as db:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone()
    return row[0] if row else None


def ready_event(daemon: Daemon) -> Any:
    return any(e["event"] == "upload_ready" for e in daemon.events())


def test_a_temp_file_of_a_killed_links_writer_is_cleaned_up(share: Share) -> None:
    drop(share, "temp")
    assert share.lipsyncd("render", "--once").returncode == 0
    # A SIGKILL inside daemon.links.write_json_atomic, after mkstemp and before os.replace, leaves this
    # (the suite saw it after kills of the upload watcher in a links.json rewrite).
    stale = share.outputs / "temp" / ".links.json.k1ll3d.tmp"
    stale.write_text('{\n  "version": 1,\n  "job": "te', encoding="utf-8")
    assert share.lipsyncd("upload", "--once").returncode == 0
    assert share.lipsyncd("render", "--once").returncode == 0
    assert share.links("temp")["status"] == "done"  # type: ignore[index]
    assert not stale.exists(), "a temp file is left where users look, after both watchers restarted"


def test_b_local_copy_kept_until_links_json_shows_the_link(share: Share, embedded_s3: EmbeddedS3) -> None:
    weed = embedded_s3._proc
    assert weed is not None
    local = share.outputs / "early" / "anchor.mp4"
    upload = Daemon(share, "upload")
    try:
        wait_for(lambda: ready_event(upload), 60, "upload watcher ready", upload)
        os.kill(weed.pid, signal.SIGSTOP)  # the upload starts, then waits on the storage
        drop(share, "early")
        assert share.lipsyncd("render", "--once").returncode == 0
        wait_for(lambda: statuses(share.links("early")) == ["uploading"], 60, "upload under way", upload)
        with job_lock(share.state / "locks", "early"):  # links.json writers wait for us from now on
            os.kill(weed.pid, signal.SIGCONT)
            wait_for(lambda: video_state(share, "early") == "ready", 60, "upload verified", upload)
            upload.kill9()  # between the READY commit and the links.json write that shows the link
            upload = Daemon(share, "upload")
            wait_for(lambda: ready_event(upload), 60, "upload watcher restarted", upload)
            deleted_early = _within(5.0, lambda: not local.exists())
            shown = statuses(share.links("early"))
        wait_for(lambda: (d := share.links("early")) and d["status"] == "done", 60, "job done", upload)
    finally:
        os.kill(weed.pid, signal.SIGCONT)
        upload.terminate()
    assert shown == ["uploading"]
    assert not deleted_early, "the local copy was deleted while links.json showed the video without a link"


def test_c_restart_rewrites_a_links_json_older_than_the_store(share: Share) -> None:
    drop(share, "stale")
    assert share.lipsyncd("run", "--once").returncode == 0
    path = share.outputs / "stale" / "links.json"
    older = json.loads(path.read_text(encoding="utf-8"))
    assert older["status"] == "done"
    # A SIGKILL between the store's DONE commit and the links.json write (UploadWatcher._finish_jobs)
    # leaves the view from just before it (the suite saw job crash-002 stay "rendered" this way).
    older["status"] = "rendered"
    path.write_text(json.dumps(older, indent=2), encoding="utf-8")
    assert share.lipsyncd("upload", "--once").returncode == 0
    assert share.lipsyncd("render", "--once").returncode == 0
    assert share.links("stale")["status"] == "done", "links.json still disagrees with the job store"  # type: ignore[index]


def test_d_manifest_filed_after_a_kill_between_job_commit_and_filing(share: Share) -> None:
    drop(share, "claimed", distribute=False)
    assert share.lipsyncd("render", "--once").returncode == 0
    done, claimed = share.inbox / "done" / "claimed.yaml", share.inbox / ".claimed" / "claimed.yaml"
    # A SIGKILL in RenderService._finish_job after set_job() and before inbox.file_done() leaves the job
    # finished in the store and its manifest in .claimed (the suite saw crash-000 stay there).
    os.rename(done, claimed)
    assert share.lipsyncd("render", "--once").returncode == 0
    assert done.exists(), "the manifest was never filed under done/"
    assert not claimed.exists(), "the manifest was never filed under done/"


def test_e_rescan_and_render_finishing_a_job_file_its_manifest_once(share: Share) -> None:
    share = Share(share.root, {**share.overrides, "inbox": {"rescan_interval": "0.5s"}})
    render = Daemon(share, "render")
    try:
        wait_for(lambda: any(e["event"] == "render_ready" for e in render.events()), 60, "render up", render)
        job, held = _hold_job_between_commit_and_filing(share, render)
        with held:
            # the render thread has committed the finished job and waits to write links.json, then to file
            # the manifest; the intake's rescans (every 0.5 s here: 4 of them) run meanwhile and must leave
            # it alone
            time.sleep(2.0)
            assert (share.inbox / ".claimed" / f"{job}.yaml").exists(), "a rescan filed a finishing job"
        wait_for(lambda: share.links(job)["status"] != "rendering", 30, "the render going on", render)  # type: ignore[index]
        time.sleep(1.0)
    finally:
        render.terminate()
    assert share.links(job)["status"] == "rendered", "a rendered job was marked failed"  # type: ignore[index]
    assert not [e for e in render.events() if e["event"] == "job_crashed"]
    assert not (share.inbox / "done" / f"{job}.2.yaml").exists()
    assert not any((share.inbox / "failed").iterdir())


def _hold_job_between_commit_and_filing(share: Share, render: Daemon) -> tuple[str, ExitStack]:
    """Drop a one-video job; when its video is rendered, take the store's write lock (the render thread's
    next commit, the job's, waits), then the job's links.json lock, then let the commit go: the render
    thread is left between the job's commit and filing its manifest. A new job if this one was too quick."""
    for attempt in range(5):
        job, held = f"race-{attempt}", ExitStack()
        drop(share, job)  # distributed: nothing uploads it here, so the job stays rendered once finished
        _within(60.0, lambda: video_state(share, job) == "rendered", every=0.0005)  # noqa: B023
        with store_write_lock(share.state) as locked:
            caught = locked and job_state(share, job) == "rendering"
            if caught:
                _within(10.0, lambda: statuses(share.links(job)) == ["rendered"])  # noqa: B023
                held.enter_context(job_lock(share.state / "locks", job))
        if caught:
            return job, held
        wait_for(lambda: job_state(share, job) == "rendered", 60, "the job the lever missed", render)  # noqa: B023
    pytest.fail("could not catch a job between its commit and its filing in 5 tries")


def _within(seconds: float, predicate: Any, every: float = 0.01) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
