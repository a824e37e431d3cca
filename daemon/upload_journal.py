"""What the uploader asks the job store to remember about unfinished multipart uploads.

These types live apart from the uploader so the store can persist them without importing boto3
(about 0.3 s at every start of every command that opens the store).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PartRecord:
    part_number: int
    etag: str  # as the server returned it, quotes included
    size: int
    checksum: str  # base64 MD5 of the part (what Content-MD5 carried)


@dataclass(frozen=True)
class UploadState:
    """What a journal remembers about one unfinished multipart upload."""

    key: str
    upload_id: str
    part_size: int
    parts: tuple[PartRecord, ...] = ()


class UploadJournal(Protocol):
    """Persistence for resumable uploads; the job store implements it. Calls come from one thread."""

    def load(self, key: str) -> UploadState | None:
        """The unfinished upload of this object key, or None."""
        ...

    def start(self, key: str, upload_id: str, part_size: int) -> None:
        """A new multipart upload began; replaces any earlier state for this key (parts included)."""
        ...

    def part_done(self, key: str, part_number: int, etag: str, size: int, checksum: str) -> None:
        """The server accepted this part; must be durable when it returns."""
        ...

    def finish(self, key: str) -> None:
        """Forget the key: the upload completed or was aborted."""
        ...
