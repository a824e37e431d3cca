"""The render watcher as systemd runs it: sd_notify (READY, STATUS, WATCHDOG, STOPPING) to a real socket,
the watchdog going quiet while the pipeline makes no progress, SIGHUP reload, SIGTERM mid-render."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from daemon.samples import speech_like, write_audio, write_face_clip
from tests.e2e.harness import Daemon, Share, statuses, wait_for


class NotifySocket:
    """Listens where systemd would ($NOTIFY_SOCKET) and keeps every datagram with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._listen)
        self.thread.start()

    def _listen(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, line) for t, line in self.messages if line.startswith(prefix)]

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path):  # type: ignore[no-untyped-def]
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def service_daemon(share: Share, notify: NotifySocket) -> Daemon:
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    os.environ.update(env)
    try:
        return Daemon(share, "render")
    finally:
        for key in env:
            os.environ.pop(key)


def test_ready_status_watchdog_stall_and_stopping(tmp_path: Path, notify: NotifySocket) -> None:
    share = Share(tmp_path / "shared", {"service": {"stall_after": "0.3s"}})
    write_face_clip(share.inbox / "media" / "face.mp4", 1.0, 25, (128, 128))
    write_audio(share.inbox / "media" / "long.wav", speech_like(240.0))
    daemon = service_daemon(share, notify)
    wait_for(lambda: notify.lines("READY=1"), 60, "READY=1", daemon)
    wait_for(lambda: len(notify.lines("WATCHDOG=1")) >= 3, 10, "watchdog pings while idle", daemon)
    assert any("0 queued · idle" in line for _, line in notify.lines("STATUS="))
    share.drop("long.yaml", {"audio": "media/long.wav", "videos": ["media/face.mp4"]})
    # Decoding 4 minutes of audio and computing its mel is one step with no heartbeat in it: longer than
    # stall_after, so the pings stop (systemd would restart a daemon stuck like that for WatchdogSec)
    # and STATUS says why; once rendering beats again, the pings resume.
    wait_for(lambda: notify.lines("STATUS=stalled"), 60, "the stall reported", daemon)
    stalled_at = notify.lines("STATUS=stalled")[0][0]
    wait_for(
        lambda: [t for t, line in notify.lines("WATCHDOG=1") if t > stalled_at], 60, "pings resume", daemon
    )
    wait_for(
        lambda: any("rendering long" in line for _, line in notify.lines("STATUS=")), 30, "progress", daemon
    )
    assert daemon.terminate() == 0
    assert notify.lines("STOPPING=1")
    assert "pipeline" in notify.lines("STATUS=stalled")[0][1]
    pings = [t for t, _ in notify.lines("WATCHDOG=1")]
    assert max(b - a for a, b in itertools.pairwise(pings)) > 0.3
    events = [e["event"] for e in daemon.events()]
    assert "watchdog_stalled" in events
    assert "watchdog_recovered" in events


def test_sighup_reloads_and_refuses_a_bad_config(tmp_path: Path) -> None:
    share = Share(tmp_path / "shared")
    daemon = Daemon(share, "render")
    wait_for(lambda: any(e["event"] == "render_ready" for e in daemon.events()), 60, "ready", daemon)
    good = yaml.safe_load(share.config.read_text())
    share.config.write_text("render: {batch_size: -3}\n")
    daemon.proc.send_signal(signal.SIGHUP)
    refused = wait_for(
        lambda: [e for e in daemon.events() if e["event"] == "config_reload_refused"], 20, "refusal", daemon
    )
    assert "render.batch_size" in refused[0]["error"]
    good["render"]["batch_size"] = 4
    share.config.write_text(yaml.safe_dump(good))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(e["event"] == "config_reloaded" for e in daemon.events()), 20, "reload", daemon)
    assert daemon.proc.poll() is None
    assert daemon.terminate() == 0


def test_sigterm_mid_render_requeues_and_a_restart_finishes(tmp_path: Path, media: dict[str, Path]) -> None:
    share = Share(tmp_path / "shared")
    for name in ("face", "long_speech"):
        shutil.copy(media[name], share.inbox / "media")
    daemon = Daemon(share, "render")
    share.drop("term.yaml", {"audio": "media/long.wav", "videos": ["media/anchor.mp4"]})
    wait_for(lambda: statuses(share.links("term")) == ["rendering"], 60, "rendering", daemon)
    assert daemon.terminate() == 0
    assert statuses(share.links("term")) == ["queued"]
    assert sorted(p.name for p in (share.outputs / "term").iterdir()) == ["links.html", "links.json"]
    daemon = Daemon(share, "render")
    try:
        wait_for(lambda: statuses(share.links("term")) == ["rendered"], 120, "rendered after restart", daemon)
    finally:
        daemon.terminate()


def test_storage_with_external_s3_reports_ready_and_ends_cleanly(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """lipsyncd-storage.service is in the target even when storage.endpoint_url names external S3: there
    it says READY with the reason and exits 0, so systemd neither fails the start nor restarts it. From a
    terminal the same command is refused (exit 1) with the reason."""
    share = Share(tmp_path / "shared", {"storage": {"endpoint_url": "http://127.0.0.1:9"}})
    terminal = share.lipsyncd("storage", timeout=60)
    assert terminal.returncode == 1
    assert "storage.endpoint_url is set" in terminal.stderr
    os.environ["NOTIFY_SOCKET"] = str(notify.path)
    try:
        unit = share.lipsyncd("storage", timeout=60)
    finally:
        os.environ.pop("NOTIFY_SOCKET")
    assert unit.returncode == 0, unit.stderr
    assert notify.lines("READY=1")
    assert any("no embedded storage to run" in line for _, line in notify.lines("STATUS="))
