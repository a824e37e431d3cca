"""Kept avatar inputs (MuseTalk latents): by video and model key, bounded; a damaged file is a miss."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from daemon.render.avatar_cache import AvatarCache, AvatarInputs, load_inputs, save_inputs, trim_lru
from daemon.render.types import Box, VideoInfo

BOX = Box(10, 20, 110, 140)
ROW = 8 * 32 * 32 * 4  # bytes of one MuseTalk frame's latents


def _latents(count: int) -> dict[tuple[int, Box], np.ndarray]:
    rng = np.random.default_rng(count)
    return {(i, BOX): rng.normal(size=(8, 32, 32)).astype(np.float32) for i in range(count)}


def test_saved_inputs_come_back_under_the_same_video_and_key(tmp_path: Path) -> None:
    video = tmp_path / "a.mp4"
    video.write_bytes(b"frames")
    first = load_inputs(tmp_path / "cache", video, "key-1", budget=10 * ROW)
    assert len(first) == 0
    rows = _latents(3)
    first.keep(rows)
    save_inputs(tmp_path / "cache", first)
    again = load_inputs(tmp_path / "cache", video, "key-1", budget=10 * ROW)
    assert len(again) == 3
    assert again.added == 0
    for key, value in rows.items():
        np.testing.assert_array_equal(again.take(key), value)
    assert (1, Box(10, 20, 110, 141)) not in again  # another box for that frame: computed again
    assert len(load_inputs(tmp_path / "cache", video, "key-2", budget=10 * ROW)) == 0
    video.write_bytes(b"other frames")
    assert len(load_inputs(tmp_path / "cache", video, "key-1", budget=10 * ROW)) == 0


def test_budget_bounds_what_is_kept(tmp_path: Path) -> None:
    inputs = AvatarInputs(budget=2 * ROW)
    inputs.keep(_latents(5))
    assert len(inputs) == 2
    assert inputs.used == 2 * ROW


def test_a_damaged_file_is_a_miss_and_is_replaced(tmp_path: Path) -> None:
    video = tmp_path / "a.mp4"
    video.write_bytes(b"frames")
    inputs = load_inputs(tmp_path, video, "k", budget=10 * ROW)
    inputs.keep(_latents(2))
    save_inputs(tmp_path, inputs)
    (saved,) = tmp_path.glob("*-inputs-*.npz")
    saved.write_bytes(saved.read_bytes()[:100])
    broken = load_inputs(tmp_path, video, "k", budget=10 * ROW)
    assert len(broken) == 0
    broken.keep(_latents(1))
    save_inputs(tmp_path, broken)
    assert len(load_inputs(tmp_path, video, "k", budget=10 * ROW)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def _entry(folder: Path, name: str, size: int, used: int) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    os.utime(path, ns=(used * 10**9, used * 10**9))
    return path


def test_the_cache_folder_keeps_the_most_recently_used_entries_within_its_bound(tmp_path: Path) -> None:
    old, middle, new = (_entry(tmp_path, f"{n}.npz", 400, used) for n, used in (("a", 1), ("b", 2), ("c", 3)))
    writing = _entry(tmp_path, ".d.npz.tmp", 5000, 0)  # a temp file being written: never counted or removed
    assert trim_lru(tmp_path, 1000) == [old]
    assert middle.exists()
    assert new.exists()
    assert writing.exists()
    assert trim_lru(tmp_path, 800) == []  # already within the bound
    os.utime(middle)  # a hit touches the entry: it is now the most recently used
    assert trim_lru(tmp_path, 500) == [new]
    assert middle.exists()
    assert writing.exists()


def test_a_hit_makes_an_entry_the_last_to_go(tmp_path: Path) -> None:
    cache = AvatarCache(tmp_path / "cache", max_bytes=10**9)
    videos = []
    for name in ("a", "b"):
        video = tmp_path / f"{name}.mp4"
        video.write_bytes(name.encode())
        inputs = cache.inputs(video, "key", budget=10 * ROW)
        inputs.keep(_latents(2))
        cache.save_inputs(inputs)
        videos.append(video)
    first, second = sorted((tmp_path / "cache").glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    for path in (first, second):
        os.utime(path, ns=(10**9, 10**9))  # both used long ago
    assert len(cache.inputs(videos[0], "key", budget=10 * ROW)) == 2  # a hit on a: touched
    cache.max_bytes = first.stat().st_size + 100  # room for one entry
    cache.trim()
    left = list((tmp_path / "cache").glob("*.npz"))
    assert len(left) == 1
    assert len(cache.inputs(videos[0], "key", budget=10 * ROW)) == 2
    assert len(cache.inputs(videos[1], "key", budget=10 * ROW)) == 0


MARKED = Box(10, 20, 110, 140, landmarks=(40, 60, 80, 60, 60, 90, 45, 115, 75, 115))


def test_landmarks_survive_the_cache_for_detections_and_inputs(tmp_path: Path) -> None:
    video = tmp_path / "a.mp4"
    video.write_bytes(b"frames")
    info = VideoInfo(320, 240, 25.0, 1.0, 0)
    cache = AvatarCache(tmp_path / "cache")
    track = cache.track(video, ScriptedYunet(), info)
    track.put(0, [MARKED, BOX])  # a detector with landmarks, and a box without (another detector's)
    track.put(3, [])
    cache.save(track)
    assert cache.track(video, ScriptedYunet(), info).detections == {0: [MARKED, BOX], 3: []}
    inputs = cache.inputs(video, "key", budget=10 * ROW)
    inputs.keep({(0, MARKED): _latents(1)[(0, BOX)], (1, BOX): _latents(1)[(0, BOX)]})
    cache.save_inputs(inputs)
    again = cache.inputs(video, "key", budget=10 * ROW)
    assert (0, MARKED) in again
    assert (1, BOX) in again
    assert (0, BOX) not in again


class ScriptedYunet:
    name = "yunet"
    fingerprint = "scripted-yunet"

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        return []
