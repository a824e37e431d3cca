"""Faults from outside, injected for real into real daemon processes: storage that stops answering, an
outputs disk that fills up, a job store locked by another program or on a read-only filesystem, a webhook
endpoint that accepts and never answers.

LIPSYNCD_OUTAGE_SECONDS sets how long the storage stays unreachable (default 10; 60 for the full minute).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.distribute.embedded import EmbeddedS3
from tests.e2e import sandbox
from tests.e2e.harness import Daemon, Share, statuses, wait_for

OUTAGE_S = float(os.environ.get("LIPSYNCD_OUTAGE_SECONDS", "10"))
FAST_INBOX = {"settle_time": "0.3s", "rescan_interval": "2s"}


def job(distribute: bool = False, **extra: Any) -> dict[str, Any]:
    return {"audio": "media/voice.wav", "videos": ["media/face.mp4"], "distribute": distribute, **extra}


def done(share: Share, name: str) -> Any:
    return (doc := share.links(name)) and doc["status"] in ("done", "partial", "failed") and doc


class LinksReader(threading.Thread):
    """Reads every links.json under the outputs over and over, as a user's script would, and keeps any
    document that was not valid JSON."""

    def __init__(self, outputs: Path) -> None:
        super().__init__(name="links-reader", daemon=True)
        self.outputs, self.bad, self.reads = outputs, list[str](), 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for path in self.outputs.glob("*/links.json"):
                self._read(path)
            time.sleep(0.005)

    def _read(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return
        self.reads += 1
        try:
            json.loads(text)
        except ValueError:
            self.bad.append(f"{path}: {text[:200]!r}")

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)


@pytest.fixture
def reader() -> Iterator[Callable[[Path], LinksReader]]:
    started: list[LinksReader] = []

    def start(outputs: Path) -> LinksReader:
        started.append(LinksReader(outputs))
        started[-1].start()
        return started[-1]

    yield start
    for thread in started:
        thread.stop()


# -- storage unreachable -----------------------------------------------------------------------------


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


@contextlib.contextmanager
def unreachable(embedded_s3: EmbeddedS3, how: str) -> Iterator[None]:
    """hung: the server is frozen (SIGSTOP): connections open and nothing answers, as behind a dead link.
    refused: the server is gone (killed): connections are refused. Restored on exit either way."""
    weed = embedded_s3._proc
    assert weed is not None
    if how == "hung":
        os.kill(weed.pid, signal.SIGSTOP)
    else:
        embedded_s3.kill()
    try:
        yield
    finally:
        if how == "hung":
            os.kill(weed.pid, signal.SIGCONT)
        elif not embedded_s3.running:
            embedded_s3.start()


def waiting_for_upload(share: Share, name: str) -> bool:
    return statuses(share.links(name)) in (["rendered"], ["uploading"])


def object_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.mark.parametrize("how", ["hung", "refused"])
def test_storage_unreachable_uploads_wait_and_resume_while_rendering_goes_on(
    tmp_path: Path,
    embedded_s3: EmbeddedS3,
    external: dict[str, Any],
    s3_client: Any,
    how: str,
    record_property: Callable[[str, object], None],
) -> None:
    share = Share(tmp_path / "shared", {"storage": external, "inbox": FAST_INBOX})
    sandbox.tiny_media(share.inbox / "media")
    names = ("early", "late")
    render, upload = Daemon(share, "render"), Daemon(share, "upload")
    try:
        sandbox.ready(upload, "upload_ready")
        with unreachable(embedded_s3, how):
            began = time.monotonic()
            for name in names:
                share.drop(f"{name}.yaml", job(distribute=True))
                wait_for(functools.partial(waiting_for_upload, share, name), 60, name, render)
            rendered_during = time.monotonic() - began
            time.sleep(max(0.0, OUTAGE_S - rendered_during))
            waiting = all(waiting_for_upload(share, n) for n in names)
            local = all((share.outputs / n / "face.mp4").exists() for n in names)
            alive = upload.proc.poll() is None
        back = time.monotonic()
        docs = [
            wait_for(functools.partial(done, share, n), 180, f"{n} after the outage", upload) for n in names
        ]
        recovered = time.monotonic() - back
    finally:
        render.terminate()
        upload.terminate()
    figures = {
        "outage_s": OUTAGE_S,
        "rendered_in_s": round(rendered_during, 1),
        "ready_after_s": round(recovered, 1),
    }
    print(f"\nstorage {how}: {figures}")
    record_property(f"storage_{how}", figures)
    assert rendered_during < OUTAGE_S, "rendering must go on while the storage is unreachable"
    assert waiting, "uploads wait (nothing ready, local copies kept, watcher alive)"
    assert local, "uploads wait (nothing ready, local copies kept, watcher alive)"
    assert alive, "uploads wait (nothing ready, local copies kept, watcher alive)"
    expected = sorted(d["videos"][0]["object_key"] for d in docs)
    assert object_keys(s3_client, external["bucket"], external["prefix"]) == expected, "one object per video"
    for doc in docs:
        video = doc["videos"][0]
        assert video["status"] == "ready"
        assert hashlib.sha256(fetch(video["url"])).hexdigest() == video["sha256"]


# -- outputs disk full --------------------------------------------------------------------------------


def published_videos(outputs: Path) -> list[Path]:
    return [p for p in outputs.rglob("*.mp4") if not p.name.startswith(".")]


def test_outputs_disk_full_fails_the_video_clearly_and_the_next_job_renders(
    tmp_path: Path, reader: Callable[[Path], LinksReader]
) -> None:
    """Room for links.json but not for the video: the render fails with the disk's reason in plain words,
    no partial file is left under any name, links.json stays valid, and once space is back the next job
    renders."""
    if not sandbox.can_mount(tmp_path):
        pytest.skip("needs root to mount a small tmpfs as the outputs disk")
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX})
    sandbox.tiny_media(share.inbox / "media")
    from daemon.samples import write_face_clip

    write_face_clip(share.inbox / "media" / "big.mp4", 2.0, 25, (256, 256))  # ~50 KB rendered
    with sandbox.tmpfs(share.outputs, "1m") as outputs:
        filler = sandbox.fill(outputs, leave=16 << 10)
        links = reader(outputs)
        daemon = Daemon(share, "render")
        try:
            sandbox.ready(daemon)
            share.drop("full.yaml", {"audio": "media/voice.wav", "videos": ["media/big.mp4"]})
            failed = wait_for(lambda: done(share, "full"), 60, "the job on a full disk ends", daemon)
            assert published_videos(outputs) == []
            assert list(outputs.rglob(".*.part.mp4")) == []
            filler.unlink()
            share.drop("next.yaml", job())
            after = wait_for(lambda: done(share, "next"), 60, "the next job renders", daemon)
            alive = daemon.proc.poll() is None
        finally:
            assert daemon.terminate() == 0
            links.stop()
    error = failed["videos"][0]["error"]
    print(f"\ndisk full: job {failed['status']}, video error: {error!r}")
    assert failed["status"] == "failed"
    assert failed["videos"][0]["status"] == "failed"
    assert "full" in error, "the reason must say the disk is full and what to do"
    assert "free" in error, "the reason must say the disk is full and what to do"
    assert "internal error" not in error
    assert ".part.mp4" not in error
    assert "full" in (share.inbox / "failed" / "full.error.txt").read_text()
    assert alive
    assert statuses(after) == ["rendered"]
    assert links.bad == [], f"links.json must always be valid JSON: {links.bad[:3]}"
    assert links.reads > 0, f"links.json must always be valid JSON: {links.bad[:3]}"


def test_outputs_disk_completely_full_the_daemon_survives(
    tmp_path: Path, reader: Callable[[Path], LinksReader]
) -> None:
    """Not a byte left, not even for links.json: the job fails (its error file is in the inbox, on another
    disk), nothing is published, the watcher lives on and renders the next job once space is back."""
    if not sandbox.can_mount(tmp_path):
        pytest.skip("needs root to mount a small tmpfs as the outputs disk")
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX})
    sandbox.tiny_media(share.inbox / "media")
    with sandbox.tmpfs(share.outputs, "256k") as outputs:
        filler = sandbox.fill(outputs, leave=0)
        links = reader(outputs)
        daemon = Daemon(share, "render")
        try:
            sandbox.ready(daemon)
            share.drop("zero.yaml", job())
            report = share.inbox / "failed" / "zero.error.txt"
            wait_for(report.exists, 60, "the job on a full disk ends", daemon)
            assert published_videos(outputs) == []
            assert list(outputs.rglob(".*.part.mp4")) == []
            filler.unlink()
            share.drop("next.yaml", job())
            after = wait_for(lambda: done(share, "next"), 60, "the next job renders", daemon)
            alive = daemon.proc.poll() is None
        finally:
            assert daemon.terminate() == 0
            links.stop()
    assert "full" in report.read_text()
    assert sandbox.store_rows(share.state, "SELECT state FROM jobs WHERE id = 'zero'") == [("failed",)]
    assert alive
    assert statuses(after) == ["rendered"]
    assert links.bad == []


# -- the state database and directory at start ------------------------------------------------------


def start_fails(share: Share, wrapper: list[str], command: str, timeout: float) -> tuple[int, str, float]:
    daemon = sandbox.LaunchedDaemon(share, wrapper, command)
    began = time.monotonic()
    try:
        code = daemon.proc.wait(timeout=timeout)
    except Exception:
        daemon.kill9()
        raise
    return code, daemon.output(), time.monotonic() - began


def assert_one_plain_line(output: str) -> None:
    assert "Traceback" not in output, output[-1500:]
    assert output.strip().splitlines()[-1].startswith("lipsyncd: "), output[-800:]


def test_state_db_locked_by_another_process_at_start(tmp_path: Path) -> None:
    """`BEGIN EXCLUSIVE` in exclusive locking mode (in WAL mode a plain one still lets readers in): the
    render watcher gives up after its busy timeout with an error naming the database, and a non-zero exit
    status, which is what systemd acts on. The busy timeout is the configured one (2 s, not 30 s)."""
    share = Share(tmp_path / "shared", {"store": {"busy_timeout": "2s"}})
    assert share.lipsyncd("status").returncode == 0  # creates the store
    lock = sandbox.DbLock(share.state / "lipsyncd.db", exclusive_mode=True)
    try:
        code, output, seconds = start_fails(share, [], "render", timeout=90)
    finally:
        lock.release()
    print(
        f"\nlocked store: exit {code} after {seconds:.1f} s; last line: {output.strip().splitlines()[-1]!r}"
    )
    assert code != 0
    assert seconds < 20, "store.busy_timeout (2s) must bound the wait, not the 30 s default"
    assert_one_plain_line(output)
    assert "lipsyncd.db" in output
    assert "locked" in output
    assert "render_ready" not in output, "READY must not be announced without a usable store"


@pytest.mark.parametrize("existing", [False, True], ids=["empty", "with-store"])
@pytest.mark.parametrize("command", ["render", "upload"])
def test_state_dir_read_only_at_start(tmp_path: Path, command: str, existing: bool) -> None:
    if not sandbox.can_mount(tmp_path):
        pytest.skip("needs root with CAP_SYS_ADMIN for a read-only bind mount")
    share = Share(tmp_path / "shared")
    share.state.mkdir(mode=0o700)
    if existing:
        assert share.lipsyncd("status").returncode == 0
    code, output, _ = start_fails(share, sandbox.readonly_state_wrapper(share.state), command, timeout=60)
    print(f"\nread-only state ({command}, {'with store' if existing else 'empty'}): exit {code}")
    assert code != 0
    assert_one_plain_line(output)
    assert str(share.state) in output
    assert "writable" in output
    assert "_ready" not in output


def claimed(share: Share, name: str) -> bool:
    return (share.inbox / ".claimed" / name).exists()


def intake_errors(daemon: Daemon) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e["event"] == "intake_error"]


def test_store_locked_briefly_while_running_delays_the_job_only(tmp_path: Path) -> None:
    """A backup tool holds the store for a few seconds (shorter than the busy timeout): the manifest dropped
    meanwhile becomes a job once the lock is gone."""
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX, "store": {"busy_timeout": "20s"}})
    sandbox.tiny_media(share.inbox / "media")
    daemon = Daemon(share, "render")
    try:
        sandbox.ready(daemon)
        lock = sandbox.DbLock(share.state / "lipsyncd.db", exclusive_mode=False)
        try:
            share.drop("brief.yaml", job())
            wait_for(lambda: claimed(share, "brief.yaml"), 30, "the manifest claimed", daemon)
            time.sleep(1)  # the intake now waits on the lock
        finally:
            lock.release()
        doc = wait_for(lambda: done(share, "brief"), 60, "the job after the lock", daemon)
    finally:
        assert daemon.terminate() == 0
    assert statuses(doc) == ["rendered"]


def test_store_locked_past_the_busy_timeout_loses_no_manifest(tmp_path: Path) -> None:
    """Held longer than the store's busy timeout (set to 1 s): the claimed manifest becomes a job on a later
    rescan once the lock is gone (it used to stay in inbox/.claimed/ until a restart)."""
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX, "store": {"busy_timeout": "1s"}})
    sandbox.tiny_media(share.inbox / "media")
    daemon = Daemon(share, "render")
    try:
        sandbox.ready(daemon)
        lock = sandbox.DbLock(share.state / "lipsyncd.db", exclusive_mode=False)
        try:
            share.drop("stuck.yaml", job())
            wait_for(lambda: intake_errors(daemon), 30, "the intake giving up on the locked store", daemon)
        finally:
            lock.release()
        wait_for(lambda: done(share, "stuck"), 10, "the job after a long lock", daemon)
    finally:
        daemon.terminate()


# -- a webhook endpoint that hangs --------------------------------------------------------------------


def stamp(daemon: Daemon, event: str, job_name: str) -> float | None:
    for e in daemon.events():
        if e.get("event") == event and e.get("job") == job_name:
            return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
    return None


def upload_seconds(share: Share, name: str, render: Daemon, upload: Daemon) -> float:
    """From the render watcher's video_rendered to the upload watcher's video_ready, by their log times."""
    wait_for(lambda: statuses(share.links(name)) == ["ready"], 60, f"{name} ready", upload)
    # the view is written as the change commits, the log line just after: wait for that line too
    wait_for(lambda: stamp(upload, "video_ready", name), 10, f"{name}'s video_ready line", upload)
    rendered, ready = stamp(render, "video_rendered", name), stamp(upload, "video_ready", name)
    assert rendered is not None
    assert ready is not None
    return ready - rendered


def test_a_hanging_webhook_does_not_delay_uploads(
    tmp_path: Path, external: dict[str, Any], record_property: Callable[[str, object], None]
) -> None:
    hook = sandbox.HangingServer()
    share = Share(
        tmp_path / "shared",
        {"storage": external, "inbox": FAST_INBOX, "webhooks": {"stuck": {"kind": "json", "url": hook.url}}},
    )
    sandbox.tiny_media(share.inbox / "media")
    render, upload = Daemon(share, "render"), Daemon(share, "upload")
    try:
        sandbox.ready(upload, "upload_ready")
        share.drop("warm.yaml", job(distribute=True))
        baseline = upload_seconds(share, "warm", render, upload)
        share.drop("hooked.yaml", job(distribute=True, notify=["stuck"]))
        wait_for(lambda: done(share, "hooked"), 60, "hooked job distributed", upload)
        wait_for(lambda: hook.accepted, 10, "the webhook call that hangs")
        delayed = []
        for name in ("after-1", "after-2"):
            share.drop(f"{name}.yaml", job(distribute=True))
            delayed.append(upload_seconds(share, name, render, upload))
        hanging = len(hook.accepted)
        stop_began = time.monotonic()
        code = upload.terminate(timeout=60)
        stop_s = time.monotonic() - stop_began
    finally:
        render.terminate()
        upload.terminate()
        hook.close()
    figures = {
        "baseline_s": round(baseline, 2),
        "with_hook_hanging_s": [round(s, 2) for s in delayed],
        "stop_s": round(stop_s, 1),
    }
    print(f"\nhanging webhook: {figures}")
    record_property("hanging_webhook", figures)
    assert hanging >= 1
    assert code == 0
    assert max(delayed) <= baseline + 3.0, "uploads must not wait for a webhook"
    assert stop_s < 30, "a hanging webhook must not hold up a clean stop beyond the flush timeout"
