"""Small file helpers shared by the render and upload sides."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

READ_CHUNK = 1 << 20

# What write_atomic writes: bytes, text (UTF-8), or a function that writes into the open temp file (for
# data too big to build in memory first, e.g. np.savez of a cache entry).
Content = bytes | str | Callable[[BinaryIO], object]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (bounded memory whatever the size)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(READ_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(
    path: Path,
    content: Content,
    *,
    mode: int = 0o644,
    fsync: bool = True,
    place: Callable[[Path, Path], Path] | None = None,
) -> Path:
    """Write `path` so that no reader ever sees half a file: a temp file `.NAME.*.tmp` in the same folder
    (the same filesystem, so the rename is atomic), written, given `mode`, then renamed over `path`.

    fsync: the file's bytes reach the disk before the rename and the rename before returning, so a
    power cut leaves the old file or the new one, never an empty one. Off for big or throwaway files.
    place(temp, path): moves the finished temp file and returns where it went (default os.replace);
    submit uses it to take a free name instead of replacing one.
    The temp file is removed on any error, KeyboardInterrupt included. Returns the final path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # before any byte: a 0600 secret is never readable by others
            _write(out, content)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        final = place(tmp, path) if place else _replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(final.parent)
    return final


def _write(out: BinaryIO, content: Content) -> None:
    if isinstance(content, str):
        out.write(content.encode("utf-8"))
    elif isinstance(content, bytes):
        out.write(content)
    else:
        content(out)


def _replace(tmp: Path, path: Path) -> Path:
    os.replace(tmp, path)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (the directory entry, not only the file's bytes)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
