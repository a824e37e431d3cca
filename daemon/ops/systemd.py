"""sd_notify written out, and a watchdog that pings systemd only while every worker thread is alive.

The protocol (sd_notify(3)) is one datagram of `KEY=VALUE` lines to the AF_UNIX socket named by
$NOTIFY_SOCKET; a leading `@` means an abstract socket. No dependency needed.

Typical use by a daemon (the CLI reads the environment and passes it in):

    notifier = Notifier.from_environ(os.environ, unset=True)
    pipeline_beat = Heartbeat("pipeline", stall_after=300)
    interval = watchdog_interval(os.environ)
    dog = HealthWatchdog(notifier, [inbox_beat, pipeline_beat], interval) if interval else None
    ... start watchers and storage ...; dog and dog.start(); notifier.ready("idle")
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


def _address(name: str) -> str | bytes:
    """NOTIFY_SOCKET value to a socket address: '@name' is Linux's abstract namespace."""
    return b"\0" + name[1:].encode() if name.startswith("@") else name


def _line(key: str, value: object) -> str:
    text = "1" if value is True else "0" if value is False else str(value)
    return f"{key}={' '.join(text.splitlines())}"  # a value may not span lines


class Notifier:
    """Sends sd_notify messages; a no-op (returning False) when not started by systemd."""

    def __init__(self, socket_name: str | None) -> None:
        self._name = socket_name or None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str], *, unset: bool = False) -> Notifier:
        """unset=True removes NOTIFY_SOCKET so child processes (SeaweedFS) cannot speak for the unit."""
        name = environ.pop("NOTIFY_SOCKET", None) if unset else environ.get("NOTIFY_SOCKET")
        return cls(name)

    @property
    def enabled(self) -> bool:
        return self._name is not None

    def notify(self, **fields: object) -> bool:
        """Send KEY=VALUE fields in one datagram; True when it was sent."""
        if self._name is None:
            return False
        payload = "\n".join(_line(k, v) for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, _address(self._name))
        except OSError as exc:
            self._warn_once(exc)
            return False
        return True

    def _warn_once(self, exc: OSError) -> None:
        if not self._warned:  # the watchdog would otherwise repeat this every few seconds
            self._warned = True
            log.warning("sd_notify_failed", socket=self._name, error=str(exc))

    def ready(self, status: str | None = None) -> bool:
        """Call once the watchers (and storage) are up, and again after a reload completes."""
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def reloading(self) -> bool:
        """systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 to tell this reload from older ones."""
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (EXTEND_TIMEOUT_USEC), e.g. while a batch checkpoints."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))


def notify(**fields: object) -> bool:
    """One-shot sd_notify to $NOTIFY_SOCKET of this process, like sd_notify(0, ...)."""
    return Notifier(os.environ.get("NOTIFY_SOCKET")).notify(**fields)


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """WatchdogSec= in seconds when systemd expects pings from this process, else None."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1_000_000


class HeartbeatSource(Protocol):
    """Anything the HealthWatchdog can watch."""

    @property
    def name(self) -> str: ...

    @property
    def stall_after(self) -> float: ...

    def last_beat(self) -> float: ...


class Heartbeat:
    """A worker thread calls beat() from its loop (per batch when busy, per idle tick when idle).

    beat(within=...) announces a known long step (loading a model, building a TensorRT engine): the
    next beat may come that much later before the worker counts as stalled.
    """

    def __init__(self, name: str, stall_after: float, *, clock: Clock = time.monotonic) -> None:
        self._name = name
        self._default = stall_after
        self._allowance = stall_after
        self._clock = clock
        self._last = clock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def stall_after(self) -> float:
        return self._allowance

    def beat(self, within: float | None = None) -> None:
        # Two plain attribute writes; readers tolerate seeing either order.
        self._allowance = self._default if within is None else max(within, self._default)
        self._last = self._clock()

    def last_beat(self) -> float:
        return self._last


def stalled_sources(sources: Sequence[HeartbeatSource], now: float) -> list[str]:
    """Names of the sources that have been silent for longer than they are allowed."""
    return [s.name for s in sources if now - s.last_beat() > s.stall_after]


class HealthWatchdog(threading.Thread):
    """Sends WATCHDOG=1 every interval/2 while every source beats; stops pinging while one is stalled.

    systemd then kills and restarts the unit after WatchdogSec= (Restart=on-failure). Stop with stop().
    """

    def __init__(
        self,
        notifier: Notifier,
        sources: Sequence[HeartbeatSource],
        interval: float,
        *,
        stop_event: threading.Event | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(name="health-watchdog", daemon=True)
        self._notifier = notifier
        self._sources = list(sources)
        self._period = interval / 2
        self._stop_event = stop_event or threading.Event()
        self._clock = clock
        self._stalled: list[str] = []

    def run(self) -> None:
        self.check()
        while not self._stop_event.wait(self._period):
            self.check()

    def stop(self) -> None:
        self._stop_event.set()

    def check(self) -> bool:
        """One round: ping if healthy; log (once) when a source stalls or recovers. True when pinged."""
        stalled = stalled_sources(self._sources, self._clock())
        if stalled != self._stalled:
            self._report(stalled)
        self._stalled = stalled
        return False if stalled else self._notifier.watchdog()

    def _report(self, stalled: list[str]) -> None:
        if stalled:
            log.error("watchdog_stalled", sources=stalled)
            self._notifier.status(f"stalled: {', '.join(stalled)} not responding; systemd will restart")
        else:
            log.info("watchdog_recovered", sources=self._stalled)
