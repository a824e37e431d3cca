"""Small file helpers shared by the render and upload sides."""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (bounded memory whatever the size)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(READ_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
