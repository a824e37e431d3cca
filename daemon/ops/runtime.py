"""What a long-running watcher needs from its service manager, in one object: heartbeats for each loop,
the sd_notify watchdog that pings only while they all beat, and a STATUS= line refreshed every second."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.ops.metrics import MetricsFile
from daemon.ops.systemd import HealthWatchdog, Heartbeat, Notifier

STATUS_EVERY = 1.0  # seconds between STATUS= updates


@dataclass
class ServiceRuntime:
    notifier: Notifier
    stop: threading.Event
    watchdog_interval: float | None = None
    stall_after: float = 300.0
    metrics: MetricsFile | None = None  # the textfile the reconciler rewrites (service.metrics_dir)
    beats: dict[str, Heartbeat] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)

    def heartbeat(self, name: str) -> Callable[[], None]:
        """A beat function for one loop; each loop must call it per unit of progress or idle tick."""
        beat = self.beats.setdefault(name, Heartbeat(name, self.stall_after))
        return beat.beat

    def ready(self, describe: Callable[[], str]) -> None:
        """Everything is up: start the watchdog and the status line, then tell systemd READY=1."""
        if self.watchdog_interval:
            beats = list(self.beats.values())
            self._start(HealthWatchdog(self.notifier, beats, self.watchdog_interval, stop_event=self.stop))
        status = threading.Thread(target=self._status_loop, args=(describe,), name="sd-status", daemon=True)
        self._start(status)
        self.notifier.ready(describe())

    def _start(self, thread: threading.Thread) -> None:
        thread.start()
        self._threads.append(thread)

    def _status_loop(self, describe: Callable[[], str]) -> None:
        last = ""
        while not self.stop.wait(STATUS_EVERY):
            try:
                text = describe()
            except Exception:  # noqa: BLE001, S112 - the store out of reach for a moment: the line waits
                continue
            if text != last:
                self.notifier.status(text)
                last = text

    def stopping(self, why: str) -> None:
        self.notifier.stopping(why)

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
