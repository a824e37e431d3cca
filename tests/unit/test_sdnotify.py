"""sd_notify against real AF_UNIX datagram sockets bound by the test (a path and an abstract name)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.ops.systemd import (
    HealthWatchdog,
    Heartbeat,
    Notifier,
    notify,
    stalled_sources,
    watchdog_interval,
)


class Listener:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name  # what NOTIFY_SOCKET would hold

    def receive(self, timeout: float = 2.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def drain(self) -> list[dict[str, str]]:
        messages = []
        while True:
            try:
                messages.append(self.receive(timeout=0.05))
            except TimeoutError:
                return messages


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address: str | bytes = str(tmp_path / "notify.sock")
        name = str(address)
    else:
        name = f"@lipsyncd-test-{uuid.uuid4().hex}"
        address = b"\0" + name[1:].encode()
    sock.bind(address)
    with sock:
        yield Listener(sock, name)


def test_lifecycle_messages_arrive(listener: Listener) -> None:
    notifier = Notifier(listener.name)
    assert notifier.ready("idle")
    assert listener.receive() == {"READY": "1", "STATUS": "idle"}
    assert notifier.status("2 queued · rendering spring-promo 45%")
    assert listener.receive() == {"STATUS": "2 queued · rendering spring-promo 45%"}
    assert notifier.watchdog()
    assert listener.receive() == {"WATCHDOG": "1"}
    assert notifier.stopping("finishing batch")
    assert listener.receive() == {"STOPPING": "1", "STATUS": "finishing batch"}


def test_reloading_carries_monotonic_time(listener: Listener) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier(listener.name).reloading()
    message = listener.receive()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= before + 5_000_000


def test_status_is_kept_on_one_line(listener: Listener) -> None:
    Notifier(listener.name).status("line one\nline two")
    assert listener.receive() == {"STATUS": "line one line two"}


def test_extend_timeout_in_microseconds(listener: Listener) -> None:
    Notifier(listener.name).extend_timeout(30)
    assert listener.receive() == {"EXTEND_TIMEOUT_USEC": "30000000"}


def test_module_notify_reads_this_process_environment(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    assert notify(READY=True)
    assert listener.receive() == {"READY": "1"}


def test_without_systemd_nothing_is_sent() -> None:
    assert not Notifier(None).enabled
    assert not Notifier(None).ready()
    assert not Notifier.from_environ({}).watchdog()


def test_from_environ_can_hide_the_socket_from_children() -> None:
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    assert Notifier.from_environ(environ, unset=True).enabled
    assert "NOTIFY_SOCKET" not in environ


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert not Notifier(str(tmp_path / "gone.sock")).watchdog()


def test_watchdog_interval_from_environment() -> None:
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 60.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # not ours
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_check_pings_only_while_every_source_beats(listener: Listener) -> None:
    clock = ManualClock()
    inbox, pipeline = Heartbeat("inbox", 10, clock=clock), Heartbeat("pipeline", 30, clock=clock)
    dog = HealthWatchdog(Notifier(listener.name), [inbox, pipeline], interval=20, clock=clock)
    assert dog.check()
    assert listener.receive() == {"WATCHDOG": "1"}
    clock.now += 15  # inbox silent for 15 s > 10 s allowed
    pipeline.beat()
    assert stalled_sources([inbox, pipeline], clock.now) == ["inbox"]
    assert not dog.check()
    assert "stalled: inbox" in listener.receive()["STATUS"]
    inbox.beat()
    assert dog.check()
    assert listener.receive() == {"WATCHDOG": "1"}


def test_announced_long_step_is_not_a_stall() -> None:
    clock = ManualClock()
    beat = Heartbeat("pipeline", 30, clock=clock)
    beat.beat(within=600)  # e.g. building a TensorRT engine
    clock.now += 300
    assert stalled_sources([beat], clock.now) == []
    beat.beat()  # back to the normal allowance
    clock.now += 31
    assert stalled_sources([beat], clock.now) == ["pipeline"]


def test_watchdog_thread_stops_when_the_pipeline_wedges_and_resumes(listener: Listener) -> None:
    beat = Heartbeat("pipeline", stall_after=0.3)
    wedged = threading.Event()
    done = threading.Event()

    def worker() -> None:  # a real worker loop: beats per "batch" unless wedged
        while not done.wait(0.05):
            if not wedged.is_set():
                beat.beat()

    threads = [threading.Thread(target=worker), HealthWatchdog(Notifier(listener.name), [beat], interval=0.1)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.4)
        assert any("WATCHDOG" in m for m in listener.drain())
        wedged.set()
        time.sleep(0.6)
        listener.drain()  # pings sent before the stall was noticed
        time.sleep(0.4)
        assert not any("WATCHDOG" in m for m in listener.drain())
        wedged.clear()
        time.sleep(0.4)
        assert any("WATCHDOG" in m for m in listener.drain())
    finally:
        done.set()
        threads[1].stop()  # type: ignore[attr-defined]
        for thread in threads:
            thread.join(timeout=2)
    assert not any(t.is_alive() for t in threads)
