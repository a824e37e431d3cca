"""One of a kind per state directory: `run`, the render and upload watchers and the embedded storage each
hold an exclusive lock (flock) for as long as they live. The kernel drops it when the process dies, even
by kill -9, so there is never a stale lock to clean up, and a second copy is refused in plain words
naming the first one. The state directory is local by design (flock over NFS or SMB is unreliable)."""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path


class AlreadyRunning(Exception):
    """Another process holds the lock; the message names it and says how to stop it."""


class LockUnusable(Exception):
    """The lock file cannot be made (a read-only or missing state directory): said in plain words."""


@dataclass
class InstanceLock:
    path: Path
    fd: int

    @classmethod
    def try_acquire(cls, path: Path, role: str) -> InstanceLock | None:
        """The lock, or None when another process holds it. The holder's pid, role and start time are
        written into the file for the refusal message."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise LockUnusable(
                f"cannot use the state directory {path.parent.parent} ({exc.strerror}: {path}). Check that "
                "it exists and is writable by this user."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {started} {role}\n".encode(), 0)
        return cls(path, fd)

    @classmethod
    def acquire(cls, path: Path, role: str) -> InstanceLock:
        lock = cls.try_acquire(path, role)
        if lock is None:
            raise AlreadyRunning(refusal(path, role))
        return lock

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock; the file stays (removing it would race a new holder)
            self.fd = -1


def holder(path: Path) -> tuple[int, str] | None:
    """(pid, 'started ... by ...') of the process that last took the lock, if the file says."""
    try:
        pid, day, clock, role = path.read_text(encoding="utf-8").split(maxsplit=3)
        return int(pid), f"started {day} {clock} as `lipsyncd {role.strip()}`"
    except (OSError, ValueError):
        return None


def is_held(path: Path) -> bool:
    lock = InstanceLock.try_acquire(path, "probe")
    if lock is None:
        return True
    lock.release()
    return False


def refusal(path: Path, role: str) -> str:
    who = holder(path)
    state_dir = path.parent.parent
    if who is None:
        return (
            f"another `lipsyncd {role}` is already running for the state directory {state_dir} "
            f"(it holds {path}). Stop it first (systemctl stop lipsyncd.target, or Ctrl-C in its terminal)."
        )
    pid, since = who
    return (
        f"another `lipsyncd {role}` is already running for the state directory {state_dir}: pid {pid}, "
        f"{since}. Only one may run at a time. Stop it first (`kill -TERM {pid}`, `systemctl stop "
        f"lipsyncd.target` under systemd, or Ctrl-C in its terminal), or give this one another state "
        "directory (paths.state)."
    )
