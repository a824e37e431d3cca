"""See what a daemon process is doing at the moment it is killed: its threads' stacks, its job store.

`frozen(pid)` stops the whole process (SIGSTOP, every thread parked), `look(pid)` reads each thread's
Python stack with py-spy (reading memory only: the process stays stopped, so what we see is exactly where
a SIGKILL sent now lands), and `stages_of` names the pipeline stages those stacks are in. A stopped
process can be thawed and sampled again, which is how the driver hunts for short stages (a rename, an
eviction) without any hook in the daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Frame (py-spy's qualified name) -> stage. A thread is in every stage named along its stack.
STAGE_FRAMES: dict[str, str] = {
    "prepare_audio": "audio",
    "probe_video": "decode",
    "VideoRender._decode": "decode",
    "VideoRender._faces_for": "inference",
    "VideoEncoder.__init__": "encode",
    "VideoEncoder.write": "encode",
    "paste_back": "encode",
    "VideoEncoder.close": "rename",  # flush, faststart rewrite, os.replace into place
    "_sha256": "rename",  # the render service hashes the renamed file before the store records it
    "ModelPool.get": "model load",
    "RenderService.detector": "model load",
    "write_links": "links.json write",
    "Intake.take": "claim",
    "Inbox.claim": "claim",
    "Inbox.file_done": "manifest filed",
    "Inbox.file_failed": "manifest filed",
    "RenderDaemon.recover": "recovery",
    "UploadDaemon.recover": "recovery",
    "JobStore._change": "store commit",
    "Reconciler._views": "links.json write",
    "JobStore.set_job": "store commit",
    "JobStore.add_job": "store commit",
    "JobStore.part_done": "store commit",
    "JobStore.start": "store commit",
    "JobStore.finish": "store commit",
    "_Upload._hash_local": "upload hash",
    "_Upload._already_there": "upload check",
    "_Upload._create": "multipart upload",
    "_Upload._send_part": "multipart upload",
    "_Upload._resume": "multipart resume",
    "_Upload._single": "single upload",
    "_Upload._complete": "completion",
    "_Upload._verify": "verification",
    "UploadWatcher._sign": "signing",
    "Reconciler._evict": "eviction",
    "UploadWatcher._finish_jobs": "job finish",
}
# A thread whose innermost known frame is one of these is waiting for another stage, not working.
IDLE_FRAMES = frozenset({"_put", "_get", "Event.wait", "Condition.wait", "wait"})
_SERVING = ("RenderDaemon.run_forever", "UploadDaemon.run_forever")
_STARTING = ("main", "_find_and_load")


@dataclass(frozen=True)
class Sight:
    """What one stopped process was doing: its stages and, per thread, its stack (innermost first)."""

    stages: frozenset[str]
    threads: tuple[tuple[str, tuple[str, ...]], ...]
    error: str = ""


def py_spy() -> Path | None:
    """The py-spy binary of this environment (a test extra), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    found = beside if beside.is_file() else shutil.which("py-spy")
    return Path(found) if found else None


@contextmanager
def frozen(pid: int, timeout: float = 2.0) -> Iterator[None]:
    """Stop the process for the duration of the block; resume it after unless it is gone by then."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_stopped(pid, timeout)
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def wait_stopped(pid: int, timeout: float) -> None:
    """SIGSTOP is asynchronous: wait until every thread is parked, so the stacks are where it stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = _task_states(pid)
        if not states or all(state in "tTZX" for state in states):
            return
        time.sleep(0.0005)


def _task_states(pid: int) -> list[str]:
    states = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        states.append(stat.rsplit(")", 1)[1].split()[0])
    return states


def look(pid: int, binary: Path) -> Sight:
    """The stacks of a (stopped) process, read without pausing it again."""
    dump = subprocess.run(
        [str(binary), "dump", "--pid", str(pid), "--nonblocking", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if dump.returncode != 0:
        return Sight(frozenset({"unknown"}), (), dump.stderr.strip().splitlines()[0][:200])
    threads = tuple(
        (str(t.get("thread_name") or t["thread_id"]), tuple(f["name"] for f in t["frames"]))
        for t in json.loads(dump.stdout)
    )
    return Sight(stages_of(threads), threads)


def stages_of(threads: Iterable[tuple[str, tuple[str, ...]]]) -> frozenset[str]:
    """The union of the threads' stages; 'startup' or 'idle' when no thread is in a known stage."""
    found: set[str] = set()
    for name, frames in threads:
        found |= thread_stages(frames)
        if name == "MainThread" and _starting(frames):
            found.add("startup")
    return frozenset(found or {"idle"})


def thread_stages(frames: tuple[str, ...]) -> set[str]:
    """Stages along one stack (innermost first); none if the innermost known frame is a wait."""
    stages: set[str] = set()
    for frame in frames:
        if not stages and frame in IDLE_FRAMES:
            return set()
        if frame in STAGE_FRAMES:
            stages.add(STAGE_FRAMES[frame])
    return stages


def _starting(frames: tuple[str, ...]) -> bool:
    """The main thread is still importing or building the daemon (not yet serving or recovering)."""
    return any(f in _STARTING for f in frames) and not any(f in _SERVING for f in frames)


# -- the job store, read from outside ------------------------------------------------------------------


class StoreView:
    """Read-only questions to the daemons' job store (one short connection per question)."""

    def __init__(self, state: Path) -> None:
        self.path = state / "lipsyncd.db"

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            yield db
        finally:
            db.close()

    def rows(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        try:
            with self._db() as db:
                return db.execute(query, args).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []

    def summary(self) -> str:
        counts = dict(self.rows("SELECT state, COUNT(*) FROM videos GROUP BY state"))
        return " ".join(f"{state}={counts[state]}" for state in sorted(counts))

    def render_backlog(self) -> int:
        return int(self.rows("SELECT COUNT(*) FROM videos WHERE state IN ('queued', 'rendering')")[0][0] or 0)

    def render_busy(self) -> bool:
        return bool(self.rows("SELECT 1 FROM videos WHERE state IN ('queued', 'rendering') LIMIT 1"))

    def upload_busy(self) -> bool:
        return bool(
            self.rows(
                "SELECT 1 FROM videos WHERE state IN ('rendered', 'uploading')"
                " OR (state = 'ready' AND evicted = 0) LIMIT 1"
            )
        )

    def multipart_open(self) -> bool:
        return bool(self.rows("SELECT 1 FROM uploads LIMIT 1"))

    def parts_all_sent(self) -> bool:
        """Some multipart upload has journalled every part: completion comes next."""
        return bool(
            self.rows(
                "SELECT 1 FROM uploads u JOIN videos v ON v.object_key = u.object_key"
                " WHERE (SELECT COUNT(*) FROM parts p WHERE p.object_key = u.object_key)"
                " >= (v.size + u.part_size - 1) / u.part_size LIMIT 1"
            )
        )

    def big_pending(self) -> bool:
        return bool(self.rows("SELECT 1 FROM videos WHERE output = 'big.mp4' AND state != 'ready' LIMIT 1"))

    def ready_unevicted(self) -> list[tuple[str, str, str]]:
        """(job, video, the upload worker that made it ready) of the ready videos still on disk."""
        return [
            (r[0], r[1], r[2] or "")
            for r in self.rows(
                "SELECT job_id, output, uploaded_by FROM videos WHERE state = 'ready' AND evicted = 0"
            )
        ]

    def claim_owners(self, role: str) -> list[tuple[str]]:
        """The workers of the kind that hold a claim now (render: rendering, upload: uploading)."""
        state = "rendering" if role == "render" else "uploading"
        return [(r[0],) for r in self.rows("SELECT DISTINCT owner FROM videos WHERE state = ?", state)]

    def claims_of(self, owner: str) -> list[tuple[str, str, int]]:
        return [
            (r[0], r[1], int(r[2]))
            for r in self.rows(
                "SELECT job_id, output, epoch FROM videos WHERE owner = ?"
                " AND state IN ('rendering', 'uploading')",
                owner,
            )
        ]

    def epoch(self, job: str, output: str) -> int | None:
        rows = self.rows("SELECT epoch FROM videos WHERE job_id = ? AND output = ?", job, output)
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def evicted(self, job: str, output: str) -> bool:
        rows = self.rows("SELECT evicted FROM videos WHERE job_id = ? AND output = ?", job, output)
        return bool(rows and rows[0][0])


@contextmanager
def store_write_lock(state: Path, timeout: float = 1.0) -> Iterator[bool]:
    """Hold the job store's write lock (as any other writer would); yields False if it was busy."""
    db = sqlite3.connect(state / "lipsyncd.db", timeout=timeout, isolation_level=None)
    try:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            yield False
            return
        try:
            yield True
        finally:
            db.execute("ROLLBACK")
    finally:
        db.close()
