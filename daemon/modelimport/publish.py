"""Model names, source checksums, and the staging folder that is renamed into place when complete.

A model folder appears whole or not at all: everything is written into a hidden temp folder beside
it, which is renamed to models/NAME at the end (rename is atomic within one filesystem).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daemon.modelimport.errors import ModelImportError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED = frozenset({"baseline", "detectors"})  # the built-in model; the detectors' own folder


def model_name(source: Path, name: str | None) -> str:
    """The given name, or the source file's stem, checked so it makes a safe folder name."""
    chosen = name if name is not None else source.stem
    if not _NAME.match(chosen):
        raise ModelImportError(
            f"'{chosen}' cannot be a model name: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (pass --name to choose one)"
        )
    if chosen.lower() in RESERVED:
        raise ModelImportError(f"'{chosen}' is a reserved name; pass --name to choose another")
    return chosen


def check_free(target: Path, overwrite: bool) -> None:
    """Refuse early, before minutes of work, when the target name is taken."""
    if target.exists() and not overwrite:
        raise ModelImportError(
            f"{target} already exists; pass --name to import under another name, or remove it first"
        )


@contextmanager
def staging(parent: Path, name: str) -> Iterator[Path]:
    """A hidden temp folder in `parent`, removed if the import fails or after it was published."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gone already when publish renamed it


def publish(folder: Path, target: Path, overwrite: bool) -> None:
    """Rename the finished staging folder to `target`; an existing one is replaced only if asked."""
    _readable(folder)
    if not target.exists():
        _rename(folder, target)
        return
    check_free(target, overwrite)
    old = Path(tempfile.mkdtemp(prefix=f".replaced-{target.name}-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(folder, target)
    shutil.rmtree(old, ignore_errors=True)


def _rename(folder: Path, target: Path) -> None:
    try:
        os.rename(folder, target)  # fails if a concurrent import created it meanwhile
    except OSError as exc:
        raise ModelImportError(f"could not create {target}: {exc.strerror}") from exc


def _readable(folder: Path) -> None:
    """mkdtemp/mkstemp make 0700/0600; the daemon may run as another user and must read the model."""
    os.chmod(folder, 0o755)  # noqa: S103 - a models folder is meant to be world-readable
    for path in folder.iterdir():
        os.chmod(path, 0o644)
