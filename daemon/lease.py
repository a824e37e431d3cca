"""A worker's claim, kept alive: the heartbeat renews the lease of the video it works on, and says when
the claim was lost. Shared by render and upload workers (the store does the fencing)."""

from __future__ import annotations

import contextvars
import socket
import threading

import structlog

from daemon.store import Claim, JobStore, Video

log = structlog.get_logger(__name__)

__all__ = ["Heartbeat", "host_name", "set_host_name", "worker_name"]

_host: str | None = None  # service.host_name, set once at process start


class Heartbeat:
    """Renews a claimed video's lease every third of it, from a thread of its own, while the render runs.
    When a renewal finds the claim gone (this worker was paused or cut off past its lease and another took
    the video), `lost` is set and the render stops at its next look."""

    def __init__(self, store: JobStore, video: Video, claim: Claim, lease_s: float) -> None:
        self.store, self.video, self.claim, self.lease_s = store, video, claim, lease_s
        self.lost = threading.Event()
        self._done = threading.Event()
        context = contextvars.copy_context()  # its log lines carry the worker, job and video
        self._thread = threading.Thread(target=context.run, args=(self._beat,), name="lease", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=self.lease_s)

    def _beat(self) -> None:
        while not self._done.wait(self.lease_s / 3):
            try:
                if not self.store.renew(self.video.job_id, self.video.output, self.claim, self.lease_s):
                    self.lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 - a busy or full store: try again at the next beat
                log.warning("lease_not_renewed", reason=f"{type(exc).__name__}: {exc}")


def worker_name(kind: str, slot: int | str) -> str:
    """host:kind@slot, the name a worker's claims, log lines and links.json carry."""
    return f"{host_name()}:{kind}@{slot}"


def host_name() -> str:
    """This host's name, as worker names, the worker registry and every log line (HOST) carry it:
    service.host_name, else the machine's hostname."""
    return _host or socket.gethostname()


def set_host_name(name: str | None) -> None:
    """Called once at process start with service.host_name (None: the machine's hostname)."""
    global _host
    _host = name
