"""Resumable, verified uploads of one file to S3-compatible storage.

Below the multipart threshold a file goes up in one PUT; above it, in parts. Every request carries
Content-MD5, which the server checks (SeaweedFS answers BadDigest on a mismatch). The UploadId and each
finished part are written to an UploadJournal before the next step, so after a crash (even kill -9)
the next call lists the parts on the server, keeps the ones that match the local file, sends only the
rest and completes: never starting over while the upload exists. Afterwards the object is checked: its
size, its x-amz-meta-sha256 (the local file's sha256, set when the upload began) and, where the ETag is
the usual MD5 form, the ETag computed from the local bytes.

Network errors, timeouts, 5xx and SlowDown are retried with exponential backoff and full jitter, for as
long as settings.retry_deadline_s allows (None: until storage comes back, which the watcher wants).
A failure that cannot be retried aborts the multipart upload; a deadline or a cancel leaves it in place
to resume later. Concurrency across files is the caller's job; parts of one file may go in parallel.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import mimetypes
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import botocore.exceptions
import structlog

from daemon.distribute.s3 import error_code, http_status, is_retryable
from daemon.files import file_sha256
from daemon.upload_journal import PartRecord, UploadJournal, UploadState

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10000
T = TypeVar("T")


class UploadError(Exception):
    """An upload failed for a reason a person must look at; the message says which file and why."""


class VerificationError(UploadError):
    """The stored object does not match the local file."""


class StorageUnavailable(UploadError):
    """Storage kept failing for longer than settings.retry_deadline_s; the upload can resume later."""


class UploadCancelled(UploadError):
    """The cancel event was set; the multipart upload is left in place to resume."""


@dataclass(frozen=True)
class UploadSettings:
    """How one file is uploaded. YAML keys map one to one onto these fields."""

    multipart_threshold: int = 16 * MiB  # files at least this big go up in parts
    part_size: int = 8 * MiB  # >= 5 MiB; raised automatically when a file would need > 10000 parts
    # parts of one file sent at once (memory: workers x part_size). 4, not 2: 64 MiB files went up
    # 25% faster to the embedded SeaweedFS (bench/upload_speed.py); 8 MiB parts did as well as 16
    max_part_workers: int = 4
    retry_base_s: float = 0.5  # first backoff step; doubles each attempt, full jitter
    retry_cap_s: float = 30.0  # the longest wait between two attempts
    retry_deadline_s: float | None = None  # give up after failing this long; None: retry until back
    verify_etag: bool = True  # compare the ETag with the local MD5s; turn off for SSE-KMS/SSE-C buckets

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(
                f"upload part_size {self.part_size} is below S3's minimum of 5 MiB ({MIN_PART_SIZE})."
            )
        if self.multipart_threshold < 1 or self.max_part_workers < 1:
            raise ValueError("upload multipart_threshold and max_part_workers must be at least 1.")
        if self.retry_base_s <= 0 or self.retry_cap_s < self.retry_base_s:
            raise ValueError("upload retry delays: need 0 < retry_base_s <= retry_cap_s.")


@dataclass(frozen=True)
class UploadResult:
    key: str
    size: int
    sha256: str
    etag: str  # without quotes
    parts: int = 0  # parts of the object (0: single PUT)
    sent_parts: int = 0  # parts sent by this call (fewer than parts when it resumed)
    already_there: bool = False  # the object was already stored and verified; nothing was sent


ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total), called from the caller's thread


def upload_file(
    client: Any,
    bucket: str,
    key: str,
    path: Path,
    journal: UploadJournal,
    settings: UploadSettings | None = None,
    *,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> UploadResult:
    """Upload path to bucket/key (resuming if the journal knows an unfinished upload) and verify it."""
    job = _Upload(client, bucket, key, Path(path), journal, settings or UploadSettings(), on_progress, cancel)
    return job.run()


# -- retries -------------------------------------------------------------------------------------------


class Retrier:
    """Calls a function until it works, a non-retryable error happens, the deadline passes or cancel.

    `cancel` is the caller's event; `halt` is set inside an upload when one part failed for good, so
    the other part workers stop waiting too.
    """

    def __init__(self, settings: UploadSettings, cancel: threading.Event | None, rng: random.Random) -> None:
        self.settings, self.cancel, self.rng = settings, cancel or threading.Event(), rng
        self.halt = threading.Event()

    def call(self, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
        attempt, failing_since = 0, None
        while True:
            self.check_cancel()
            try:
                return fn(**kwargs)
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                failing_since = failing_since or time.monotonic()
                self._wait_before_retry(what, exc, attempt, failing_since)
                attempt += 1

    def check_cancel(self) -> None:
        if self.cancel.is_set() or self.halt.is_set():
            raise UploadCancelled("The upload was cancelled; it resumes on the next start.")

    def _wait_before_retry(self, what: str, exc: Exception, attempt: int, failing_since: float) -> None:
        delay = self.rng.uniform(0, min(self.settings.retry_cap_s, self.settings.retry_base_s * 2**attempt))
        deadline = self.settings.retry_deadline_s
        if deadline is not None and time.monotonic() - failing_since + delay > deadline:
            raise StorageUnavailable(
                f"Storage did not answer {what} for {deadline:g} s ({_describe(exc)}); "
                "the upload stays resumable and is retried later."
            ) from exc
        log.warning(
            "storage_retry", op=what, attempt=attempt + 1, delay_s=round(delay, 2), error=_describe(exc)
        )
        self._sleep(delay)

    def _sleep(self, delay: float) -> None:
        end = time.monotonic() + delay
        while (left := end - time.monotonic()) > 0 and not self.halt.is_set():
            if self.cancel.wait(min(left, 0.25)):
                break
        self.check_cancel()


def _describe(exc: BaseException) -> str:
    code = error_code(exc)
    return f"{code} (HTTP {http_status(exc)})" if code else type(exc).__name__


# -- local file helpers --------------------------------------------------------------------------------


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")  # noqa: S324 - S3 integrity, not security


def multipart_etag(checksums: list[str]) -> str:
    """The S3 multipart ETag: MD5 of the concatenated part MD5s, dash, part count."""
    joined = b"".join(base64.b64decode(c) for c in checksums)
    return f"{hashlib.md5(joined).hexdigest()}-{len(checksums)}"  # noqa: S324


def _unquote(etag: str) -> str:
    return etag.strip().strip('"')


def _b64_to_hex(checksum: str) -> str:
    return base64.b64decode(checksum).hex()


@dataclass(frozen=True)
class _Plan:
    """How a file of `size` bytes is cut into parts."""

    size: int
    part_size: int

    @property
    def count(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def numbers(self) -> range:
        return range(1, self.count + 1)

    def span(self, number: int) -> tuple[int, int]:
        start = (number - 1) * self.part_size
        return start, min(self.part_size, self.size - start)


def _part_size_for(size: int, wanted: int) -> int:
    needed = -(-size // MAX_PARTS)
    return max(wanted, -(-needed // MiB) * MiB)


def _read_span(path: Path, start: int, length: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(start)
        data = handle.read(length)
    if len(data) != length:
        raise UploadError(f"{path} changed size while it was being uploaded; it must be complete first.")
    return data


# -- one upload ----------------------------------------------------------------------------------------


class _Upload:
    def __init__(  # noqa: PLR0917 - private, one caller: upload_file, whose arguments it takes over
        self,
        client: Any,
        bucket: str,
        key: str,
        path: Path,
        journal: UploadJournal,
        settings: UploadSettings,
        on_progress: ProgressFn | None,
        cancel: threading.Event | None,
    ) -> None:
        self.client, self.bucket, self.key, self.path = client, bucket, key, path
        self.journal, self.settings, self.on_progress = journal, settings, on_progress
        self.retry = Retrier(settings, cancel, random.Random())
        self.size, self.sha256, self.sent, self.sent_bytes = 0, "", 0, 0

    def run(self) -> UploadResult:
        began = time.monotonic()
        self._hash_local()
        result = self._already_there()
        if result is None:
            result = self._single() if self.size < self.settings.multipart_threshold else self._multipart()
        seconds = time.monotonic() - began
        log.info(
            "upload_done",
            key=self.key,
            size=self.size,
            parts=result.parts,
            sent_parts=result.sent_parts,
            already_there=result.already_there,
            seconds=round(seconds, 2),
            mb_per_s=round(self.sent_bytes / MiB / seconds, 1) if seconds > 0 and self.sent_bytes else None,
        )
        return result

    def _hash_local(self) -> None:
        try:
            self.size = self.path.stat().st_size
            self.sha256 = file_sha256(self.path)
        except OSError as exc:
            raise UploadError(f"Cannot read {self.path} for upload: {exc.strerror}.") from None

    # -- the object may already be there (a crash after completing, before the caller noted it)
    def _already_there(self) -> UploadResult | None:
        head = self._head()
        if head is None or head["ContentLength"] != self.size:
            return None
        if head.get("Metadata", {}).get("sha256") != self.sha256:
            return None
        self._drop_journalled_upload()
        log.info("upload_already_there", key=self.key, size=self.size)
        return UploadResult(self.key, self.size, self.sha256, _unquote(head["ETag"]), already_there=True)

    def _drop_journalled_upload(self) -> None:
        """The object is complete; an upload the journal still holds (usually finished already) must go."""
        state = self.journal.load(self.key)
        if state is not None:
            # NoSuchUpload is the usual answer: the upload was completed
            with contextlib.suppress(botocore.exceptions.ClientError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=state.upload_id)
            self.journal.finish(self.key)

    def _head(self) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.retry.call(
                "HeadObject", self.client.head_object, Bucket=self.bucket, Key=self.key
            )
            return head
        except botocore.exceptions.ClientError as exc:
            if http_status(exc) == 404:
                return None
            raise self._plain(exc, "check the object") from exc

    # -- single PUT
    def _single(self) -> UploadResult:
        log.info("upload_started", key=self.key, size=self.size, multipart=False)
        data = _read_span(self.path, 0, self.size)
        checksum = md5_b64(data)
        try:
            self.retry.call(
                "PutObject", self.client.put_object, **self._object_args(), Body=data, ContentMD5=checksum
            )
        except botocore.exceptions.ClientError as exc:
            raise self._plain(exc, "store the file") from exc
        self.sent, self.sent_bytes = 1, self.size
        self._progress(self.size)
        return self._verify(_b64_to_hex(checksum), parts=0)

    def _object_args(self) -> dict[str, Any]:
        content_type = mimetypes.guess_type(self.path.name)[0] or "application/octet-stream"
        return {
            "Bucket": self.bucket,
            "Key": self.key,
            "Metadata": {"sha256": self.sha256},
            "ContentType": content_type,
        }

    # -- multipart
    def _multipart(self) -> UploadResult:
        upload_id, plan, done = self._resume() or self._create()
        try:
            self._send_missing(upload_id, plan, done)
            self._complete(upload_id, plan, done)
        except (UploadCancelled, StorageUnavailable):
            raise  # leave the upload in place: the next call resumes it
        except Exception as exc:
            self._abort(upload_id, exc)
            raise
        checksums = [done[n].checksum for n in plan.numbers()]
        try:
            return self._verify(multipart_etag(checksums), parts=plan.count)
        finally:
            self.journal.finish(self.key)

    def _create(self) -> tuple[str, _Plan, dict[int, PartRecord]]:
        plan = _Plan(self.size, _part_size_for(self.size, self.settings.part_size))
        try:
            response = self.retry.call(
                "CreateMultipartUpload", self.client.create_multipart_upload, **self._object_args()
            )
        except botocore.exceptions.ClientError as exc:
            raise self._plain(exc, "start the upload") from exc
        upload_id = response["UploadId"]
        self.journal.start(self.key, upload_id, plan.part_size)
        log.info("upload_started", key=self.key, size=self.size, multipart=True, parts=plan.count)
        return upload_id, plan, {}

    def _resume(self) -> tuple[str, _Plan, dict[int, PartRecord]] | None:
        state = self.journal.load(self.key)
        if state is None:
            return None
        plan = _Plan(self.size, state.part_size)
        server = self._server_parts(state.upload_id)
        if server is None:
            log.warning("upload_id_gone", key=self.key, upload_id=state.upload_id)
            return None
        done = self._reconcile(plan, server, {p.part_number: p for p in state.parts})
        log.info(
            "upload_resumed", key=self.key, upload_id=state.upload_id, parts_done=len(done), parts=plan.count
        )
        return state.upload_id, plan, done

    def _server_parts(self, upload_id: str) -> dict[int, dict[str, Any]] | None:
        parts: dict[int, dict[str, Any]] = {}
        marker = 0
        while True:
            try:
                page = self.retry.call(
                    "ListParts",
                    self.client.list_parts,
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    PartNumberMarker=marker,
                )
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) == "NoSuchUpload" or http_status(exc) == 404:
                    return None
                raise self._plain(exc, "list the parts already sent") from exc
            parts.update({p["PartNumber"]: p for p in page.get("Parts", [])})
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def _reconcile(
        self, plan: _Plan, server: dict[int, dict[str, Any]], journalled: dict[int, PartRecord]
    ) -> dict[int, PartRecord]:
        """Keep a server part only if it matches the local bytes (by its ETag or the journal's MD5)."""
        done: dict[int, PartRecord] = {}
        for number, part in sorted(server.items()):
            if number not in plan.numbers() or part.get("Size") != plan.span(number)[1]:
                continue
            record = self._matching_record(plan, number, part, journalled.get(number))
            if record is None:
                continue
            if journalled.get(number) != record:
                self.journal.part_done(self.key, number, record.etag, record.size, record.checksum)
            done[number] = record
        return done

    def _matching_record(
        self, plan: _Plan, number: int, part: dict[str, Any], known: PartRecord | None
    ) -> PartRecord | None:
        checksum = md5_b64(_read_span(self.path, *plan.span(number)))
        etag = part["ETag"]
        same_as_journal = known is not None and known.etag == etag and known.checksum == checksum
        if same_as_journal or _unquote(etag) == _b64_to_hex(checksum):
            return PartRecord(number, etag, plan.span(number)[1], checksum)
        return None

    def _send_missing(self, upload_id: str, plan: _Plan, done: dict[int, PartRecord]) -> None:
        self._progress(sum(p.size for p in done.values()))
        todo = iter([n for n in plan.numbers() if n not in done])
        with ThreadPoolExecutor(self.settings.max_part_workers, thread_name_prefix="upload-part") as pool:
            pending: set[Future[PartRecord]] = set()
            try:
                self._fill(pool, pending, todo, upload_id, plan)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    self._record(finished, done, plan)
                    self._fill(pool, pending, todo, upload_id, plan)
            except BaseException:
                self._drain(pending, done, plan)
                raise

    def _fill(
        self,
        pool: ThreadPoolExecutor,
        pending: set[Future[PartRecord]],
        todo: Iterator[int],
        upload_id: str,
        plan: _Plan,
    ) -> None:
        while len(pending) < self.settings.max_part_workers:
            number = next(todo, None)
            if number is None:
                return
            pending.add(pool.submit(self._send_part, upload_id, plan, number))

    def _record(self, finished: set[Future[PartRecord]], done: dict[int, PartRecord], plan: _Plan) -> None:
        """Journal every part that made it (before raising the first failure, if any)."""
        failure: BaseException | None = None
        for future in finished:
            if future.exception() is not None:
                failure = failure or future.exception()
                continue
            record = future.result()
            self.journal.part_done(self.key, record.part_number, record.etag, record.size, record.checksum)
            done[record.part_number] = record
            self.sent, self.sent_bytes = self.sent + 1, self.sent_bytes + record.size
            self._progress(sum(p.size for p in done.values()))
        if failure is not None:
            raise failure

    def _drain(self, pending: set[Future[PartRecord]], done: dict[int, PartRecord], plan: _Plan) -> None:
        """After a failure: stop the other workers soon, but keep what they finished."""
        self.retry.halt.set()
        finished, _ = wait(pending)
        with contextlib.suppress(BaseException):  # the first failure is already on its way up
            self._record(finished, done, plan)

    def _send_part(self, upload_id: str, plan: _Plan, number: int) -> PartRecord:
        start, length = plan.span(number)
        data = _read_span(self.path, start, length)
        checksum = md5_b64(data)
        try:
            response = self.retry.call(
                "UploadPart",
                self.client.upload_part,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=checksum,
            )
        except botocore.exceptions.ClientError as exc:
            raise self._plain(exc, f"send part {number}") from exc
        return PartRecord(number, response["ETag"], length, checksum)

    def _complete(self, upload_id: str, plan: _Plan, done: dict[int, PartRecord]) -> None:
        parts = [{"PartNumber": n, "ETag": done[n].etag} for n in plan.numbers()]
        try:
            self.retry.call(
                "CompleteMultipartUpload",
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "NoSuchUpload" and self._head() is not None:
                return  # an earlier attempt completed it and its answer was lost; verify decides
            raise self._plain(exc, "complete the upload") from exc

    def _abort(self, upload_id: str, cause: BaseException) -> None:
        log.warning("upload_aborted", key=self.key, upload_id=upload_id, reason=_describe(cause))
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - best effort; abort_orphans or the lifecycle rule cleans up
            log.warning("upload_abort_failed", key=self.key, error=_describe(exc))
        self.journal.finish(self.key)

    # -- verification
    def _verify(self, expected_etag: str, parts: int) -> UploadResult:
        head = self._head()
        if head is None:
            raise VerificationError(
                f"{self.key}: the object is missing right after its upload of {self.path}."
            )
        etag = _unquote(head["ETag"])
        problems = self._problems(head, etag, expected_etag)
        if problems:
            raise VerificationError(f"Uploaded {self.path} as {self.key}, but " + "; ".join(problems) + ".")
        return UploadResult(self.key, self.size, self.sha256, etag, parts=parts, sent_parts=self.sent)

    def _problems(self, head: dict[str, Any], etag: str, expected_etag: str) -> list[str]:
        problems = []
        if head["ContentLength"] != self.size:
            problems.append(f"the stored size is {head['ContentLength']} bytes, the local file {self.size}")
        if head.get("Metadata", {}).get("sha256") != self.sha256:
            problems.append("its sha256 differs from the local file's (the file changed during the upload?)")
        if self.settings.verify_etag and etag != expected_etag:
            problems.append(
                f"its ETag {etag} is not the {expected_etag} computed from the local bytes "
                "(if the bucket encrypts with SSE-KMS or SSE-C, set verify_etag: false)"
            )
        return problems

    def _progress(self, done_bytes: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done_bytes, self.size)

    def _plain(self, exc: botocore.exceptions.ClientError, doing: str) -> UploadError:
        return UploadError(
            f"Storage refused to {doing} for {self.path} -> s3://{self.bucket}/{self.key}: "
            f"{_describe(exc)}: {exc.response.get('Error', {}).get('Message', '')}"
        )


# -- orphans -------------------------------------------------------------------------------------------


def abort_orphans(
    client: Any,
    bucket: str,
    prefix: str,
    known_upload_ids: Collection[str],
    older_than: timedelta,
    *,
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """Abort multipart uploads under prefix that nobody owns and that began before now - older_than.
    Returns the (key, upload_id) pairs aborted."""
    cutoff = (now or datetime.now(UTC)) - older_than
    aborted = []
    for upload in _list_uploads(client, bucket, prefix):
        if upload["UploadId"] in known_upload_ids or upload["Initiated"] > cutoff:
            continue
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        aborted.append((upload["Key"], upload["UploadId"]))
    if aborted:
        log.info("orphan_uploads_aborted", bucket=bucket, prefix=prefix, count=len(aborted))
    return aborted


def _list_uploads(client: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Uploads", [])


# -- a journal for small setups (the benchmarks; the daemon journals in its job store) ---------------


_SCHEMA = """
CREATE TABLE IF NOT EXISTS upload (key TEXT PRIMARY KEY, upload_id TEXT NOT NULL, part_size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS upload_part (
    key TEXT NOT NULL, part_number INTEGER NOT NULL, etag TEXT NOT NULL, size INTEGER NOT NULL,
    checksum TEXT NOT NULL, PRIMARY KEY (key, part_number));
"""


class SqliteJournal:
    """An UploadJournal in a small SQLite file; every call commits, so it survives kill -9."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            yield db

    def load(self, key: str) -> UploadState | None:
        with self._connect() as db:
            row = db.execute("SELECT upload_id, part_size FROM upload WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            parts = db.execute(
                "SELECT part_number, etag, size, checksum FROM upload_part"
                " WHERE key = ? ORDER BY part_number",
                (key,),
            ).fetchall()
        return UploadState(key, row[0], row[1], tuple(PartRecord(*p) for p in parts))

    def start(self, key: str, upload_id: str, part_size: int) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM upload_part WHERE key = ?", (key,))
            db.execute("INSERT OR REPLACE INTO upload VALUES (?, ?, ?)", (key, upload_id, part_size))

    def part_done(self, key: str, part_number: int, etag: str, size: int, checksum: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO upload_part VALUES (?, ?, ?, ?, ?)",
                (key, part_number, etag, size, checksum),
            )

    def finish(self, key: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM upload_part WHERE key = ?", (key,))
            db.execute("DELETE FROM upload WHERE key = ?", (key,))
