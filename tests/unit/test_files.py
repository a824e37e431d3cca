"""write_atomic: a reader sees the old file or the whole new one, never a temp file or half a file."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from daemon.files import file_sha256, write_atomic


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("fsync", [True, False])
def test_bytes_text_and_writer_land_whole(tmp_path: Path, fsync: bool) -> None:
    big = os.urandom(3 << 20)  # several write() calls' worth
    assert write_atomic(tmp_path / "a.bin", big, fsync=fsync).read_bytes() == big
    assert write_atomic(tmp_path / "b.txt", "héllo\n", fsync=fsync).read_text(encoding="utf-8") == "héllo\n"

    def writer(out: BinaryIO) -> None:
        for i in range(4):
            out.write(bytes([i]) * 1000)

    written = write_atomic(tmp_path / "c.bin", writer, fsync=fsync)
    assert written.read_bytes() == b"".join(bytes([i]) * 1000 for i in range(4))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o664])
def test_mode_is_exactly_what_was_asked_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    old = os.umask(0o077)  # mkstemp's 0600 and the umask must not decide
    try:
        path = write_atomic(tmp_path / "f", b"x", mode=mode)
    finally:
        os.umask(old)
    assert mode_of(path) == mode


def test_replaces_an_existing_file_and_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    path.write_text("old")
    path.chmod(0o600)
    write_atomic(path, "new")
    assert path.read_text() == "new"
    assert mode_of(path) == 0o644
    assert leftovers(tmp_path) == []


def test_makes_the_folder(tmp_path: Path) -> None:
    assert write_atomic(tmp_path / "a" / "b" / "f", b"x").read_bytes() == b"x"


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path: Path, error: BaseException) -> None:
    path = tmp_path / "entry.npz"
    path.write_bytes(b"old")
    seen: list[str] = []

    def writer(out: BinaryIO) -> None:
        out.write(b"half")
        seen.extend(leftovers(tmp_path))  # the temp file exists while writing, named .NAME.*.tmp
        raise error

    with pytest.raises(type(error)):
        write_atomic(path, writer)
    assert len(seen) == 1
    assert seen[0].startswith(".entry.npz.")
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_failing_place_removes_the_temp(tmp_path: Path) -> None:
    def refuse(tmp: Path, path: Path) -> Path:
        raise FileExistsError(path)

    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "job.yaml", "a: 1\n", place=refuse)
    assert list(tmp_path.iterdir()) == []


def test_place_decides_the_final_name(tmp_path: Path) -> None:
    def elsewhere(tmp: Path, path: Path) -> Path:
        target = path.with_name("job-2.yaml")
        os.rename(tmp, target)
        return target

    assert write_atomic(tmp_path / "job.yaml", "a: 1\n", place=elsewhere) == tmp_path / "job-2.yaml"
    assert [p.name for p in tmp_path.iterdir()] == ["job-2.yaml"]


def test_file_sha256_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 2 + 17)  # spans three 1 MiB reads
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
