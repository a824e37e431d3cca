"""Avatar cache: what the face detector found in an avatar video, kept on disk so the next render of the
same video skips detection (decoding still happens).

Entries are keyed by the video's content (sha256, read streaming, so a renamed or re-uploaded copy still
hits) and by the detector's fingerprint (name and settings, `faces.detector_fingerprint`), so changing the
detector or its settings misses. An entry records the detector's raw answer for each source frame it ran
on, not the final smoothed boxes: the tracker replays those answers and so produces exactly the boxes a
fresh run would, whatever `detect_every` or the audio's length; frames never seen are detected and added.

Files: `FOLDER/SHA256-KEY.npz` (KEY: 16 hex digits of the fingerprint's sha256), written to a temp name in
the same folder and renamed into place; an unreadable file counts as a miss and is replaced.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from daemon.render.faces import detector_fingerprint
from daemon.render.types import Box, FaceDetector, VideoInfo

log = structlog.get_logger(__name__)

FORMAT = 1  # bump when the file layout changes: old files then miss
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks (memory stays flat whatever the size)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
    """The folder of entries (e.g. `STATE/avatars`); `track()` before rendering, `save()` after."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def track(self, video: Path, detector: FaceDetector, info: VideoInfo) -> AvatarTrack:
        """The entry for this video and detector: loaded when there is a usable one, else empty."""
        fresh = AvatarTrack(
            file_sha256(video), detector_fingerprint(detector), info.width, info.height, info.fps
        )
        path = self._path(fresh)
        loaded = _load(path, fresh) if path.is_file() else None
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
        except OSError as exc:
            log.warning("avatar_cache_not_saved", folder=str(self.folder), error=str(exc))
            return
        track.added = 0
        log.info("avatar_cache_saved", video_sha256=track.video_sha256, detections=len(track.detections))

    def _path(self, track: AvatarTrack) -> Path:
        key = hashlib.sha256(track.fingerprint.encode()).hexdigest()[:16]
        return self.folder / f"{track.video_sha256}-{key}.npz"


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
        "boxes": np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.int64).reshape(-1, 4),
    }


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
    counts, boxes = arrays["counts"], arrays["boxes"]
    if counts.sum() != len(boxes) or len(counts) != len(arrays["indices"]):
        raise ValueError("the entry's arrays do not agree in length")
    ends = np.cumsum(counts)
    return {
        int(index): [Box(*map(int, row)) for row in boxes[end - count : end]]
        for index, count, end in zip(arrays["indices"], counts, ends, strict=True)
    }


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
