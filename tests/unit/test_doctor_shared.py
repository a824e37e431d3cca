"""doctor's checks for running on several hosts: the state directory on a local disk (by statfs f_type),
a real create+rename+delete in the shared folders, and a store that opens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.config import Config, PathsConfig
from daemon.doctor import FUSE, _state_local, _store, fs_type, probe_writable, state_filesystem_check
from daemon.store import JobStore

STATE = Path("/var/lib/lipsyncd/state")


@pytest.mark.parametrize(
    ("f_type", "name"),
    [
        (0x6969, "NFS"),
        (0xFF534D42, "SMB/CIFS"),
        (0xFE534D42, "SMB2/3"),
        (0x517B, "SMB"),
        (0x00C36400, "Ceph"),
    ],
)
def test_network_filesystems_are_refused_for_the_state_directory(f_type: int, name: str) -> None:
    check = state_filesystem_check(STATE, f_type)
    assert not check.ok
    assert f"{STATE} is on {name}, a network filesystem" in check.detail
    assert "paths.state" in check.detail


@pytest.mark.parametrize("f_type", [0xEF53, 0x58465342, 0x9123683E, 0x01021994])  # ext4, xfs, btrfs, tmpfs
def test_local_filesystems_pass(f_type: int) -> None:
    check = state_filesystem_check(STATE, f_type)
    assert check.ok
    assert not check.warn


def test_fuse_is_a_warning_naming_sshfs() -> None:
    check = state_filesystem_check(STATE, FUSE)
    assert check.ok
    assert check.warn
    assert "sshfs" in check.detail


def test_statfs_reads_this_machines_filesystem_type(tmp_path: Path) -> None:
    proc = fs_type(Path("/proc"))
    assert proc == 0x9FA0  # PROC_SUPER_MAGIC: the struct is read at the right place
    config = Config(paths=PathsConfig(state=tmp_path / "not" / "made" / "yet"))
    [check] = _state_local(config)  # a missing state dir is judged by the folder it will be made in
    assert check.detail.endswith(f"(filesystem type {fs_type(tmp_path):#x})")


def test_the_probe_creates_renames_and_deletes(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    assert probe_writable(tmp_path) is None
    assert os.listdir(tmp_path) == ["keep.txt"], "the probe leaves nothing behind"


def test_a_failed_rename_is_named_and_cleaned_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refuse)
    problem = probe_writable(tmp_path)
    assert problem is not None
    assert problem.startswith("could not rename a probe file (Permission denied)")
    assert os.listdir(tmp_path) == []


def test_a_probe_where_no_folder_can_hold_files(tmp_path: Path) -> None:
    plain = tmp_path / "a-file"
    plain.write_text("")
    problem = probe_writable(plain)
    assert problem is not None
    assert problem.startswith("could not create a probe file")


def test_the_store_opens_and_answers(tmp_path: Path) -> None:
    config = Config(paths=PathsConfig(state=tmp_path))
    [missing] = _store(config)
    assert missing.ok
    assert "created on first start" in missing.detail
    JobStore(tmp_path).close()
    [found] = _store(config)
    assert found.ok
    assert found.detail.endswith("lipsyncd.db: 0 job(s)")
    (tmp_path / "lipsyncd.db").write_bytes(b"not a database at all" * 100)
    [broken] = _store(config)
    assert not broken.ok
    assert "does not answer" in broken.detail
