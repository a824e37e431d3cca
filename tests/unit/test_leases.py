"""Claims with leases: a video is claimed in one write transaction (two workers never get the same one),
each claim raises its epoch, every later write is fenced by (owner, epoch), a lapsed lease makes the video
claimable again, and a video whose claims all got lost fails after render.max_attempts."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.lease import Heartbeat
from daemon.store import Claim, InvalidTransition, JobState, JobStore, LostClaim, Rendered, VideoState
from tests.unit.test_store_links import manifest

RESULT = Rendered(10, 0, 5, "ab" * 32, "m", 0.4, None)


@pytest.fixture
def store(tmp_path: Path, ledger_url: str | None) -> JobStore:
    s = JobStore(tmp_path / "state", url=ledger_url)
    s.add_job(
        manifest(tmp_path, "a.mp4", "b.mp4", "c.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path
    )
    return s


def lapse(store: JobStore, output: str) -> None:
    """The lease ran out (as if its worker was paused past it), without waiting for the clock."""
    with store._tx() as db:
        db.execute("UPDATE videos SET lease_until = ? WHERE output = ?", (time.time() - 1, output))


def test_two_claimers_never_get_the_same_video(tmp_path: Path, store: JobStore) -> None:
    """Two processes' connections (two JobStore objects) claim at once from threads: every video goes to
    exactly one of them, and then nothing is left."""
    other = JobStore(tmp_path / "state", url=store.url)
    got: list[tuple[str, str]] = []
    start = threading.Barrier(2)

    def worker(s: JobStore, name: str) -> None:
        start.wait()
        while (claimed := s.claim_next_video(name, 60.0)) is not None:
            got.append((claimed[0].output, name))

    threads = [
        threading.Thread(target=worker, args=(s, n))
        for s, n in ((store, "h:render@0"), (other, "h:render@1"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o for o, _ in got) == ["a.mp4", "b.mp4", "c.mp4"]
    for output, name in got:
        video = store.video("promo", output)
        assert video is not None
        assert (video.owner, video.epoch, video.attempts) == (name, 1, 1)
    job = store.job("promo")
    assert job is not None
    assert job.state == JobState.RENDERING


def test_an_expired_lease_is_claimable_and_the_epoch_rises(store: JobStore) -> None:
    first = store.claim_next_video("h:render@0", 60.0)
    assert first is not None
    assert first[1] == Claim("h:render@0", 1)
    # a live lease is not taken: the next claim gets the next video
    second = store.claim_next_video("h:render@1", 60.0)
    assert second is not None
    assert second[0].output == "b.mp4"
    lapse(store, "a.mp4")
    with capture_logs() as logs:
        again = store.claim_next_video("h:render@1", 60.0)
    assert again is not None
    assert again[0].output == "a.mp4"
    assert again[1] == Claim("h:render@1", 2)
    assert again[0].attempts == 2
    assert any(e["event"] == "lease_taken_over" and e["previous"] == "h:render@0" for e in logs)


def test_a_stale_claims_writes_are_refused_and_change_nothing(tmp_path: Path, store: JobStore) -> None:
    old = store.claim_next_video("h:render@0", 60.0)
    assert old is not None
    lapse(store, "a.mp4")
    new = store.claim_next_video("h:render@1", 60.0)
    assert new is not None
    assert new[0].output == "a.mp4"
    store.set_progress("promo", "a.mp4", 0.5, new[1])
    before = store.video("promo", "a.mp4")
    published: list[str] = []
    stale = old[1]
    with capture_logs() as logs:
        writes: tuple[Callable[[], object], ...] = (
            lambda: store.set_progress("promo", "a.mp4", 0.9, stale),
            lambda: store.video_rendered(
                "promo", "a.mp4", RESULT, stale, publish=lambda: published.append("x")
            ),
            lambda: store.fail_video("promo", "a.mp4", "boom", stale),
            lambda: store.requeue_video("promo", "a.mp4", stale),
        )
        for write in writes:
            with pytest.raises(LostClaim):
                write()
        assert store.renew("promo", "a.mp4", stale, 60.0) is False
    assert store.video("promo", "a.mp4") == before
    assert published == []  # the old owner's file was never moved into place
    lost = [e for e in logs if e["event"] == "claim_lost"]
    assert len(lost) == 5
    assert {(e["job"], e["video"], e["worker"], e["epoch"], e["held_by"]) for e in lost} == {
        ("promo", "a.mp4", "h:render@0", 1, "h:render@1")
    }
    # the new owner's writes go through, and its name is kept as the worker that rendered it
    assert store.renew("promo", "a.mp4", new[1], 60.0) is True
    store.video_rendered("promo", "a.mp4", RESULT, new[1], publish=lambda: published.append("new"))
    video = store.video("promo", "a.mp4")
    assert video is not None
    assert (video.state, video.worker, video.lease_until) == (
        VideoState.RENDERED,
        "h:render@1",
        None,
    )
    assert published == ["new"]


def test_a_failing_publish_rolls_the_render_back(store: JobStore) -> None:
    claimed = store.claim_next_video("h:render@0", 60.0)
    assert claimed is not None

    def publish() -> None:
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        store.video_rendered("promo", "a.mp4", RESULT, claimed[1], publish=publish)
    video = store.video("promo", "a.mp4")
    assert video is not None
    assert video.state == VideoState.RENDERING


def test_attempts_past_the_limit_fail_the_video_with_the_reason(store: JobStore) -> None:
    for n in range(1, 4):
        claimed = store.claim_next_video(f"h:render@{n}", 60.0, max_attempts=3)
        assert claimed is not None
        assert claimed[0].output == "a.mp4"
        assert claimed[0].attempts == n
        lapse(store, "a.mp4")
    nxt = store.claim_next_video("h:render@9", 60.0, max_attempts=3)
    assert nxt is not None
    assert nxt[0].output == "b.mp4"
    video = store.video("promo", "a.mp4")
    assert video is not None
    assert video.state == VideoState.FAILED
    assert video.error is not None
    assert "3 times" in video.error
    assert "h:render@3" in video.error
    assert "render.max_attempts" in video.error


def test_a_clean_stop_gives_the_attempt_back(store: JobStore) -> None:
    claimed = store.claim_next_video("h:render@0", 60.0)
    assert claimed is not None
    store.requeue_video("promo", "a.mp4", claimed[1])
    video = store.video("promo", "a.mp4")
    assert video is not None
    assert (video.state, video.attempts) == (VideoState.QUEUED, 0)


def test_a_restarted_worker_takes_back_only_its_own_renders(store: JobStore) -> None:
    store.claim_next_video("h:render@0", 60.0)
    store.claim_next_video("h:render@1", 60.0)
    released = store.release_own("h:render@0")
    assert [v.output for v in released] == ["a.mp4"]
    states = {v.output: v.state for v in store.videos("promo")}
    assert states == {"a.mp4": VideoState.QUEUED, "b.mp4": VideoState.RENDERING, "c.mp4": VideoState.QUEUED}


def test_the_job_completes_once_when_its_last_video_ends(store: JobStore) -> None:
    claims = [store.claim_next_video(f"h:render@{n}", 60.0) for n in range(3)]
    for claimed in claims[:2]:
        assert claimed is not None
        store.video_rendered("promo", claimed[0].output, RESULT, claimed[1])
        assert store.complete_job("promo") is None  # c.mp4 still renders
    assert claims[2] is not None
    store.fail_video("promo", "c.mp4", "no face", claims[2][1])
    assert store.complete_job("promo") == JobState.RENDERED
    assert store.complete_job("promo") is None  # exactly once


def test_an_older_store_gains_the_lease_columns(tmp_path: Path) -> None:
    state = tmp_path / "old"
    state.mkdir()
    db = sqlite3.connect(state / "lipsyncd.db")
    db.execute(
        "CREATE TABLE videos (job_id TEXT NOT NULL, output TEXT NOT NULL, position INTEGER NOT NULL,"
        " source TEXT NOT NULL, source_written TEXT NOT NULL, state TEXT NOT NULL, progress REAL NOT NULL"
        " DEFAULT 0, error TEXT, model TEXT, frames INTEGER, faceless_frames INTEGER, size INTEGER,"
        " sha256 TEXT, object_key TEXT, url TEXT, expires_at REAL, upload_id TEXT, rendered_at REAL,"
        " evicted INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL, PRIMARY KEY (job_id, output))"
    )
    db.close()
    JobStore(state).close()
    columns = {row[1] for row in sqlite3.connect(state / "lipsyncd.db").execute("PRAGMA table_info(videos)")}
    assert {"owner", "epoch", "lease_until", "attempts", "worker", "uploaded_by"} <= columns


def test_the_heartbeat_renews_the_lease_and_notices_a_takeover(store: JobStore) -> None:
    claimed = store.claim_next_video("h:render@0", 0.6)
    assert claimed is not None
    assert claimed[0].lease_until is not None
    first_until = claimed[0].lease_until
    with Heartbeat(store, claimed[0], claimed[1], 0.6) as beat:
        deadline = time.monotonic() + 10
        while (v := store.video("promo", "a.mp4")) and (v.lease_until or 0) <= first_until:
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.05)
        assert not beat.lost.is_set()
        with store._tx() as db:  # another worker took it over
            db.execute("UPDATE videos SET owner = 'h:render@1', epoch = epoch + 1 WHERE output = 'a.mp4'")
        assert beat.lost.wait(10), "the heartbeat did not notice the lost claim"


def test_upload_claims_are_exclusive_fenced_and_name_the_uploader(store: JobStore) -> None:
    for _n in range(3):
        claimed = store.claim_next_video("h:render@0", 60.0)
        assert claimed is not None
        store.video_rendered("promo", claimed[0].output, RESULT, claimed[1])
    assert store.complete_job("promo") == JobState.RENDERED
    first = store.start_upload("promo", "a.mp4", "k/a.mp4", "h:upload@0", 60.0)
    assert first is not None
    assert first.epoch == 2
    assert store.start_upload("promo", "a.mp4", "k/a.mp4", "h:upload@1", 60.0) is None  # held
    lapse(store, "a.mp4")
    assert [v.output for v in store.uploads_lapsed()] == ["a.mp4"]
    second = store.start_upload("promo", "a.mp4", "k/a.mp4", "h:upload@1", 60.0)
    assert second is not None
    assert second.epoch == 3
    with pytest.raises(LostClaim):
        store.video_ready("promo", "a.mp4", "https://x/old", 1e10, first)
    store.video_ready("promo", "a.mp4", "https://x/new", 1e10, second)
    video = store.video("promo", "a.mp4")
    assert video is not None
    assert (video.url, video.worker, video.uploaded_by) == (
        "https://x/new",
        "h:render@0",
        "h:upload@1",
    )


def test_a_job_is_finished_by_one_upload_worker_only(store: JobStore) -> None:
    for n in range(3):
        claimed = store.claim_next_video("h:render@0", 60.0)
        assert claimed is not None
        store.fail_video("promo", claimed[0].output, "no face", claimed[1]) if n else store.video_rendered(
            "promo", claimed[0].output, RESULT, claimed[1]
        )
    store.complete_job("promo")
    store.start_upload("promo", "a.mp4", "k/a.mp4")
    store.video_ready("promo", "a.mp4", "https://x/a", 1e10)
    assert store.finish_job("promo") == JobState.PARTIAL
    with pytest.raises(InvalidTransition):
        store.finish_job("promo")


def test_worker_names_carry_the_configured_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """service.host_name names the host (two containers with one hostname); unset, the hostname does."""
    import socket

    from daemon import lease

    monkeypatch.setattr(lease, "_host", None)
    assert lease.worker_name("render", 1) == f"{socket.gethostname()}:render@1"
    lease.set_host_name("box-2")
    assert (lease.host_name(), lease.worker_name("upload", 0)) == ("box-2", "box-2:upload@0")
