"""The worker registry, kept up to date by each worker process: a row in the store registered at start,
beaten every few seconds from a thread of its own (the render loop is busy for minutes inside one video),
and marked stopped on a clean stop. A worker killed outright keeps its running row with an old beat:
`lipsyncd hosts` calls it stale once no beat came for more than three lease periods."""

from __future__ import annotations

import contextvars
import os
import threading
from dataclasses import dataclass

import structlog

from daemon.lease import host_name
from daemon.store import JobStore

log = structlog.get_logger(__name__)

BEAT_EVERY_S = 5.0  # one write per beat: a few per minute per worker, whatever the frame rate
STALE_LEASES = 3  # no beat for this many lease periods: the worker is gone (or cut off)


def beat_period(lease_s: float) -> float:
    """Every few seconds, and always several times per lease, so a live worker never looks stale."""
    return min(BEAT_EVERY_S, lease_s / 3)


@dataclass
class Presence:
    """One worker's row in the registry, and the thread that beats it."""

    store: JobStore
    name: str
    kind: str
    every_s: float

    def __post_init__(self) -> None:
        self._done = threading.Event()
        context = contextvars.copy_context()  # its log lines carry the worker
        self._thread = threading.Thread(target=context.run, args=(self._beat,), name="presence", daemon=True)

    @classmethod
    def start(cls, store: JobStore, name: str, kind: str, lease_s: float) -> Presence:
        presence = cls(store, name, kind, beat_period(lease_s))
        try:
            store.register_worker(name, host_name(), kind, os.getpid())
        except Exception as exc:  # noqa: BLE001 - a busy store: the first beat registers nothing, say so
            log.warning("worker_not_registered", reason=f"{type(exc).__name__}: {exc}")
        else:
            log.info("worker_registered", kind=kind, pid=os.getpid(), beat_every_s=presence.every_s)
        presence._thread.start()
        return presence

    def _beat(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                self.store.worker_beat(self.name)
            except Exception as exc:  # noqa: BLE001 - a busy or full store: try again at the next beat
                log.warning("worker_beat_failed", reason=f"{type(exc).__name__}: {exc}")

    def stop(self, *, clean: bool) -> None:
        """Stop beating; a clean stop marks the row stopped (a failed one leaves it to turn stale)."""
        self._done.set()
        self._thread.join(timeout=self.every_s + 5)
        if not clean:
            return
        try:
            self.store.worker_stopped(self.name)
        except Exception as exc:  # noqa: BLE001 - the row turns stale instead: said, not fatal
            log.warning("worker_not_marked_stopped", reason=f"{type(exc).__name__}: {exc}")
