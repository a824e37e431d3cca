"""The job store's state rules and links.json, the view of it users read."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from daemon.links import LINKS_NAME, ViewChecker, job_view, write_links
from daemon.linkspage import PAGE_NAME
from daemon.manifest import Manifest, MediaRef
from daemon.store import (
    DB_NAME,
    InvalidTransition,
    JobState,
    JobStore,
    StoreError,
    VideoState,
    output_names,
)
from tests.poke import set_job, set_video


def manifest(tmp_path: Path, *videos: str, name: str = "promo", distribute: bool = True) -> Manifest:
    refs = tuple(MediaRef(v, tmp_path / v) for v in videos)
    return Manifest(
        source=tmp_path / f"{name}.yaml",
        name=name,
        audio=MediaRef("a.wav", tmp_path / "a.wav"),
        videos=refs,
        distribute=distribute,
    )


@pytest.fixture
def store(tmp_path: Path, ledger_url: str | None) -> JobStore:
    return JobStore(tmp_path / "state", url=ledger_url)


def test_job_ids_never_collide(store: JobStore, tmp_path: Path) -> None:
    first = store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    second = store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "2", base_dir=tmp_path)
    assert (first.id, second.id) == ("promo", "promo-2")
    assert [v.state for v in store.videos("promo")] == [VideoState.QUEUED]


def test_output_names_do_not_overwrite_each_other(tmp_path: Path) -> None:
    m = manifest(tmp_path, "a/anchor.mp4", "b/anchor.mov", "主播 1.mp4")
    assert output_names(m) == ["anchor.mp4", "anchor-2.mp4", "主播-1.mp4"]


def test_finished_states_are_final(store: JobStore, tmp_path: Path) -> None:
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    with pytest.raises(InvalidTransition):
        set_video(store, "promo", "a.mp4", VideoState.READY)
    set_video(store, "promo", "a.mp4", VideoState.RENDERING)
    set_video(store, "promo", "a.mp4", VideoState.FAILED, error="bad file")
    with pytest.raises(InvalidTransition, match="from failed to queued"):
        set_video(store, "promo", "a.mp4", VideoState.QUEUED)
    set_job(store, "promo", JobState.RENDERING)
    set_job(store, "promo", JobState.FAILED, error="x")
    with pytest.raises(InvalidTransition):
        set_job(store, "promo", JobState.DONE)


def test_state_survives_reopening(store: JobStore, tmp_path: Path) -> None:
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    set_video(store, "promo", "a.mp4", VideoState.RENDERING, progress=0.5)
    store.close()
    again = JobStore(tmp_path / "state", url=store.url)
    video = again.video("promo", "a.mp4")
    assert video is not None
    assert video.state == VideoState.RENDERING
    assert video.progress == 0.5
    assert again.videos_in(VideoState.RENDERING)[0].output == "a.mp4"


def _open_when_released(state_dir: Path, go: Any) -> None:
    go.wait()
    JobStore(state_dir).close()


def test_two_watchers_opening_a_new_state_dir_at_once_both_succeed(tmp_path: Path) -> None:
    """`lipsyncd run` starts both watchers together on a fresh machine: neither may trip over the
    directory or database file the other has just created (CI once saw `File exists` here)."""
    context = multiprocessing.get_context("fork")
    for round_ in range(15):
        state_dir = tmp_path / f"state-{round_}"
        go = context.Event()
        procs = [context.Process(target=_open_when_released, args=(state_dir, go)) for _ in range(4)]
        for proc in procs:
            proc.start()
        go.set()
        for proc in procs:
            proc.join(30)
        assert [proc.exitcode for proc in procs] == [0, 0, 0, 0], f"round {round_}"
        assert state_dir.stat().st_mode & 0o777 == 0o700


def test_a_wal_file_removed_while_opening_is_no_error(tmp_path: Path, monkeypatch: Any) -> None:
    """SQLite removes -wal and -shm when the last connection closes: another process may do that between
    our look and our chmod."""
    JobStore(tmp_path / "state").close()
    real_chmod = Path.chmod

    def chmod_after_removal(path: Path, mode: int) -> None:
        if path.name.endswith(("-wal", "-shm")):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        real_chmod(path, mode)

    (tmp_path / "state" / "lipsyncd.db-wal").write_bytes(b"")
    monkeypatch.setattr(Path, "chmod", chmod_after_removal)
    JobStore(tmp_path / "state").close()


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open the job store"):
        JobStore(blocker / "state")


def test_links_view_has_every_field_and_no_secrets(store: JobStore, tmp_path: Path) -> None:
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    set_video(store, "promo", "a.mp4", VideoState.RENDERING, progress=0.25)
    doc = job_view(store.job("promo"), store.videos("promo"))  # type: ignore[arg-type]
    video = doc["videos"][0]
    for key in (
        "source",
        "output",
        "status",
        "progress",
        "error",
        "size",
        "sha256",
        "object_key",
        "url",
        "expires_at",
    ):
        assert key in video
    assert video["status"] == "rendering"
    assert video["progress"] == 0.25
    assert video["source"] == "a.mp4"
    assert doc["job"] == "promo"
    assert doc["status"] == "queued"
    text = json.dumps(doc)
    assert "secret" not in text.lower()
    assert str(tmp_path) not in text


def test_links_file_is_replaced_atomically_while_read(store: JobStore, tmp_path: Path) -> None:
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    set_video(store, "promo", "a.mp4", VideoState.RENDERING)
    outputs, locks = tmp_path / "out", tmp_path / "locks"
    write_links(store, "promo", outputs, locks)
    seen_bad, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                json.loads((outputs / "promo" / LINKS_NAME).read_text())
            except json.JSONDecodeError as exc:
                seen_bad.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(200):
        set_video(store, "promo", "a.mp4", progress=i / 200)
        write_links(store, "promo", outputs, locks)
    stop.set()
    thread.join()
    assert not seen_bad
    assert json.loads((outputs / "promo" / LINKS_NAME).read_text())["videos"][0]["progress"] == 0.995
    assert sorted(p.name for p in (outputs / "promo").iterdir()) == [PAGE_NAME, LINKS_NAME]  # no temps
    assert "99%" in (outputs / "promo" / PAGE_NAME).read_text()  # the page is the same view as the JSON


def test_view_check_puts_back_a_missing_page_and_a_stale_one_with_its_json(
    store: JobStore, tmp_path: Path
) -> None:
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    outputs, locks = tmp_path / "out", tmp_path / "locks"
    write_links(store, "promo", outputs, locks)
    checker = ViewChecker(store, outputs, locks)
    checker.GRACE = 0.0  # no writer is about to write: every difference is to be repaired now
    page = outputs / "promo" / PAGE_NAME
    page.unlink()
    assert checker.check() == [("promo", "without its links.html")]
    assert "Waiting" in page.read_text()
    set_video(store, "promo", "a.mp4", VideoState.RENDERING, progress=0.5)  # nobody wrote the view
    assert checker.check() == [("promo", "different from the job store")]
    assert 'value="50"' in page.read_text()


def test_a_store_from_before_the_page_and_duration_columns_gains_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    JobStore(state).close()
    with sqlite3.connect(state / "lipsyncd.db") as db:
        for table, column in [("videos", "duration"), *(("jobs", c) for c in ("page_url", "page_sha256"))]:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute("DROP TABLE schema_version")  # such a store predates versions too
    store = JobStore(state)
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    set_video(store, "promo", "a.mp4", duration=2.5)
    store.set_page("promo", "https://x/links.html", 1.0, "ab")
    video, job = store.video("promo", "a.mp4"), store.job("promo")
    assert video is not None
    assert video.duration == 2.5
    assert job is not None
    assert (job.page_url, job.page_sha256) == ("https://x/links.html", "ab")


def _rendered_job(store: JobStore, tmp_path: Path, *outcomes: str) -> None:
    """A job whose videos ended as given ("ok" or a failure reason), rendered and not distributing."""
    videos = [f"v{i}.mp4" for i in range(len(outcomes))]
    m = manifest(tmp_path, *videos, distribute=False)
    store.add_job(m, claimed_path=tmp_path / "1", base_dir=tmp_path)
    set_job(store, "promo", JobState.RENDERING)
    for name, result in zip(videos, outcomes, strict=True):
        set_video(store, "promo", name, VideoState.RENDERING)
        if result == "ok":
            set_video(store, "promo", name, VideoState.RENDERED)
        else:
            set_video(store, "promo", name, VideoState.FAILED, error=result)
    set_job(store, "promo", JobState.RENDERED)


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        (("ok", "ok"), JobState.DONE),
        (("ok", "cut short", "ok"), JobState.PARTIAL),
        (("cut short", "no face"), JobState.FAILED),
    ],
)
def test_a_job_ends_done_partial_or_failed_by_its_videos(
    store: JobStore, tmp_path: Path, outcomes: tuple[str, ...], state: JobState
) -> None:
    _rendered_job(store, tmp_path, *outcomes)
    assert store.finish_job("promo") == state
    job = store.job("promo")
    assert job is not None
    assert job.state == state
    if state == JobState.DONE:
        assert job.error is None
    else:  # the job's error names each failed video and why
        failed = [f"v{i}.mp4: {o}" for i, o in enumerate(outcomes) if o != "ok"]
        assert all(line in (job.error or "") for line in failed), job.error
        assert f"{len(failed)} of {len(outcomes)} videos could not be made" in (job.error or "")
    with pytest.raises(InvalidTransition):  # finished states are final
        set_job(store, "promo", JobState.QUEUED)


def test_partial_is_reached_only_from_rendered(store: JobStore, tmp_path: Path) -> None:
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    with pytest.raises(InvalidTransition, match="from queued to partial"):
        set_job(store, "promo", JobState.PARTIAL)


def test_view_of_a_partial_job_says_how_many_are_ready_and_why_the_others_failed(
    store: JobStore, tmp_path: Path
) -> None:
    _rendered_job(store, tmp_path, "ok", "the video v1.mp4 is cut short", "ok")
    set_video(store, "promo", "v2.mp4", warning="no face found in 30 of the 50 frames of v2.mp4 (60%)")
    store.finish_job("promo")
    folder = tmp_path / "out" / "promo"
    folder.mkdir(parents=True)
    (folder / "v0.mp4").write_bytes(b"video")  # v2.mp4's file is not there (deleted by hand, say)
    doc = job_view(store.job("promo"), store.videos("promo"), folder)  # type: ignore[arg-type]
    assert doc["status"] == "partial"
    assert doc["summary"] == "2 of 3 ready"
    assert doc["problems"] == [
        "v1.mp4 failed: the video v1.mp4 is cut short",
        "v2.mp4: no face found in 30 of the 50 frames of v2.mp4 (60%)",
    ]
    assert [v["local_copy"] for v in doc["videos"]] == [True, False, False]
    assert [v["warning"] for v in doc["videos"]][:2] == [None, None]
    # without the folder (`lipsyncd status`), the store alone: a failed video never has a local copy
    assert [v["local_copy"] for v in job_view(store.job("promo"), store.videos("promo"))["videos"]] == [  # type: ignore[arg-type]
        True,
        False,
        True,
    ]


def test_summary_counts_only_uploaded_videos_for_a_job_that_distributes(
    store: JobStore, tmp_path: Path
) -> None:
    m = manifest(tmp_path, "a.mp4", "b.mp4")  # distribute=True
    store.add_job(m, claimed_path=tmp_path / "1", base_dir=tmp_path)
    set_video(store, "promo", "a.mp4", VideoState.RENDERING)
    set_video(store, "promo", "a.mp4", VideoState.RENDERED)
    set_video(store, "promo", "a.mp4", VideoState.UPLOADING)
    set_video(store, "promo", "a.mp4", VideoState.READY)
    set_video(store, "promo", "b.mp4", VideoState.RENDERING)
    set_video(store, "promo", "b.mp4", VideoState.RENDERED)
    doc = job_view(store.job("promo"), store.videos("promo"))  # type: ignore[arg-type]
    assert doc["summary"] == "1 of 2 ready, 1 in progress"
    assert doc["problems"] == []


def test_a_store_from_before_warnings_gets_the_column(tmp_path: Path) -> None:
    JobStore(tmp_path / "state").close()
    with sqlite3.connect(tmp_path / "state" / DB_NAME) as db:
        db.execute("ALTER TABLE videos DROP COLUMN warning")
        db.execute("DROP TABLE schema_version")  # such a store predates versions too
    store = JobStore(tmp_path / "state")
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    set_video(store, "promo", "a.mp4", warning="careful")
    assert store.videos("promo")[0].warning == "careful"


def test_a_view_made_before_a_newer_change_never_lands_over_the_newer_view(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Host A reads the store for its view, then pauses (SIGSTOP, a stalled VM); host B, whose job lock is
    its own, commits a change and writes the newer view. A, going on, must not rename its older view over
    B's: readers would see a ready video go back to uploading."""
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "1", base_dir=tmp_path)
    for state in (VideoState.RENDERING, VideoState.RENDERED, VideoState.UPLOADING):
        set_video(store, "promo", "a.mp4", state)
    outputs = tmp_path / "out"
    other = JobStore(tmp_path / "state", url=store.url)  # host B: the same ledger, locks of its own
    real_videos = store.videos
    written: list[bytes] = []

    def read_then_paused(job_id: str) -> Any:
        rows = real_videos(job_id)
        set_video(other, "promo", "a.mp4", VideoState.READY, url="https://x/a.mp4")  # B's change...
        write_links(other, "promo", outputs, tmp_path / "locks-b")  # ...and B's view
        written.append((outputs / "promo" / PAGE_NAME).read_bytes())
        return rows

    monkeypatch.setattr(store, "videos", read_then_paused)
    write_links(store, "promo", outputs, tmp_path / "locks-a")
    shown = json.loads((outputs / "promo" / LINKS_NAME).read_text())
    assert shown["videos"][0]["status"] == "ready"
    assert (outputs / "promo" / PAGE_NAME).read_bytes() == written[0]  # the page is B's too
    assert sorted(p.name for p in (outputs / "promo").iterdir()) == [PAGE_NAME, LINKS_NAME]  # no temps
    other.close()
