"""Avatar cache: what the face detector found in an avatar video, kept on disk so the next render of the
same video skips detection (decoding still happens).

Entries are keyed by the video's content (sha256, read streaming, so a renamed or re-uploaded copy still
hits) and by the detector's fingerprint (name and settings, `faces.detector_fingerprint`), so changing the
detector or its settings misses. An entry records the detector's raw answer for each source frame it ran
on, not the final smoothed boxes: the tracker replays those answers and so produces exactly the boxes a
fresh run would, whatever `detect_every` or the audio's length; frames never seen are detected and added.

Files: `FOLDER/SHA256-KEY.npz` (KEY: 16 hex digits of the fingerprint's sha256), written to a temp name in
the same folder and renamed into place; an unreadable file counts as a miss and is replaced.

A model family whose avatar inputs are costly (MuseTalk: two VAE encodes a frame) also keeps them here,
in `FOLDER/SHA256-inputs-KEY.npz` (KEY from the model's `inputs_key`: its encoder file and preprocessing
version), by source frame and face box (landmarks included): a later render of the same video whose
tracker gives the same box for a frame reuses that frame's latents. At most the render's memo budget
is kept per video (128 MB, about 4,000 MuseTalk frames); frames past it are encoded on every render.

The folder is bounded (`render.avatar_cache_size`): after each write the least recently used entries go
until the rest fit. A hit touches its file's mtime, so mtime is the last use. Only finished `.npz` files
are counted and removed; temp files (`.NAME.npz.*.tmp`, being written) are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from daemon.files import file_sha256, write_atomic
from daemon.render.faces import detector_fingerprint
from daemon.render.types import Box, FaceDetector, VideoInfo

log = structlog.get_logger(__name__)

FORMAT = 2  # bump when the file layout changes: old files then miss (2: boxes carry landmarks)
POINTS = 10  # Box.landmarks: five (x, y) points


@dataclass
class AvatarTrack:
    """One video's detections under one detector; a `faces.DetectionMemo`."""

    video_sha256: str
    fingerprint: str
    width: int
    height: int
    fps: float
    detections: dict[int, list[Box]] = field(default_factory=dict)
    added: int = 0  # detections made since loading: the entry needs saving when > 0

    def get(self, index: int) -> list[Box] | None:
        return self.detections.get(index)

    def put(self, index: int, boxes: list[Box]) -> None:
        self.detections[index] = list(boxes)
        self.added += 1


class AvatarCache:
    """The folder of entries (e.g. `STATE/avatars`); `track()` before rendering, `save()` after.

    `max_bytes`: the folder's bound (None: unbounded); least recently used entries go past it."""

    def __init__(self, folder: Path, max_bytes: int | None = None) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def track(self, video: Path, detector: FaceDetector, info: VideoInfo) -> AvatarTrack:
        """The entry for this video and detector: loaded when there is a usable one, else empty."""
        fresh = AvatarTrack(
            file_sha256(video), detector_fingerprint(detector), info.width, info.height, info.fps
        )
        path = self._path(fresh)
        loaded = _load(path, fresh) if path.is_file() else None
        if loaded:
            _touch(path)
        found = len(loaded.detections) if loaded else 0
        log.info("avatar_cache", video=str(video), hit=loaded is not None, detections=found)
        return loaded or fresh

    def save(self, track: AvatarTrack) -> None:
        """Write the entry if it learned something new; never raises for a full disk (only logs)."""
        if not track.added:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(self._path(track), _arrays(track))
        except (OSError, ValueError) as exc:
            log.warning("avatar_cache_not_saved", folder=str(self.folder), error=str(exc))
            return
        track.added = 0
        log.info("avatar_cache_saved", video_sha256=track.video_sha256, detections=len(track.detections))
        self.trim()

    def inputs(self, video: Path, key: str, budget: int) -> AvatarInputs:
        """A model's kept avatar inputs for this video (see `AvatarInputs`); empty on a miss."""
        return load_inputs(self.folder, video, key, budget)

    def save_inputs(self, inputs: AvatarInputs) -> None:
        if save_inputs(self.folder, inputs):
            self.trim()

    def trim(self) -> list[Path]:
        """Remove least recently used entries until the folder fits `max_bytes`; returns those removed."""
        if self.max_bytes is None:
            return []
        removed = trim_lru(self.folder, self.max_bytes)
        if removed:
            log.info(
                "avatar_cache_trimmed", folder=str(self.folder), removed=len(removed), limit=self.max_bytes
            )
        return removed

    def _path(self, track: AvatarTrack) -> Path:
        key = hashlib.sha256(track.fingerprint.encode()).hexdigest()[:16]
        return self.folder / f"{track.video_sha256}-{key}.npz"


InputKey = tuple[int, Box]  # (source frame index, the tracker's face box)


class AvatarInputs:
    """A model's avatar inputs by (source frame, box), up to `budget` bytes; later ones are not kept.

    Used within one render (a frame shown again reuses them) and, through `AvatarCache.inputs`, between
    renders of the same video."""

    def __init__(self, budget: int, video_sha256: str = "", key: str = "") -> None:
        self.budget = budget
        self.video_sha256 = video_sha256
        self.key = key
        self.used = 0
        self.hits = 0  # frames served without computing their inputs
        self.added = 0  # entries since loading: the entry needs saving when > 0
        self._kept: dict[InputKey, np.ndarray] = {}

    def __contains__(self, key: InputKey) -> bool:
        return key in self._kept

    def __len__(self) -> int:
        return len(self._kept)

    def take(self, key: InputKey) -> np.ndarray:
        return self._kept[key]

    def keep(self, inputs: dict[InputKey, np.ndarray], *, loaded: bool = False) -> None:
        for key, value in inputs.items():
            if self.used + value.nbytes > self.budget:
                return
            self._kept[key] = np.array(value, copy=True)  # a row of a batch: keep it alone, not the batch
            self.used += value.nbytes
            self.added += not loaded

    def arrays(self) -> dict[str, np.ndarray]:
        keys = sorted(self._kept, key=lambda k: k[0])
        return {
            "format": np.array(FORMAT),
            "video_sha256": np.array(self.video_sha256),
            "key": np.array(self.key),
            "indices": np.array([index for index, _ in keys], np.int64),
            **_box_arrays([box for _, box in keys]),
            "values": np.stack([self._kept[k] for k in keys]),
        }


def _inputs_path(folder: Path, video_sha256: str, key: str) -> Path:
    return folder / f"{video_sha256}-inputs-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def load_inputs(folder: Path, video: Path, key: str, budget: int) -> AvatarInputs:
    """The kept inputs of this video under this model key, or an empty set (a bad file is a miss)."""
    fresh = AvatarInputs(budget, file_sha256(video), key)
    path = _inputs_path(folder, fresh.video_sha256, key)
    if not path.is_file():
        log.info("avatar_inputs", video=str(video), hit=False, frames=0)
        return fresh
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        if int(arrays["format"]) != FORMAT or str(arrays["key"]) != key:
            raise ValueError("the entry belongs to another model or version")
        boxes = _boxes(arrays)
        if not len(arrays["indices"]) == len(boxes) == len(arrays["values"]):
            raise ValueError("the entry's arrays do not agree in length")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("avatar_inputs_unreadable", path=str(path), error=str(exc))
        return fresh
    rows = zip(arrays["indices"], boxes, arrays["values"], strict=True)
    fresh.keep({(int(i), b): v for i, b, v in rows}, loaded=True)
    _touch(path)
    log.info("avatar_inputs", video=str(video), hit=True, frames=len(fresh))
    return fresh


def save_inputs(folder: Path, inputs: AvatarInputs) -> bool:
    """Write the entry if the render added to it (True when written); a full disk only logs."""
    if not inputs.added or not inputs.video_sha256:
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(_inputs_path(folder, inputs.video_sha256, inputs.key), inputs.arrays())
    except (OSError, ValueError) as exc:
        log.warning("avatar_inputs_not_saved", folder=str(folder), error=str(exc))
        return False
    inputs.added = 0
    log.info("avatar_inputs_saved", video_sha256=inputs.video_sha256, frames=len(inputs))
    return True


def trim_lru(folder: Path, max_bytes: int) -> list[Path]:
    """Remove the least recently used entries (oldest mtime first) until the rest total at most
    `max_bytes`. Temp files being written (dot-names) are neither counted nor removed; an entry another
    worker removed meanwhile is skipped."""
    entries = []
    for path in folder.glob("*.npz"):
        if path.name.startswith("."):
            continue
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((stat.st_mtime_ns, stat.st_size, path))
    entries.sort()
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in entries:
        if total <= max_bytes:
            break
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("avatar_cache_not_trimmed", path=str(path), error=str(exc))
            continue
        total -= size
        removed.append(path)
    return removed


def _touch(path: Path) -> None:
    """Mark an entry as just used (its mtime is the LRU clock); a read-only or vanished file is fine."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _arrays(track: AvatarTrack) -> dict[str, np.ndarray]:
    indices = sorted(track.detections)
    boxes = [box for i in indices for box in track.detections[i]]
    return {
        "format": np.array(FORMAT),
        "video_sha256": np.array(track.video_sha256),
        "fingerprint": np.array(track.fingerprint),
        "size_fps": np.array([track.width, track.height, track.fps], np.float64),
        "indices": np.array(indices, np.int64),
        "counts": np.array([len(track.detections[i]) for i in indices], np.int64),
        **_box_arrays(boxes),
    }


def _box_arrays(boxes: list[Box]) -> dict[str, np.ndarray]:
    """Boxes as arrays: corners (N, 4), landmarks (N, 10; zeros where `has_landmarks` is False)."""
    if any(b.landmarks is not None and len(b.landmarks) != POINTS for b in boxes):
        raise ValueError(f"a box's landmarks are not {POINTS // 2} points")
    return {
        "boxes": np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.int64).reshape(-1, 4),
        "has_landmarks": np.array([b.landmarks is not None for b in boxes], bool),
        "landmarks": np.array([b.landmarks or (0,) * POINTS for b in boxes], np.int64).reshape(-1, POINTS),
    }


def _boxes(arrays: dict[str, np.ndarray]) -> list[Box]:
    corners, has, points = arrays["boxes"], arrays["has_landmarks"], arrays["landmarks"]
    if not len(corners) == len(has) == len(points):
        raise ValueError("the entry's box arrays do not agree in length")
    return [
        Box(int(c[0]), int(c[1]), int(c[2]), int(c[3]), tuple(map(int, p)) if h else None)
        for c, h, p in zip(corners, has, points, strict=True)
    ]


def _load(path: Path, want: AvatarTrack) -> AvatarTrack | None:
    """The entry at `path` if it is readable and really is `want`'s (same hash, detector, size, fps)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        if not _matches(arrays, want):
            raise ValueError("the entry belongs to another video, detector or decoder setting")
        detections = _detections(arrays)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("avatar_cache_unreadable", path=str(path), error=str(exc))
        return None
    return AvatarTrack(want.video_sha256, want.fingerprint, want.width, want.height, want.fps, detections)


def _matches(arrays: dict[str, np.ndarray], want: AvatarTrack) -> bool:
    return (
        int(arrays["format"]) == FORMAT
        and str(arrays["video_sha256"]) == want.video_sha256
        and str(arrays["fingerprint"]) == want.fingerprint
        and arrays["size_fps"].tolist() == [want.width, want.height, want.fps]
    )


def _detections(arrays: dict[str, np.ndarray]) -> dict[int, list[Box]]:
    counts, boxes = arrays["counts"], _boxes(arrays)
    if counts.sum() != len(boxes) or len(counts) != len(arrays["indices"]):
        raise ValueError("the entry's arrays do not agree in length")
    ends = np.cumsum(counts)
    return {
        int(index): boxes[end - count : end]
        for index, count, end in zip(arrays["indices"], counts, ends, strict=True)
    }


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Streamed into the temp file (entries reach 128 MB); 0600 and no fsync: the daemon's own cache,
    and an entry lost to a power cut is only a miss (a damaged one fails to load and is rebuilt)."""
    write_atomic(path, lambda out: np.savez(out, **arrays), mode=0o600, fsync=False)  # type: ignore[arg-type]
