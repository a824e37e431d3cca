"""Resumable, verified uploads against the real embedded SeaweedFS (no mocks).

Parts sent are counted with botocore's own event hooks on a real client, not with a fake client.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.distribute.embedded import EmbeddedS3
from daemon.distribute.s3 import Credentials, StorageSettings, make_client, presign_get
from daemon.distribute.uploader import (
    MiB,
    SqliteJournal,
    StorageUnavailable,
    UploadError,
    UploadSettings,
    VerificationError,
    abort_orphans,
    upload_file,
)
from daemon.upload_journal import PartRecord, UploadState

REPO = Path(__file__).resolve().parents[2]
PARTS = UploadSettings(multipart_threshold=6 * MiB, part_size=5 * MiB, max_part_workers=1)


class Crash(BaseException):
    """Stands in for the process dying at a chosen point (not an Exception: nothing may catch it)."""


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    chunk = hashlib.sha256(str(seed).encode()).digest() * 4096  # 128 KiB, varied per seed
    data = (chunk * (size // len(chunk) + 1))[:size]
    path.write_bytes(bytes(b ^ (i % 251) for i, b in enumerate(data[:4096])) + data[4096:])
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_sha256(client: Any, bucket: str, key: str) -> str:
    with urllib.request.urlopen(presign_get(client, bucket, key, 600).url, timeout=30) as response:
        return hashlib.sha256(response.read()).hexdigest()


def count_sent_parts(client: Any) -> list[int]:
    """Part numbers of every UploadPart request this real client makes, in order."""
    sent: list[int] = []
    client.meta.events.register(
        "before-parameter-build.s3.UploadPart", lambda params, **_: sent.append(params["PartNumber"])
    )
    return sent


class MemoryJournal:
    """An UploadJournal in a dict (nothing survives a restart; the daemon journals in its job store)."""

    def __init__(self) -> None:
        self._states: dict[str, UploadState] = {}
        self._lock = threading.Lock()

    def load(self, key: str) -> UploadState | None:
        with self._lock:
            return self._states.get(key)

    def start(self, key: str, upload_id: str, part_size: int) -> None:
        with self._lock:
            self._states[key] = UploadState(key, upload_id, part_size)

    def part_done(self, key: str, part_number: int, etag: str, size: int, checksum: str) -> None:
        with self._lock:
            state = self._states[key]
            parts = [p for p in state.parts if p.part_number != part_number]
            record = PartRecord(part_number, etag, size, checksum)
            self._states[key] = UploadState(key, state.upload_id, state.part_size, (*parts, record))

    def finish(self, key: str) -> None:
        with self._lock:
            self._states.pop(key, None)


class CrashingJournal(MemoryJournal):
    """Journals parts until `crash_at` is reached; with keep_last=False the crash comes just before
    that part is written down (the server has it, the journal does not)."""

    def __init__(self, crash_at: int, keep_last: bool = True) -> None:
        super().__init__()
        self.crash_at, self.keep_last, self.count = crash_at, keep_last, 0

    def part_done(self, key: str, part_number: int, etag: str, size: int, checksum: str) -> None:
        self.count += 1
        if self.count == self.crash_at and not self.keep_last:
            raise Crash
        super().part_done(key, part_number, etag, size, checksum)
        if self.count == self.crash_at:
            raise Crash


def test_small_file_goes_up_in_one_put(
    s3_client: Any, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "small.mp4", 300_000)
    result = upload_file(s3_client, s3_bucket, s3_prefix + "small.mp4", path, MemoryJournal(), PARTS)
    assert (result.size, result.sha256, result.parts) == (300_000, sha256_of(path), 0)
    assert result.etag == hashlib.md5(path.read_bytes()).hexdigest()
    assert fetch_sha256(s3_client, s3_bucket, s3_prefix + "small.mp4") == sha256_of(path)
    head = s3_client.head_object(Bucket=s3_bucket, Key=s3_prefix + "small.mp4")
    assert (head["Metadata"]["sha256"], head["ContentType"]) == (sha256_of(path), "video/mp4")


def test_big_file_goes_up_in_parts_and_verifies(
    embedded_s3: EmbeddedS3, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    client = embedded_s3.client()
    sent = count_sent_parts(client)
    path = make_file(tmp_path / "big.mp4", 17 * MiB + 123, seed=1)
    journal = MemoryJournal()
    settings = UploadSettings(multipart_threshold=6 * MiB, part_size=5 * MiB, max_part_workers=3)
    progress: list[int] = []
    result = upload_file(
        client,
        s3_bucket,
        s3_prefix + "big.mp4",
        path,
        journal,
        settings,
        on_progress=lambda d, t: progress.append(d),
    )
    assert (result.parts, result.sent_parts, sorted(sent)) == (4, 4, [1, 2, 3, 4])
    assert result.etag.endswith("-4")
    assert progress[-1] == path.stat().st_size
    assert journal.load(s3_prefix + "big.mp4") is None
    assert fetch_sha256(client, s3_bucket, s3_prefix + "big.mp4") == sha256_of(path)


def test_an_object_already_stored_is_not_sent_again(
    embedded_s3: EmbeddedS3, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    client = embedded_s3.client()
    path = make_file(tmp_path / "v.mp4", 7 * MiB, seed=2)
    upload_file(client, s3_bucket, s3_prefix + "v.mp4", path, MemoryJournal(), PARTS)
    sent = count_sent_parts(client)
    again = upload_file(client, s3_bucket, s3_prefix + "v.mp4", path, MemoryJournal(), PARTS)
    assert again.already_there
    assert sent == []


def test_kill_9_mid_upload_then_resume_sends_only_missing_parts(
    embedded_s3: EmbeddedS3, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "resume.mp4", 3 * 5 * MiB + 1234, seed=3)  # 4 parts
    key, db = s3_prefix + "resume.mp4", tmp_path / "journal.sqlite"
    child = subprocess.Popen(
        [
            *(
                sys.executable,
                "-m",
                "tests.functional.upload_child",
                embedded_s3.endpoint_url,
                s3_bucket,
                key,
            ),
            *(str(path), str(db), "2", str(5 * MiB)),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "LIPSYNCD_TEST_ACCESS_KEY": embedded_s3.access_key,
            "LIPSYNCD_TEST_SECRET_KEY": embedded_s3.secret_key,
        },
    )
    try:
        assert child.stdout is not None
        lines = iter(child.stdout.readline, "")  # the child's log lines come first
        assert any(line.strip() == "JOURNALLED 2" for line in lines)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    journal = SqliteJournal(db)
    state = journal.load(key)
    assert state is not None
    assert [p.part_number for p in state.parts] == [1, 2]

    client = embedded_s3.client()
    sent = count_sent_parts(client)
    with capture_logs() as logs:
        result = upload_file(client, s3_bucket, key, path, journal, PARTS)
    assert sorted(sent) == [3, 4]  # parts 1 and 2 were not sent again
    assert (result.parts, result.sent_parts) == (4, 2)
    assert any(e["event"] == "upload_resumed" and e["parts_done"] == 2 for e in logs)
    assert journal.load(key) is None
    assert fetch_sha256(client, s3_bucket, key) == sha256_of(path)


def test_a_part_the_server_has_but_the_journal_missed_is_kept(
    embedded_s3: EmbeddedS3, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "adopt.mp4", 3 * 5 * MiB + 7, seed=4)
    key, journal = s3_prefix + "adopt.mp4", CrashingJournal(crash_at=2, keep_last=False)
    with pytest.raises(Crash):
        upload_file(embedded_s3.client(), s3_bucket, key, path, journal, PARTS)
    client = embedded_s3.client()
    sent = count_sent_parts(client)
    upload_file(client, s3_bucket, key, path, journal, PARTS)
    assert sorted(sent) == [3, 4]
    assert fetch_sha256(client, s3_bucket, key) == sha256_of(path)


def test_a_vanished_upload_id_starts_fresh(
    s3_client: Any, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "gone.mp4", 7 * MiB, seed=5)
    key, journal = s3_prefix + "gone.mp4", MemoryJournal()
    journal.start(key, "no-such-upload-id", 5 * MiB)
    journal.part_done(key, 1, '"0"', 5 * MiB, "AAAA")
    with capture_logs() as logs:
        result = upload_file(s3_client, s3_bucket, key, path, journal, PARTS)
    assert [e["event"] for e in logs if e["event"] == "upload_id_gone"] == ["upload_id_gone"]
    assert result.sent_parts == 2
    assert fetch_sha256(s3_client, s3_bucket, key) == sha256_of(path)


def test_a_file_changed_between_runs_fails_verification(
    s3_client: Any, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "changed.mp4", 11 * MiB, seed=6)
    key, journal = s3_prefix + "changed.mp4", CrashingJournal(crash_at=1)
    with pytest.raises(Crash):
        upload_file(s3_client, s3_bucket, key, path, journal, PARTS)
    make_file(path, 11 * MiB, seed=7)  # same size, other bytes
    with pytest.raises(VerificationError, match="sha256 differs"):
        upload_file(s3_client, s3_bucket, key, path, journal, PARTS)
    assert journal.load(key) is None


def test_a_failure_that_cannot_heal_aborts_the_upload(
    s3_client: Any, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "shrinks.mp4", 11 * MiB, seed=8)
    key, journal = s3_prefix + "shrinks.mp4", MemoryJournal()

    def shrink(done: int, total: int) -> None:
        if done:
            with path.open("r+b") as handle:
                handle.truncate(6 * MiB)

    with pytest.raises(UploadError, match="changed size"):
        upload_file(s3_client, s3_bucket, key, path, journal, PARTS, on_progress=shrink)
    assert journal.load(key) is None
    uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket, Prefix=key).get("Uploads", [])
    assert uploads == []


def test_upload_waits_while_storage_is_down_and_finishes_when_it_is_back(
    embedded_s3: EmbeddedS3, s3_client: Any, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "outage.mp4", 3 * 5 * MiB, seed=9)
    key = s3_prefix + "outage.mp4"
    restarted = threading.Event()

    class PullThePlug(MemoryJournal):
        def part_done(self, key: str, part_number: int, etag: str, size: int, checksum: str) -> None:
            def restart() -> None:
                embedded_s3.start()
                restarted.set()

            super().part_done(key, part_number, etag, size, checksum)
            if part_number == 1:
                embedded_s3.kill()  # storage gone, as if its machine went down
                threading.Timer(1.5, restart).start()

    settings = UploadSettings(  # retry_deadline_s only so that a broken restart fails instead of hanging
        multipart_threshold=6 * MiB, part_size=5 * MiB, retry_base_s=0.1, retry_cap_s=1.0, retry_deadline_s=60
    )
    with capture_logs() as logs:
        result = upload_file(s3_client, s3_bucket, key, path, PullThePlug(), settings)
    assert restarted.wait(30)
    assert sum(e["event"] == "storage_retry" for e in logs) >= 2
    assert result.parts == 3
    assert fetch_sha256(s3_client, s3_bucket, key) == sha256_of(path)


def test_a_deadline_turns_an_outage_into_storage_unavailable(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(
        StorageSettings(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1), Credentials("AK", "SK")
    )
    settings = UploadSettings(retry_base_s=0.05, retry_cap_s=0.2, retry_deadline_s=1.0)
    began = time.monotonic()
    with pytest.raises(StorageUnavailable, match="resumable"):
        upload_file(
            client, "lipsyncd", "x.mp4", make_file(tmp_path / "x.mp4", 1000), MemoryJournal(), settings
        )
    assert time.monotonic() - began < 5


def test_cancel_leaves_the_upload_resumable(
    s3_client: Any, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "cancel.mp4", 11 * MiB, seed=10)
    key, journal, cancel = s3_prefix + "cancel.mp4", MemoryJournal(), threading.Event()
    with pytest.raises(UploadError, match="cancelled"):
        upload_file(
            s3_client,
            s3_bucket,
            key,
            path,
            journal,
            PARTS,
            cancel=cancel,
            on_progress=lambda done, total: cancel.set() if done else None,
        )
    state = journal.load(key)
    assert state is not None
    assert len(state.parts) == 1
    result = upload_file(s3_client, s3_bucket, key, path, journal, PARTS)
    assert result.sent_parts == 2


def test_abort_orphans_spares_known_and_recent_uploads(
    s3_client: Any, s3_bucket: str, s3_prefix: str
) -> None:
    ours = s3_client.create_multipart_upload(Bucket=s3_bucket, Key=s3_prefix + "ours.mp4")["UploadId"]
    orphan = s3_client.create_multipart_upload(Bucket=s3_bucket, Key=s3_prefix + "orphan.mp4")["UploadId"]
    assert abort_orphans(s3_client, s3_bucket, s3_prefix, {ours}, older_than=timedelta(days=1)) == []
    aborted = abort_orphans(s3_client, s3_bucket, s3_prefix, {ours}, older_than=timedelta(0))
    assert aborted == [(s3_prefix + "orphan.mp4", orphan)]
    left = s3_client.list_multipart_uploads(Bucket=s3_bucket, Prefix=s3_prefix).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [ours]


def test_sqlite_journal_round_trip(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "j.sqlite")
    journal.start("k", "id-1", 5 * MiB)
    journal.part_done("k", 2, '"b"', 10, "Yg==")
    journal.part_done("k", 1, '"a"', 10, "YQ==")
    reopened = SqliteJournal(tmp_path / "j.sqlite").load("k")
    assert reopened is not None
    assert (reopened.upload_id, reopened.part_size) == ("id-1", 5 * MiB)
    assert [p.part_number for p in reopened.parts] == [1, 2]
    journal.start("k", "id-2", 5 * MiB)  # a fresh upload forgets the old parts
    assert journal.load("k") == type(reopened)("k", "id-2", 5 * MiB, ())
    journal.finish("k")
    assert journal.load("k") is None


def test_part_size_below_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="5 MiB"):
        UploadSettings(part_size=MiB)
