"""`lipsyncd run`: the embedded storage and both watchers as child processes of one command (the quick
start; under systemd they are separate units). It supervises them: a child that dies is named in the log
and started again after a backoff, and on exit everything it started is stopped, the watchers first and
the storage last (so uploads in flight end before their server does).

The children run in sessions of their own, so a Ctrl-C in the terminal reaches only this process, which
passes one SIGTERM to each child; a child's own signal handling never sees the same stop twice."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

EXIT_CONFIG = 78  # a child refused the configuration: starting it again cannot help
EXIT_IN_USE = 75  # a child found another instance running: starting it again cannot help
FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long before dying starts again at the first backoff
STOP_TIMEOUT_S = 60.0  # after SIGTERM, SIGKILL (the storage drains for up to 20 s)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], bool] | None = None  # the next child starts once this is true (or 30 s passed)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = FIRST_BACKOFF_S
    due: float = 0.0  # when to start it (again)
    restarts: int = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
        self.started = time.monotonic()
        log.info("child_started", child=self.name, pid=self.proc.pid, restarts=self.restarts)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    children: list[Child]
    stop: threading.Event
    reload: threading.Event = field(default_factory=threading.Event)

    def run(self) -> int:
        try:
            for child in self.children:
                child.start()
                self._wait_ready(child)
            while not self.stop.wait(0.2):
                if self.reload.is_set():
                    self.reload.clear()
                    self._signal_all(signal.SIGHUP)
                final = self._tend()
                if final is not None:
                    return final
            return 0
        finally:
            self._stop_all()

    def _wait_ready(self, child: Child, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while child.ready is not None and not child.ready() and child.alive and time.monotonic() < deadline:
            if self.stop.wait(0.1):
                return

    def _tend(self) -> int | None:
        """Restart children that died; an exit code restarting cannot fix ends the whole run."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if now >= child.due:
                    child.start()
                continue
            code = child.proc.poll()
            if code is None:
                continue
            if code in (EXIT_CONFIG, EXIT_IN_USE):
                log.error("child_refused_to_run", child=child.name, exit_code=code, action="stopping all")
                return code
            self._schedule_restart(child, code, now)
        return None

    def _schedule_restart(self, child: Child, code: int, now: float) -> None:
        if now - child.started >= HEALTHY_AFTER_S:
            child.backoff = FIRST_BACKOFF_S
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        log.error(
            "child_died",
            child=child.name,
            pid=child.proc.pid if child.proc else None,
            how=how,
            restart_in_s=child.backoff,
        )
        child.proc, child.due = None, now + child.backoff
        child.backoff = min(child.backoff * 2, MAX_BACKOFF_S)
        child.restarts += 1

    def _signal_all(self, signum: int) -> None:
        for child in self.children:
            if child.alive:
                assert child.proc is not None
                child.proc.send_signal(signum)

    def _stop_all(self) -> None:
        """Watchers first (they may still need the storage), the storage last."""
        for group in (
            [c for c in self.children if c.name != "storage"],
            [c for c in self.children if c.name == "storage"],
        ):
            for child in group:
                if child.alive:
                    assert child.proc is not None
                    child.proc.send_signal(signal.SIGTERM)
            for child in group:
                _wait_or_kill(child)


def _wait_or_kill(child: Child) -> None:
    if child.proc is None:
        return
    try:
        child.proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.error("child_stop_timeout", child=child.name, pid=child.proc.pid, seconds=STOP_TIMEOUT_S)
        child.proc.kill()
        child.proc.wait()
    log.info("child_stopped", child=child.name, exit_code=child.proc.returncode)


def run_once(base: Sequence[str]) -> int:
    """Render what the inbox holds, then upload what that produced."""
    for name in ("render", "upload"):
        code = subprocess.run([*base, name, "--once"]).returncode
        if code != 0:
            return code
    return 0
