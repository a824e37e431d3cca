"""Real fault injection for the load, fault and security suites: mounts, namespaces, a hanging HTTP server,
tiny media and filesystem listings. Everything here needs the real kernel feature or skips; nothing mocks.

Mounts are made either inside a private mount namespace of the daemon (`unshare --mount`), so the host's
mount table never changes, or on a path under the test's tmp_path and removed in a `finally`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from daemon.samples import speech_like, write_audio, write_face_clip, write_still
from tests.e2e.harness import REPO, Daemon, Share, wait_for

_RUNS = itertools.count(1)


def is_root() -> bool:
    return os.geteuid() == 0


def can_mount(scratch: Path) -> bool:
    """True when this process may mount (root with CAP_SYS_ADMIN): tries a 64 KiB tmpfs once."""
    if not is_root() or not all(shutil.which(tool) for tool in ("mount", "unshare", "nsenter")):
        return False
    probe = scratch / ".mount-probe"
    probe.mkdir(exist_ok=True)
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True
    )
    if made.returncode != 0:
        return False
    subprocess.run(["umount", "-l", str(probe)], check=False)
    probe.rmdir()
    return True


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `path` (a disk that can really fill up); lazily unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Write one file that takes all free space in `folder`'s filesystem but `leave` bytes."""
    filler = folder / "filler.bin"
    with filler.open("wb") as out:
        while (free := shutil.disk_usage(folder).free) > leave:
            try:
                out.write(b"\0" * min(free - leave, 1 << 20))
                out.flush()
            except OSError:
                break
    return filler


class LaunchedDaemon(Daemon):
    """A Daemon started through a wrapper command (`unshare ...`); `wrapper` must exec the daemon so that
    proc.pid is the daemon itself."""

    def __init__(
        self, share: Share, wrapper: Sequence[str], *command: str, env: dict[str, str] | None = None
    ):
        self.share = share
        self.log_path = share.root.parent / f"{share.root.name}-{command[0]}-ns{next(_RUNS)}.log"
        self.log = self.log_path.open("ab")
        daemon = [sys.executable, "-m", "daemon", "--config", str(share.config), *command]
        self.proc = subprocess.Popen(
            [*wrapper, *daemon], cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=env
        )


def in_private_mounts(share: Share, *command: str) -> LaunchedDaemon:
    """The daemon in a mount namespace of its own: mounts made there are invisible to everyone else."""
    return LaunchedDaemon(share, ["unshare", "--mount", "--propagation", "private", "--"], *command)


def without_inotify(share: Share, *command: str) -> LaunchedDaemon:
    """The daemon in a user namespace whose inotify instance limit is 0: inotify_init() fails with EMFILE,
    exactly as on a host whose fs.inotify.max_user_instances is used up. The host's limit is untouched."""
    script = 'echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"'
    return LaunchedDaemon(share, ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh"], *command)


def mount_in(daemon: Daemon, *args: str) -> None:
    """Run `mount ARGS` inside the daemon's mount namespace."""
    subprocess.run(["nsenter", "--target", str(daemon.proc.pid), "--mount", "--", "mount", *args], check=True)


def readonly_state_wrapper(state: Path) -> list[str]:
    """A private mount namespace where the state directory is a read-only bind mount of itself (what
    ProtectSystem=strict does to a directory missing from ReadWritePaths=)."""
    s = str(state)
    script = f'mount --bind "{s}" "{s}" && mount -o remount,ro,bind "{s}" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def ready(daemon: Daemon, event: str = "render_ready", timeout: float = 60) -> None:
    wait_for(lambda: any(e.get("event") == event for e in daemon.events()), timeout, event, daemon)


# -- media ---------------------------------------------------------------------------------------------


def tiny_media(folder: Path) -> dict[str, Path]:
    """A 0.4 s 96x96 face clip, a 96x96 PNG still and 0.4 s of speech: a job renders in ~0.1 s."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "clip": write_face_clip(folder / "face.mp4", 0.4, 25, (96, 96)),
        "still": write_still(folder / "face.png", (96, 96)),
        "audio": write_audio(folder / "voice.wav", speech_like(0.4, seed=1)),
    }


# -- the filesystem around the share -----------------------------------------------------------------


def listing(root: Path, *, skip: Sequence[Path] = ()) -> dict[str, str]:
    """Every entry under `root` (symlinks not followed): relative path -> kind and size or target."""
    found: dict[str, str] = {}
    skipped = [str(s) for s in skip]
    for dirpath, dirnames, filenames in os.walk(root):
        if any(dirpath == s or dirpath.startswith(s + os.sep) for s in skipped):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = _describe(path)
    return found


def _describe(path: Path) -> str:
    st = path.lstat()
    if path.is_symlink():
        return f"link -> {os.readlink(path)}"
    if path.is_dir():
        return "dir"
    return f"file {st.st_size}"


# -- the job store, read as an operator would ----------------------------------------------------------


def store_rows(state: Path, query: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(state / "lipsyncd.db", timeout=10)) as db:
        return list(db.execute(query).fetchall())


class DbLock:
    """Another process holding the job store locked (`BEGIN EXCLUSIVE`, optionally in exclusive locking
    mode, which in WAL mode also shuts out readers), until release()."""

    def __init__(self, db: Path, *, exclusive_mode: bool) -> None:
        pragma = "db.execute('PRAGMA locking_mode=EXCLUSIVE')" if exclusive_mode else "pass"
        code = (
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            f"{pragma}\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "db.execute('SELECT count(*) FROM jobs').fetchall()\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()


# -- a webhook endpoint that accepts and never answers -------------------------------------------------


class HangingServer:
    """Listens on loopback, accepts every connection, reads the request and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list[float] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hanging-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(time.monotonic())
            self._held.append(conn)  # kept open, never written to

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self.sock.close()
