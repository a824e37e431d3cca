"""`lipsyncd submit`: write a manifest into the inbox the way scripts should, atomically, after copying
media that lies outside the shared folder into it (the daemon refuses to read outside the share)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from daemon.manifest import job_name


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


def submit(request: Submission, *, inbox: Path, shared: Path) -> Path:
    """Returns the manifest path written into the inbox."""
    name = job_name(request.name or request.videos[0].stem if request.videos else "")
    if not name:
        raise SubmitError("give the job a --name with letters or digits")
    for path in (request.audio, *request.videos):
        if not path.is_file():
            raise SubmitError(f"{path}: no such file")
    media_dir = inbox / "media" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    document: dict[str, object] = {
        "name": name,
        "audio": _place(request.audio, media_dir, shared.resolve()),
        "videos": [_place(v, media_dir, shared.resolve()) for v in request.videos],
        "distribute": request.distribute,
    }
    optional = {"link_ttl": request.link_ttl, "notify": list(request.notify), "model": request.model}
    document.update({key: value for key, value in optional.items() if value})
    return _write_manifest(inbox, name, document)


def _place(path: Path, media_dir: Path, shared: Path) -> str:
    """A path the manifest can use: inside the share as it is, else copied into the inbox's media folder."""
    real = path.resolve()
    if real.is_relative_to(shared):
        return str(real)
    media_dir.mkdir(parents=True, exist_ok=True)
    target = media_dir / path.name
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=media_dir)
    os.close(fd)
    shutil.copyfile(real, tmp)
    os.replace(tmp, target)
    return str(target)


def _write_manifest(inbox: Path, name: str, document: dict[str, object]) -> Path:
    inbox.mkdir(parents=True, exist_ok=True)
    target, n = inbox / f"{name}.yaml", 1
    while target.exists():
        n += 1
        target = inbox / f"{name}-{n}.yaml"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".yaml.tmp", dir=inbox)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        yaml.safe_dump(document, out, allow_unicode=True, sort_keys=False)
    os.chmod(tmp, 0o664)
    os.rename(tmp, target)  # arrives complete: the inbox takes renamed-in files at once
    return target
