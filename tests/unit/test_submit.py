"""`lipsyncd submit`'s publishing step: a manifest or media file never replaces one that is already there."""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path

import pytest
import yaml

from daemon import submit
from daemon.submit import Submission, rename_noreplace


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / ".new.tmp", tmp_path / "job.yaml"
    src.write_text("new")
    dst.write_text("theirs")
    return src, dst


def _no_renameat2(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that refuses RENAME_NOREPLACE (EINVAL), so the hard-link fallback runs."""

    def refuse(*_args: object) -> int:
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(submit, "_libc_renameat2", lambda: refuse)


def test_existing_target_is_never_replaced(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path)
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert dst.read_text() == "theirs"
    assert src.read_text() == "new"


def test_free_target_is_renamed_into(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path)
    dst.unlink()
    rename_noreplace(src, dst)
    assert dst.read_text() == "new"
    assert not src.exists()


def test_fallback_without_renameat2_never_replaces_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_renameat2(monkeypatch)
    src, dst = _pair(tmp_path)
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert dst.read_text() == "theirs"
    assert src.read_text() == "new"
    dst.unlink()
    rename_noreplace(src, dst)
    assert dst.read_text() == "new"
    assert not src.exists()


def test_taken_manifest_name_gets_the_next_number_and_no_temp_is_left(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "share" / "inbox", tmp_path / "outside"
    inbox.mkdir(parents=True)
    outside.mkdir()
    (inbox / "promo.yaml").write_text("theirs")
    audio, video = outside / "voice.wav", outside / "face.mp4"
    audio.write_bytes(b"a")
    video.write_bytes(b"v")
    request = Submission(audio=audio, videos=(video,), name="promo")
    written = submit.submit(request, inbox=inbox, shared=tmp_path / "share")
    assert written == inbox / "promo-2.yaml"
    assert (inbox / "promo.yaml").read_text() == "theirs"
    assert not [p for p in inbox.rglob(".*") if p.is_file()]


def test_two_inputs_of_one_file_name_keep_their_own_bytes(tmp_path: Path) -> None:
    inbox = tmp_path / "share" / "inbox"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "face.mp4").write_bytes(b"first")
    (b / "face.mp4").write_bytes(b"second")
    (tmp_path / "voice.wav").write_bytes(b"w")
    request = Submission(audio=tmp_path / "voice.wav", videos=(a / "face.mp4", b / "face.mp4"), name="x")
    manifest = submit.submit(request, inbox=inbox, shared=tmp_path / "share")
    videos = yaml.safe_load(manifest.read_text())["videos"]
    assert [Path(v).read_bytes() for v in videos] == [b"first", b"second"]
    assert (Path(videos[0]).parent.stat().st_mode & 0o777) == 0o775


@pytest.mark.skipif(not Path("/proc/version").exists(), reason="renameat2 is Linux's")
def test_linux_uses_renameat2_itself(tmp_path: Path) -> None:
    assert submit._libc_renameat2() is not None  # a rename, so the inbox takes the manifest at once
