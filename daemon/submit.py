"""`lipsyncd submit`: write a manifest into the inbox the way scripts should, atomically, after copying
media that lies outside the shared folder into it (the daemon refuses to read outside the share)."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import yaml

from daemon.files import write_atomic
from daemon.manifest import ManifestError, check_document, job_name


@dataclass(frozen=True)
class Submission:
    audio: Path
    videos: tuple[Path, ...]
    name: str | None = None
    distribute: bool = False
    link_ttl: str | None = None
    notify: tuple[str, ...] = ()
    model: str | None = None


class SubmitError(Exception):
    pass


@dataclass(frozen=True)
class Checks:
    """What the daemon checks a manifest against: the configured webhooks and the installed models."""

    webhooks: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None  # None: any model name passes (as the daemon's check)


def submit(request: Submission, *, inbox: Path, shared: Path, checks: Checks = Checks()) -> Path:
    """Returns the manifest path written into the inbox. A manifest the daemon would refuse is refused
    here with the daemon's words, before anything is copied or written."""
    name = job_name(request.name or request.videos[0].stem if request.videos else "")
    if not name:
        raise SubmitError("give the job a --name with letters or digits")
    for path in (request.audio, *request.videos):
        _readable(path)
    # media as they are now: the ones outside the share are copied in, so only the share check waits
    _check(_document(request, name, str(request.audio.resolve()), [str(v.resolve()) for v in request.videos]),
           inbox, Path("/"), checks)  # fmt: skip
    media_dir = submit_media_dir(inbox, name)
    try:
        document = _document(
            request,
            name,
            _place(request.audio, media_dir, shared.resolve()),
            [_place(v, media_dir, shared.resolve()) for v in request.videos],
        )
        _check(document, inbox, shared, checks)  # the daemon's exact verdict on what it will read
        return _write_manifest(inbox, name, document)
    except BaseException:
        media_dir.remove()
        raise


def _document(request: Submission, name: str, audio: str, videos: list[str]) -> dict[str, object]:
    document: dict[str, object] = {
        "name": name,
        "audio": audio,
        "videos": videos,
        "distribute": request.distribute,
    }
    optional = {"link_ttl": request.link_ttl, "notify": list(request.notify), "model": request.model}
    document.update({key: value for key, value in optional.items() if value})
    return document


def _check(document: dict[str, object], inbox: Path, shared: Path, checks: Checks) -> None:
    """The daemon's own manifest checks (daemon/manifest.py), with its words."""
    source = inbox / f"{document['name']}.yaml"
    try:
        check_document(
            document, source, base_dir=inbox, shared=shared, webhooks=checks.webhooks, models=checks.models
        )
    except ManifestError as exc:
        raise SubmitError("the daemon would refuse this job: " + "; ".join(exc.problems)) from None


def _readable(path: Path) -> None:
    if not path.is_file():
        raise SubmitError(f"{path}: no such file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise SubmitError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None


def submit_media_dir(inbox: Path, name: str) -> MediaDir:
    """The folder (made on first use) for the media one submit copies or uploads into the share; the
    render's sweep (daemon/submitted_media.py) knows its name and removes it once its job is finished."""
    return MediaDir(inbox / "media", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-")


class MediaDir:
    """This submit's own folder under inbox/media, made on first use: two submits of one name in one
    second must never share a folder, or a same-named file of one replaces the other's."""

    def __init__(self, parent: Path, prefix: str) -> None:
        self.parent, self.prefix = parent, prefix
        self._path: Path | None = None

    def path(self) -> Path:
        if self._path is None:
            self.parent.mkdir(parents=True, exist_ok=True)
            made = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.parent))
            # mkdtemp makes it 0700; the daemon (another user of the share's group) must read it.
            # Keep the setgid bit the folder took from a setgid share, so files stay in the group.
            os.chmod(made, 0o775 | (made.stat().st_mode & stat.S_ISGID))  # noqa: S103
            self._path = made
        return self._path

    def remove(self) -> None:
        """Take back what this submit copied when it refuses the job or fails half-way."""
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)


def _place(path: Path, media_dir: MediaDir, shared: Path) -> str:
    """A path the manifest can use: inside the share as it is, else copied into the inbox's media folder."""
    real = path.resolve()
    if real.is_relative_to(shared):
        return str(real)
    folder = media_dir.path()

    def copy(out: BinaryIO) -> None:
        with real.open("rb") as source:
            shutil.copyfileobj(source, out, 1 << 20)

    # 0664: the daemon (another user of the share's group) must read it, as it reads the manifest.
    # Two inputs of one name (a/face.mp4, b/face.mp4) must not replace each other either.
    return str(write_atomic(folder / path.name, copy, mode=0o664, place=publish))


def _write_manifest(inbox: Path, name: str, document: dict[str, object]) -> Path:
    text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    # the inbox takes a renamed-in file at once; never one that replaces another's manifest
    return write_atomic(inbox / f"{name}.yaml", text, mode=0o664, place=publish)


def publish(tmp: Path, path: Path) -> Path:
    """Rename `tmp` to `path` (FOLDER/STEM.SUFFIX), or STEM-2.SUFFIX, ... : the first name nobody holds."""
    folder, stem, suffix = path.parent, path.stem, path.suffix
    n = 1
    while True:
        target = folder / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            rename_noreplace(tmp, target)
            return target
        except FileExistsError:
            n += 1  # another submit (or a user) took this name first: never replace theirs


def rename_noreplace(src: Path, dst: Path) -> None:
    """Move `src` to `dst` in one step, raising FileExistsError rather than replacing an existing `dst`.

    renameat2(RENAME_NOREPLACE) keeps it a rename, which the inbox takes at once as complete; where the
    filesystem or kernel lacks it, a hard link (which never replaces either) and an unlink of `src`."""
    try:
        _renameat2_noreplace(src, dst)
        return
    except _NoRenameat2:
        pass
    os.link(src, dst)  # FileExistsError when taken; the inbox sees a new file and waits the settle time
    src.unlink()


class _NoRenameat2(Exception):
    pass


_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def _renameat2_noreplace(src: Path, dst: Path) -> None:
    renameat2 = _libc_renameat2()
    if renameat2 is None:
        raise _NoRenameat2
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # this filesystem or kernel cannot do it
        raise _NoRenameat2
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


def _libc_renameat2() -> Callable[..., int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+; absent on macOS and old libcs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func
