"""Signal handling that cannot block.

A Python signal handler runs in the main thread between two bytecodes, possibly while that thread holds
a lock the handler wants: `threading.Event.set()` from a handler deadlocks when the signal lands inside
another `set()` or `wait()` of the same event (seen when Ctrl-C reached a watcher twice). So the handler
here does nothing at all: Python's C-level handler writes the signal number to a wakeup socket
(`signal.set_wakeup_fd`), and an ordinary thread reads it and runs the callbacks, where taking locks is
safe. Repeated signals simply run the callbacks again.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


def _ignore(_signum: int, _frame: object) -> None:
    """Installed so the C handler runs (it writes the wakeup byte); the work happens in the relay thread."""


class SignalRelay:
    """Install once per process, from the main thread: `relay = SignalRelay.install()`, then
    `relay.on(SIGTERM, stop.set)` for each signal."""

    def __init__(self) -> None:
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(True)
        self._writer.setblocking(False)
        self._thread = threading.Thread(target=self._relay, name="signal-relay", daemon=True)

    @classmethod
    def install(cls) -> SignalRelay:
        relay = cls()
        signal.set_wakeup_fd(relay._writer.fileno(), warn_on_full_buffer=False)
        relay._thread.start()
        return relay

    def on(self, signum: int, callback: Callable[[], None]) -> None:
        self._callbacks[signum] = callback
        signal.signal(signum, _ignore)

    def _relay(self) -> None:
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                callback = self._callbacks.get(signum)
                if callback is None:
                    continue
                try:
                    callback()
                except Exception:  # a failing callback must not end signal handling for the process
                    log.exception("signal_callback_failed", signal=signal.Signals(signum).name)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the supervising parent dies (even by kill -9), so `lipsyncd run`
    never leaves orphaned watchers behind. Linux only; elsewhere a no-op."""
    import ctypes
    import os

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
