"""Job manifests: parse YAML or JSON, validate strictly, keep media inside the share.

Every problem found is collected, so a user fixing a manifest sees all of them at once.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from daemon.config import parse_duration

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
MAX_MANIFEST_BYTES = 1_000_000
MAX_VIDEOS = 1000
MAX_LINK_TTL = 604800  # seconds: the SigV4 limit for presigned URLs
KEYS = ("name", "audio", "videos", "distribute", "link_ttl", "notify", "model")
EXAMPLE = "name: spring-promo\naudio: media/promo.wav\nvideos:\n  - media/anchor_a.mp4\n"


class ManifestError(Exception):
    """Why a manifest cannot become a job; `problems` are plain-words lines."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path.name}: " + "; ".join(problems))


@dataclass(frozen=True)
class MediaRef:
    """A media file as the user wrote it and where it really is."""

    written: str
    path: Path


@dataclass(frozen=True)
class Manifest:
    source: Path  # the manifest file as it was found
    name: str  # safe for folder and object names
    audio: MediaRef
    videos: tuple[MediaRef, ...]
    distribute: bool = False
    link_ttl: float | None = None  # seconds; None means the configured default
    notify: tuple[str, ...] = ()
    model: str | None = None


def is_manifest_name(path: Path) -> bool:
    """Candidates the inbox takes: visible files with a manifest suffix (temp files start with '.')."""
    return path.suffix.lower() in MANIFEST_SUFFIXES and not path.name.startswith((".", "~"))


def job_name(raw: str) -> str:
    """A folder- and key-safe name: letters of any script, digits, '-', '_' and '.'; other runs become '-'.
    At most 100 characters and 150 bytes (file names are limited to 255 bytes; suffixes are added)."""
    text = unicodedata.normalize("NFC", raw)
    text = re.sub(r"[^\w.-]+", "-", text).strip("-.")[:100]
    while len(text.encode("utf-8", "surrogatepass")) > 150:
        text = text[:-1]
    return text.rstrip("-.")


def load_manifest(
    path: Path,
    *,
    base_dir: Path,
    shared: Path,
    webhooks: Collection[str] = (),
    models: Collection[str] | None = None,
) -> Manifest:
    """Read `path` and validate it; media paths are relative to `base_dir` and must stay inside `shared`."""
    data = _read(path)
    return check_document(data, path, base_dir=base_dir, shared=shared, webhooks=webhooks, models=models)


def check_document(
    data: dict[str, Any],
    path: Path,
    *,
    base_dir: Path,
    shared: Path,
    webhooks: Collection[str] = (),
    models: Collection[str] | None = None,
) -> Manifest:
    """The daemon's checks of a parsed manifest (`lipsyncd submit` runs them too, before it writes)."""
    problems: list[str] = []
    unknown = sorted(set(data) - set(KEYS), key=str)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        problems.append(f"unknown key(s) {names}; the keys a manifest may have are: {', '.join(KEYS)}")
    check = _Checker(problems, base_dir.resolve(), shared.resolve())
    manifest = Manifest(
        source=path,
        name=check.name(data.get("name"), path),
        audio=check.media("audio", data.get("audio")) or MediaRef("", Path()),
        videos=check.videos(data.get("videos")),
        distribute=check.flag("distribute", data.get("distribute", False)),
        link_ttl=check.ttl(data.get("link_ttl")),
        notify=check.notify(data.get("notify"), webhooks),
        model=check.model(data.get("model"), models),
    )
    if problems:
        raise ManifestError(path, problems)
    return manifest


# -- reading -----------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """Anchors and aliases have no use in a manifest and enable 'billion laughs' bombs: refuse them.
    A key given twice is refused too (PyYAML would silently keep the last one)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _Refused("YAML aliases (*name) are not allowed in a manifest; write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise _Refused(
                    f"the key '{key}' appears twice (line {key_node.start_mark.line + 1}); keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Refused(Exception):
    """A manifest rule broken while parsing, already in plain words."""


def _read(path: Path) -> dict[str, Any]:
    def fail(problem: str) -> ManifestError:
        return ManifestError(path, [problem])

    raw = _read_regular_file(path, fail)
    if b"\x00" in raw:
        raise fail("the file contains NUL bytes; save it as plain UTF-8 text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(f"the file is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        data = _parse(path, text)
    except _Refused as exc:
        raise fail(str(exc)) from None
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise fail(_syntax_problem(exc)) from None
    except RecursionError:
        raise fail("it is nested far too deeply to be a manifest") from None
    if not isinstance(data, dict):
        raise fail(f"it must be a mapping of keys to values, for example:\n{EXAMPLE}")
    return data


def _read_regular_file(path: Path, fail: Callable[[str], ManifestError]) -> bytes:
    """Read without following a symlink (it could point outside the share) and without blocking on a
    named pipe: only a plain file of sane size is a manifest."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise fail("it is a symbolic link; put the manifest file itself into the inbox") from None
        raise fail(f"it cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise fail("it is not a regular file (a folder, pipe or device); put a plain text file there")
        if info.st_size > MAX_MANIFEST_BYTES:
            limit = MAX_MANIFEST_BYTES
            raise fail(f"the file is {info.st_size} bytes; a manifest is a few lines (at most {limit} bytes)")
        return handle.read(MAX_MANIFEST_BYTES + 1)


def manifest_bytes(path: Path) -> bytes:
    """The file's bytes, read as safely as `load_manifest` reads them; ManifestError when it would refuse."""
    return _read_regular_file(path, lambda problem: ManifestError(path, [problem]))


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _Refused(f"the key '{key}' appears twice; keep one")
    return dict(pairs)


def _syntax_problem(exc: Exception) -> str:
    """Where the text stops making sense, in words a person can act on (not the parser's vocabulary)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"it is not valid JSON: {exc.msg.lower()} at line {exc.lineno}, column {exc.colno}"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" near line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    hint = "check the brackets [ ], quotes and indentation of that line and the one before"
    if "tab" in str(getattr(exc, "problem", "") or ""):
        hint = "indent with spaces, not tabs"
    return f"it is not valid YAML{where}: {hint}"


# -- checking ----------------------------------------------------------------------------------------


@dataclass
class _Checker:
    problems: list[str]
    base_dir: Path
    shared: Path

    def name(self, raw: Any, path: Path) -> str:
        if raw is None:
            raw = path.stem
        elif not isinstance(raw, str):
            self.problems.append(f"'name' must be text, got {_kind(raw)}")
            return ""
        name = job_name(raw)
        if not name:
            self.problems.append(f"'name' {raw!r} has no letters or digits to name a folder with")
        return name

    def media(self, key: str, raw: Any) -> MediaRef | None:
        if raw is None:
            self.problems.append(f"'{key}' is missing: give the path of the file, relative to the manifest")
            return None
        if not isinstance(raw, str) or not raw.strip():
            self.problems.append(f"'{key}' must be a file path (text), got {_kind(raw)}")
            return None
        problem = _media_problem(raw, self.base_dir, self.shared)
        if problem:
            self.problems.append(f"'{key}' {raw!r}: {problem}")
            return None
        return MediaRef(raw, (self.base_dir / raw).resolve())

    def videos(self, raw: Any) -> tuple[MediaRef, ...]:
        if raw is None:
            self.problems.append("'videos' is missing: list one or more avatar videos (or images)")
            return ()
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            self.problems.append(f"'videos' must be a list of file paths, got {_kind(raw)}")
            return ()
        if len(raw) > MAX_VIDEOS:
            self.problems.append(f"'videos' lists {len(raw)} files; split the job (at most {MAX_VIDEOS})")
            return ()
        refs = [self.media(f"videos[{i}]", item) for i, item in enumerate(raw)]
        found = [r for r in refs if r is not None]
        self._no_repeats(found)
        return tuple(found)

    def _no_repeats(self, refs: list[MediaRef]) -> None:
        seen: dict[Path, str] = {}
        for ref in refs:
            if ref.path in seen:
                self.problems.append(f"'videos' lists {ref.written!r} twice (also as {seen[ref.path]!r})")
            seen.setdefault(ref.path, ref.written)

    def flag(self, key: str, raw: Any) -> bool:
        if not isinstance(raw, bool):
            self.problems.append(f"'{key}' must be true or false, got {raw!r}")
            return False
        return raw

    def ttl(self, raw: Any) -> float | None:
        if raw is None:
            return None
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            self.problems.append(f"'link_ttl': {exc}")
            return None
        if not 1 <= seconds <= MAX_LINK_TTL:
            self.problems.append(
                f"'link_ttl' {raw!r} is out of range: links can last from 1s up to 7d (604800 seconds), "
                "the limit of signed S3 links"
            )
            return None
        return seconds

    def notify(self, raw: Any, webhooks: Collection[str]) -> tuple[str, ...]:
        if raw is None:
            return ()
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            self.problems.append(f"'notify' must be a list of webhook names, got {_kind(raw)}")
            return ()
        for name in raw:
            if name not in webhooks:
                known = ", ".join(sorted(webhooks)) or "none are configured"
                self.problems.append(f"'notify': no webhook named {name!r} in the configuration ({known})")
        return tuple(raw)

    def model(self, raw: Any, models: Collection[str] | None) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str) or not raw:
            self.problems.append(f"'model' must be a model name, got {_kind(raw)}")
            return None
        if models is not None and raw not in models:
            known = ", ".join(sorted(models))
            self.problems.append(
                f"'model': no model named {raw!r} (available: {known}); see `lipsyncd model list`"
            )
        return raw


def _media_problem(raw: str, base_dir: Path, shared: Path) -> str | None:
    """Why this path cannot be used, or None. Resolving follows symlinks, so escapes through them show."""
    if "\x00" in raw:
        return "the path contains a NUL character"
    if ".." in Path(raw).parts:
        return "paths may not contain '..'; put the file in the shared folder and name it from there"
    try:
        real = (base_dir / raw).resolve()
    except (OSError, RuntimeError) as exc:
        return f"the path cannot be resolved ({exc})"
    if not real.is_relative_to(shared):
        return "the file lies outside the shared folder (directly or through a symbolic link); copy it in"
    if not real.exists():
        return f"the file does not exist (looked for {real.relative_to(shared)} in the shared folder)"
    if not real.is_file():
        return "this is not a regular file"
    return None


def _kind(value: Any) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "text",
        bool: "true/false",
        int: "a number",
        float: "a number",
    }
    return names.get(type(value), type(value).__name__) + (
        f" {value!r}" if isinstance(value, (int, float)) else ""
    )


def error_report(error: ManifestError) -> str:
    """The text of inbox/failed/NAME.error.txt: what is wrong and how to fix it, for a non-programmer."""
    lines = [f"lipsyncd could not start a job from {error.path.name}.", "", "What is wrong:"]
    lines += [f"  - {problem}" for problem in error.problems]
    lines += [
        "",
        "How to fix it: correct the manifest and drop it into the inbox again.",
        "Your media files were not touched. An example manifest:",
        "",
        *("  " + line for line in EXAMPLE.splitlines()),
        "",
    ]
    return "\n".join(lines)


def job_failure_report(manifest_name: str, reason: str) -> str:
    """The error file of a job that was accepted but could not be rendered (its audio is unusable, say)."""
    return f"lipsyncd could not render the job from {manifest_name}.\n\nWhat is wrong:\n  {reason}\n"
