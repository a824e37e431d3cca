"""What must hold after a crash run: a reader that watches every links.json the whole time, and the
checks made at the end against the files, the job store and the object storage."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMP_SUFFIXES = (".part.mp4", ".tmp")  # `.NAME.part.mp4` renders, `.links.json.XXXX.tmp` rewrites


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VideoHistory:
    """Everything the reader saw of one video, in order."""

    statuses: list[str] = field(default_factory=list)
    sha256: str | None = None
    problems: list[str] = field(default_factory=list)

    def note(self, video: dict[str, Any]) -> None:
        status = video["status"]
        if self.statuses and self.statuses[-1] == "ready" and status != "ready":
            self.problems.append(f"went from ready back to {status}")
        if not self.statuses or self.statuses[-1] != status:
            self.statuses.append(status)
        if video["sha256"] and self.sha256 and video["sha256"] != self.sha256:
            self.problems.append(f"sha256 changed from {self.sha256[:12]} to {video['sha256'][:12]}")
        self.sha256 = self.sha256 or video["sha256"]
        # local_copy says whether the rendered file is there: before the render it is not, yet; once
        # rendered it must stay until the upload is verified (ready)
        if video["local_copy"] is False and status in ("rendered", "uploading"):
            self.problems.append(f"local_copy false while {status}")


class LinksReader(threading.Thread):
    """Reads every links.json every `interval` seconds, as a user's script polling the share would.
    A file whose inode, mtime and size are unchanged is not parsed again (every rewrite is a rename, so
    a new inode), but its rendered videos are still looked for on disk at every pass."""

    def __init__(self, outputs: Path, interval: float = 0.02) -> None:
        super().__init__(name="links-reader", daemon=True)
        self.outputs = outputs
        self.interval = interval
        self.stop = threading.Event()
        self.reads = 0
        self.invalid: list[str] = []
        self.videos: dict[tuple[str, str], VideoHistory] = {}
        self.passes = 0
        self._known: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            for path in sorted(self.outputs.glob("*/links.json")):
                self.read(path)
            self.passes += 1

    def read(self, path: Path) -> None:
        try:
            info = path.stat()
        except FileNotFoundError:
            return
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        known = self._known.get(path)
        doc = known[1] if known and known[0] == key else self._note(path, key)
        if doc is not None:
            for video in doc["videos"]:
                self._check_local(path, doc["job"], video)

    def _note(self, path: Path, key: tuple[int, int, int]) -> dict[str, Any] | None:
        doc = self._load(path)
        if doc is not None:
            self._known[path] = (key, doc)
            for video in doc["videos"]:
                self.videos.setdefault((doc["job"], video["output"]), VideoHistory()).note(video)
        return doc

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        self.reads += 1
        try:
            doc: dict[str, Any] = json.loads(text)
        except ValueError as exc:
            self.invalid.append(f"{path}: {exc}: {text[:80]!r}")
            return None
        return doc

    def _check_local(self, path: Path, job: str, video: dict[str, Any]) -> None:
        """A rendered video that is not yet ready must still be on disk (read twice: no false alarm
        when the upload finishes and evicts between the two looks)."""
        status = video["status"]
        if status not in ("rendered", "uploading") or (path.parent / video["output"]).exists():
            return
        again = self._load(path)
        now = {v["output"]: v["status"] for v in again["videos"]} if again else {}
        if now.get(video["output"]) == status:
            self.videos[(job, video["output"])].problems.append(f"local file missing while {status}")


# -- the end -----------------------------------------------------------------------------------------


def store_rows(state: Path, url: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every job and video row: from the SQLite ledger in `state`, or from PostgreSQL at `url`."""
    if url is not None:
        return _pg_rows(url)
    with sqlite3.connect(state / "lipsyncd.db", timeout=30) as db:
        db.row_factory = sqlite3.Row
        jobs = [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]
        videos = [dict(r) for r in db.execute("SELECT * FROM videos ORDER BY job_id, position")]
    return jobs, videos


def _pg_rows(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as db:
        jobs = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        videos = db.execute("SELECT * FROM videos ORDER BY job_id, position").fetchall()
    return jobs, videos


def check_jobs(manifests: dict[str, int], jobs: list[dict[str, Any]], videos: list[dict[str, Any]]) -> Check:
    """Each manifest became one job (no `NAME-2` from a second claim), done, with every video ready."""
    per_job = {j["id"]: [v for v in videos if v["job_id"] == j["id"]] for j in jobs}
    want = {Path(name).stem: count for name, count in manifests.items()}
    got = {job: len(vs) for job, vs in per_job.items()}
    bad = [j["id"] for j in jobs if j["state"] != "done"]
    bad += [f"{v['job_id']}/{v['output']}={v['state']}" for v in videos if v["state"] != "ready"]
    ok = got == want and not bad
    return Check("every video of every job ready exactly once", ok, _detail(bad, got, want))


def _detail(bad: list[str], got: dict[str, int], want: dict[str, int]) -> str:
    extra = sorted(set(got) ^ set(want))
    return f"not done/ready: {bad[:8]}; jobs missing or extra: {extra}" if bad or got != want else ""


def check_links_match_store(outputs: Path, jobs: list[dict[str, Any]], videos: list[dict[str, Any]]) -> Check:
    """What users read is what the store knows: job and video states, local copy flags."""
    stale = []
    for job in jobs:
        try:
            doc = json.loads((outputs / job["id"] / "links.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stale.append(f"{job['id']}: no readable links.json")
            continue
        shown = [(v["status"], v["local_copy"]) for v in doc["videos"]]
        known = [(v["state"], not v["evicted"]) for v in videos if v["job_id"] == job["id"]]
        if doc["status"] != job["state"] or shown != known:
            stale.append(
                f"{job['id']}: links.json says {doc['status']} {shown}, the store {job['state']} {known}"
            )
    return Check("links.json agrees with the job store", not stale, "; ".join(stale[:5]))


def check_history(reader: LinksReader) -> list[Check]:
    problems = {f"{job}/{out}": h.problems for (job, out), h in reader.videos.items() if h.problems}
    early = {k: [p for p in v if "local" in p] for k, v in problems.items()}
    early = {k: v for k, v in early.items() if v}
    other = {k: [p for p in v if "local" not in p] for k, v in problems.items()}
    other = {k: v for k, v in other.items() if v}
    return [
        Check("links.json always valid JSON", not reader.invalid, "; ".join(reader.invalid[:3])),
        Check("no local file deleted before its upload was verified", not early, str(early)[:600]),
        Check("ready is final and a rendered file never changes", not other, str(other)[:600]),
    ]


def check_objects(client: Any, bucket: str, prefix: str, videos: list[dict[str, Any]]) -> Check:
    """Exactly one object per video, at the key the store chose; nothing else under the prefix."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    want = sorted(v["object_key"] for v in videos)
    ok = sorted(keys) == want and len(set(keys)) == len(keys)
    return Check("one object per video, no duplicates", ok, "" if ok else f"stored {keys} want {want}")


def check_downloads(outputs: Path, reader: LinksReader) -> Check:
    """Every link serves the bytes whose sha256 links.json recorded when the video was rendered."""
    bad, fetched = [], 0
    for path in sorted(outputs.glob("*/links.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        for video in doc["videos"]:
            first = reader.videos.get((doc["job"], video["output"]), VideoHistory()).sha256
            digest = _download_sha256(video["url"]) if video["url"] else None
            fetched += 1
            if digest is None or digest != video["sha256"] or (first and first != digest):
                bad.append(f"{doc['job']}/{video['output']}")
    return Check("every link downloads the rendered bytes", not bad and fetched > 0, f"bad: {bad}")


def _download_sha256(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return hashlib.sha256(response.read()).hexdigest()
    except OSError:
        return None


def check_files(shared: Path, manifests: dict[str, int]) -> list[Check]:
    inbox, outputs = shared / "inbox", shared / "outputs" / "latest_batch"
    temps = [str(p.relative_to(shared)) for p in _hidden_temps(shared)]
    left = sorted(p.name for p in (inbox / ".claimed").glob("*"))
    done = sorted(p.name for p in (inbox / "done").glob("*"))
    failed = sorted(p.name for p in (inbox / "failed").glob("*"))
    views = ("links.json", "links.html")  # the page and its posters stay after the videos go
    local = sorted(
        str(p.relative_to(outputs))
        for p in outputs.glob("*/[!.]*")
        if p.name not in views and not p.name.endswith(".poster.jpg")
    )
    return [
        Check("no temp file left in outputs or inbox", not temps, str(temps[:10])),
        Check("no manifest left in inbox/.claimed", not left, str(left)),
        Check(
            "every manifest in done/ exactly once",
            done == sorted(manifests) and not failed,
            f"missing {sorted(set(manifests) - set(done))}, extra {sorted(set(done) - set(manifests))}, "
            f"in failed/ {failed}",
        ),
        Check("no local copy left after eviction", not local, str(local[:10])),
    ]


def _hidden_temps(shared: Path) -> list[Path]:
    return sorted(
        p
        for p in shared.rglob(".*")
        if p.is_file() and p.name.endswith(TEMP_SUFFIXES) and "media" not in p.parts
    )


def wait_all_done(outputs: Path, jobs: list[str], timeout: float, alive: Any = None) -> bool:
    """True once every job's links.json says done; False at the timeout or as soon as every job is
    finished with some failed (alive() may raise if a daemon died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [_status(outputs / job / "links.json") for job in jobs]
        if all(state in ("done", "partial", "failed") for state in states):
            return all(state == "done" for state in states)
        if alive is not None:
            alive()
        time.sleep(0.25)
    return False


def wait_filed(inbox: Path, timeout: float) -> None:
    """Until inbox/.claimed is empty or the timeout: a render worker files a finished job's manifest at
    its next pass (up to a second after links.json says done), so the check of the folders waits for it."""
    deadline = time.monotonic() + timeout
    while any((inbox / ".claimed").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.1)


def _status(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["status"])
    except (OSError, ValueError, KeyError):
        return None
