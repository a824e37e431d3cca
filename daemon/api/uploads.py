"""A multipart upload streamed into the share: each file part goes straight to a temp file in this
submit's media folder (never whole in memory, never in /tmp), counted against the size limit and the
disk's free space as it arrives, and renamed to a name the server chose when its part is complete.

Nothing here writes the manifest: the caller does, after every file arrived whole; on any failure the
caller removes the media folder, so a broken upload leaves nothing the inbox could take."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from daemon.manifest import job_name
from daemon.submit import MediaDir, publish

MAX_FIELD_BYTES = 64 * 1024  # a text field (name, a share path, a webhook name)
MAX_PARTS = 1100  # manifest.MAX_VIDEOS videos, the audio and the options
FREE_CHECK_EVERY = 8 * 2**20  # bytes written between two looks at the disk's free space
FALLBACK = {"audio": "audio", "videos": "video"}


class UploadRefused(Exception):
    """Why the upload was stopped: an HTTP status and plain words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Received:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)  # form field -> files written, in order


def safe_name(client_name: str, fallback: str) -> str:
    """A file name the server can use: the client's last path part, reduced to letters, digits, '-',
    '_' and '.'; never a path, never hidden, never empty."""
    last = client_name.replace("\\", "/").replace("\x00", "").rsplit("/", 1)[-1]
    stem, dot, suffix = last.rpartition(".")
    if not dot:
        stem, suffix = last, ""
    stem, suffix = job_name(stem)[:80], job_name(suffix)[:10]
    stem = stem.lstrip(".") or fallback
    return f"{stem}.{suffix}" if suffix else stem


class MultipartReceiver:
    """Feed it the body's chunks (`feed`), then `finish`; files land in `media`."""

    def __init__(
        self,
        content_type: str,
        media: MediaDir,
        *,
        max_bytes: int,
        min_free: int,
        free_bytes: Callable[[Path], int] | None = None,
    ) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise UploadRefused(400, "the multipart body has no boundary in its Content-Type header")
        self.media, self.max_bytes, self.min_free = media, max_bytes, min_free
        self.free_bytes = free_bytes or (lambda path: shutil.disk_usage(path).free)
        self.received = Received()
        self.total = 0
        self._since_check = FREE_CHECK_EVERY  # look at the disk before the first byte
        self._parts = 0
        self._ended = False
        self._header_name = self._header_value = b""
        self._disposition = b""
        self._field: str = ""
        self._text: bytearray | None = None
        self._out: tuple[int, Path, str] | None = None  # fd, temp path, final name of the file part
        self._error: BaseException | None = None
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._add("_header_name", d[s:e]),
                "on_header_value": lambda d, s, e: self._add("_header_value", d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise UploadRefused(400, f"the multipart body cannot be read ({exc})") from None
        except UploadRefused:
            raise
        except OSError as exc:
            raise _disk_error(exc) from None

    def finish(self) -> Received:
        if not self._ended:
            raise UploadRefused(400, "the upload ended before the end of its multipart body")
        return self.received

    def abort(self) -> None:
        """Remove the file part being written (the caller removes the media folder)."""
        if self._out is not None:
            fd, tmp, _ = self._out
            os.close(fd)
            tmp.unlink(missing_ok=True)
            self._out = None

    # -- parser callbacks --------------------------------------------------------------------------

    def _add(self, attribute: str, data: bytes) -> None:
        value = getattr(self, attribute) + data
        if len(value) > MAX_FIELD_BYTES:
            raise UploadRefused(400, "a multipart header is too long")
        setattr(self, attribute, value)

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise UploadRefused(400, f"too many parts in one upload (at most {MAX_PARTS})")
        self._disposition = b""

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise UploadRefused(400, "a multipart part has no name in its Content-Disposition header")
        self._field = options[b"name"].decode("utf-8", "replace")
        if b"filename" not in options:
            self._text = bytearray()
            return
        self._text = None
        client = options[b"filename"].decode("utf-8", "replace")
        name = safe_name(client, FALLBACK.get(self._field, "file"))
        folder = self.media.path()
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.fchmod(fd, 0o664)  # the render (another user of the share's group) reads it
        self._out = (fd, Path(tmp), name)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self._text is not None:
            if len(self._text) + len(piece) > MAX_FIELD_BYTES:
                raise UploadRefused(
                    400, f"the form field {self._field!r} is longer than {MAX_FIELD_BYTES} bytes"
                )
            self._text += piece
            return
        assert self._out is not None
        self.total += len(piece)
        if self.total > self.max_bytes:
            raise UploadRefused(
                413,
                f"the upload is larger than api.max_upload_bytes ({self.max_bytes} bytes); send smaller "
                "files, or put them into the share and give their names instead",
            )
        self._since_check += len(piece)
        if self._since_check >= FREE_CHECK_EVERY:
            self._since_check = 0
            self._check_free(len(piece))
        view = memoryview(piece)
        while view:
            view = view[os.write(self._out[0], view) :]

    def _part_end(self) -> None:
        if self._text is not None:
            text = self._text.decode("utf-8", "replace")
            self.received.fields.setdefault(self._field, []).append(text)
            self._text = None
            return
        assert self._out is not None
        fd, tmp, name = self._out
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
            self._out = None
        try:
            final = publish(tmp, tmp.parent / name)  # a second face.mp4 becomes face-2.mp4
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.received.files.setdefault(self._field, []).append(final)

    def _end(self) -> None:
        self._ended = True

    def _check_free(self, coming: int) -> None:
        free = self.free_bytes(self.media.path())
        if free - coming < self.min_free:
            raise UploadRefused(
                507,
                f"the share's disk has {free} bytes free, and uploads must leave api.min_free_bytes "
                f"({self.min_free}) free; free some space and send the job again",
            )


def _disk_error(exc: OSError) -> UploadRefused:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UploadRefused(
            507, "the share's disk filled up during the upload; free some space and send the job again"
        )
    return UploadRefused(500, f"the upload could not be written into the share ({exc.strerror})")
