"""The job ledger: each intent is one transaction holding the checked move and the effects it requires
(the outbox), and the reconciler applies those effects idempotently, eviction only after the view."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import daemon.links
import daemon.reconcile
from daemon.inbox import Inbox
from daemon.links import LINKS_NAME, job_lock, job_view
from daemon.reconcile import Eviction, Reconciler
from daemon.store import Effect, InvalidTransition, JobState, JobStore, Rendered, VideoState
from tests.unit.test_store_links import manifest


@pytest.fixture
def store(tmp_path: Path, ledger_url: str | None) -> JobStore:
    return JobStore(tmp_path / "state", url=ledger_url)


def reconciler(store: JobStore, tmp_path: Path, **kwargs: Any) -> Reconciler:
    return Reconciler(store, outputs_dir=tmp_path / "outputs", locks_dir=tmp_path / "locks", **kwargs)


def uploading(store: JobStore, tmp_path: Path) -> None:
    """Job `promo`, a.mp4 rendered (its file in the outputs) and going up; the outbox emptied."""
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "promo.yaml", base_dir=tmp_path)
    store.start_job("promo")
    store.claim_video("promo", "a.mp4")
    store.video_rendered("promo", "a.mp4", Rendered(10, 0, 5, "ab" * 32, "m", 0.4, None))
    store.job_rendered("promo")
    store.start_upload("promo", "a.mp4", "p/promo/a.mp4")
    (tmp_path / "outputs" / "promo").mkdir(parents=True)
    (tmp_path / "outputs" / "promo" / "a.mp4").write_bytes(b"video")
    store.applied(*store.pending())


def started_from_the_inbox(store: JobStore, tmp_path: Path) -> tuple[Inbox, Path]:
    """A job `promo` (one video, not distributed) whose manifest waits in inbox/.claimed/, rendering."""
    inbox = Inbox(tmp_path / "inbox", settle_time=0.0)
    inbox.make_folders()
    claimed = inbox.claimed_dir / "promo.yaml"
    claimed.write_text("name: promo\n")
    store.add_job(manifest(tmp_path, "a.mp4", distribute=False), claimed_path=claimed, base_dir=tmp_path)
    store.start_job("promo")
    return inbox, claimed


def test_a_refused_move_records_no_effect(store: JobStore, tmp_path: Path) -> None:
    uploading(store, tmp_path)
    store.cancel_job("promo", "cancelled")
    store.applied(*store.pending())
    with pytest.raises(InvalidTransition):
        store.video_ready("promo", "a.mp4", "https://x/a", 1e10)
    assert store.pending() == []
    video = store.video("promo", "a.mp4")
    assert video is not None
    assert (video.state, video.url) == (VideoState.CANCELLED, None)


def test_a_move_and_its_effects_commit_together_or_not_at_all(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploading(store, tmp_path)
    real = JobStore._effect

    def effect_fails_on_evict(db: Any, kind: Effect, job_id: str, video: str = "") -> None:
        if kind == Effect.EVICT:  # after the row's update and its views effect, inside the transaction
            raise RuntimeError("crash between the update and the eviction effect")
        real(db, kind, job_id, video)

    monkeypatch.setattr(JobStore, "_effect", staticmethod(effect_fails_on_evict))
    with pytest.raises(RuntimeError):
        store.video_ready("promo", "a.mp4", "https://x/a", 1e10)
    assert store.pending() == []
    video = store.video("promo", "a.mp4")
    assert video is not None
    assert (video.state, video.url) == (VideoState.UPLOADING, None)
    monkeypatch.undo()
    store.video_ready("promo", "a.mp4", "https://x/a", 1e10)
    effects = {(Effect.VIEWS, ""), (Effect.EVICT, "a.mp4"), (Effect.METRICS, "")}  # the bytes counted
    assert {(e.kind, e.video) for e in store.pending()} == effects


def test_an_effect_asked_again_while_pending_is_one_row_not_deleted_by_the_older_applier(
    store: JobStore, tmp_path: Path
) -> None:
    uploading(store, tmp_path)
    store.set_progress("promo", "a.mp4", 0.5)
    store.set_progress("promo", "a.mp4", 0.6)
    (read,) = store.pending()
    store.set_progress("promo", "a.mp4", 0.7)  # while an applier works from `read`
    assert store.applied(read) == 0  # the newer request stays for the next pass
    (again,) = store.pending()
    assert again.seq > read.seq
    assert store.applied(again) == 1
    assert store.pending() == []


def test_reconciling_twice_gives_the_same_result(store: JobStore, tmp_path: Path) -> None:
    uploading(store, tmp_path)
    store.video_ready("promo", "a.mp4", "https://x/a", 1e10)
    store.finish_job("promo")
    ledger = reconciler(store, tmp_path, eviction=lambda: Eviction("delete"), notify=lambda *a: None)
    assert ledger.reconcile() > 0
    folder = tmp_path / "outputs" / "promo"
    links = json.loads((folder / LINKS_NAME).read_text())
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert ledger.reconcile() == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first
    assert store.pending() == []
    assert not (folder / "a.mp4").exists()
    job = store.job("promo")
    assert job is not None
    assert links == job_view(job, store.videos("promo"), folder)
    assert links["videos"][0]["local_copy"] is False
    assert links["status"] == "done"


def test_eviction_waits_until_links_json_shows_the_link(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploading(store, tmp_path)
    local = tmp_path / "outputs" / "promo" / "a.mp4"

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(daemon.reconcile, "write_links", disk_full)
    ledger = reconciler(store, tmp_path, eviction=lambda: Eviction("delete"))
    with capture_logs() as logs:
        store.video_ready("promo", "a.mp4", "https://x/a", 1e10)  # the after-commit pass is ours to run
        ledger.reconcile()
        ledger.reconcile()
    assert local.exists(), "evicted before any links.json showed its link"
    assert {e.kind for e in store.pending()} == {Effect.VIEWS, Effect.EVICT}
    failed = [e for e in logs if e["event"] == "effect_failed"]
    assert len(failed) == 1
    assert failed[0]["job"] == "promo"
    monkeypatch.undo()
    ledger.reconcile()
    assert not local.exists()
    assert store.pending() == []
    shown = json.loads((local.parent / LINKS_NAME).read_text())["videos"][0]
    assert (shown["url"], shown["local_copy"]) == ("https://x/a", False)


def test_a_later_eviction_waits_for_its_hour_and_keep_drops_it(store: JobStore, tmp_path: Path) -> None:
    uploading(store, tmp_path)
    store.video_ready("promo", "a.mp4", "https://x/a", 1e10)
    policy = [Eviction("after", keep_hours=1.0)]
    ledger = reconciler(store, tmp_path, eviction=lambda: policy[0])
    ledger.reconcile()
    assert (tmp_path / "outputs" / "promo" / "a.mp4").exists()
    assert [e.kind for e in store.pending()] == [Effect.EVICT]
    policy[0] = Eviction("keep")
    ledger.reconcile()
    assert (tmp_path / "outputs" / "promo" / "a.mp4").exists()
    assert store.pending() == []


def test_a_finished_job_is_filed_once_by_the_process_that_owns_the_inbox(
    store: JobStore, tmp_path: Path
) -> None:
    inbox, claimed = started_from_the_inbox(store, tmp_path)
    store.claim_video("promo", "a.mp4")
    store.fail_video("promo", "a.mp4", "no face")
    upload_side = reconciler(store, tmp_path, eviction=lambda: Eviction("delete"))
    store.job_rendered("promo", finish=True)
    upload_side.reconcile()
    assert claimed.exists()
    assert [e.kind for e in store.pending()] == [Effect.FILE]
    render_side = reconciler(store, tmp_path, inbox=inbox)
    render_side.reconcile()
    store.ask(Effect.FILE, "promo")  # asked again (a repair): nothing is filed twice
    render_side.reconcile()
    assert not claimed.exists()
    assert store.pending() == []
    assert not (inbox.done_dir / "promo.yaml").exists()
    filed = sorted(p.name for p in (inbox.failed_dir).iterdir())
    assert filed == ["promo.error.txt", "promo.yaml"]
    job = store.job("promo")
    assert job is not None
    assert job.state == JobState.FAILED


def test_reconcile_from_two_threads_at_once_leaves_nothing_pending(store: JobStore, tmp_path: Path) -> None:
    uploading(store, tmp_path)
    ledger = reconciler(store, tmp_path)
    store.after_commit = ledger.reconcile
    threads = [
        threading.Thread(target=lambda n=n: store.set_progress("promo", "a.mp4", n / 100)) for n in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ledger.reconcile()
    assert store.pending() == []
    job = store.job("promo")
    assert job is not None
    folder = tmp_path / "outputs" / "promo"
    assert json.loads((folder / LINKS_NAME).read_text()) == job_view(job, store.videos("promo"), folder)


def test_a_manifest_is_filed_only_once_links_json_shows_the_job_finished(
    store: JobStore, tmp_path: Path
) -> None:
    inbox, claimed = started_from_the_inbox(store, tmp_path)
    store.claim_video("promo", "a.mp4")
    store.video_rendered("promo", "a.mp4", Rendered(10, 0, 5, "ab" * 32, "m", 0.4, None))
    store.job_rendered("promo", finish=True)
    render_side = reconciler(store, tmp_path, inbox=inbox)
    with job_lock(tmp_path / "locks", "promo"):  # another process writes this job's view right now
        render_side.reconcile()
        assert claimed.exists()
        assert {e.kind for e in store.pending()} == {Effect.VIEWS, Effect.FILE}
    render_side.reconcile()
    assert (inbox.done_dir / "promo.yaml").exists()
    assert store.pending() == []
    assert json.loads((tmp_path / "outputs" / "promo" / LINKS_NAME).read_text())["status"] == "done"


def test_a_view_that_cannot_be_written_does_not_hold_back_the_filing(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outputs disk full: links.json cannot be written at all, yet the failed job's manifest (on
    another disk) is filed with its reason; the view stays asked for, for when space is back."""
    inbox, claimed = started_from_the_inbox(store, tmp_path)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(daemon.reconcile, "write_links", disk_full)
    store.fail_job("promo", "the outputs disk is full")
    reconciler(store, tmp_path, inbox=inbox).reconcile()
    assert (inbox.failed_dir / "promo.yaml").exists()
    assert not claimed.exists()
    assert [e.kind for e in store.pending()] == [Effect.VIEWS]


def test_hosts_without_a_shared_lock_end_with_the_newest_view(
    store: JobStore, tmp_path: Path, ledger_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts share the ledger and the outputs folder but not their lock folders. Host A makes the job's
    view and finds the ledger unchanged just before its rename; host B's change and newer view land in
    between, so A's older view is renamed last: A sees its file behind the ledger's revision, asks for the
    view again, and the next pass leaves the newest view on disk."""
    uploading(store, tmp_path)
    other = JobStore(tmp_path / "state", url=ledger_url)  # host B's own connection
    outputs = tmp_path / "outputs"
    host_a = Reconciler(store, outputs_dir=outputs, locks_dir=tmp_path / "locks-a")
    host_b = Reconciler(other, outputs_dir=outputs, locks_dir=tmp_path / "locks-b")
    real_write = daemon.links.write_view_files
    raced: list[int] = []

    def a_slow_writer(
        folder: Path, document: dict[str, Any], still_current: Callable[[], bool] | None = None
    ) -> Path:
        """B's change and view land between A's last look at the ledger and A's rename."""

        asked: list[bool] = []

        def then_b_writes() -> bool:  # asked before links.html's rename, then before links.json's
            current = still_current() if still_current else True
            asked.append(current)
            if len(asked) == 2 and not raced:
                raced.append(document["revision"])
                other.set_progress("promo", "a.mp4", 0.5)
                assert host_b.reconcile() > 0
                assert json.loads((folder / LINKS_NAME).read_text())["revision"] > document["revision"]
            return current

        return real_write(folder, document, then_b_writes)

    monkeypatch.setattr(daemon.links, "write_view_files", a_slow_writer)
    store.set_progress("promo", "a.mp4", 0.4)
    host_a.reconcile()
    job = store.job("promo")
    assert job is not None
    shown = json.loads((outputs / "promo" / LINKS_NAME).read_text())
    assert raced
    assert shown["revision"] == job.revision, "the older view that renamed last must not stay"
    assert shown == job_view(job, store.videos("promo"), outputs / "promo")
    assert store.pending(Effect.VIEWS) == []
    other.close()


def test_two_hosts_filing_one_manifest_at_once_file_it_once_and_leave_no_stray_report(
    store: JobStore, tmp_path: Path
) -> None:
    """Hosts sharing an inbox and a ledger both apply the job's filing: both saw the claimed manifest, the
    first rename wins, and the second neither fails nor leaves an error report without its manifest."""
    inbox, claimed = started_from_the_inbox(store, tmp_path)
    store.claim_video("promo", "a.mp4")
    store.fail_video("promo", "a.mp4", "no face")
    store.job_rendered("promo", finish=True)
    host_a = reconciler(store, tmp_path, inbox=Inbox(inbox.folder, settle_time=0.0))
    slow_inbox = Inbox(inbox.folder, settle_time=0.0)
    real_file_job = slow_inbox.file_job

    def after_host_a(job: Any, videos: Any) -> Path:  # B found the manifest, then A filed it first
        host_a.reconcile()
        return real_file_job(job, videos)

    slow_inbox.file_job = after_host_a  # type: ignore[method-assign]
    host_b = reconciler(store, tmp_path, inbox=slow_inbox)
    with capture_logs() as logs:
        host_b.reconcile()
    assert [e for e in logs if e["event"] == "effect_failed"] == []
    assert not claimed.exists()
    assert sorted(p.name for p in inbox.failed_dir.iterdir()) == ["promo.error.txt", "promo.yaml"]
    assert store.pending(Effect.FILE) == []


def test_a_manifest_is_filed_at_once_when_another_process_wrote_the_finished_view(
    store: JobStore, tmp_path: Path
) -> None:
    """The render side's own view write is locked out (the upload side is writing the job's view), but
    links.json on disk already shows the job finished: its manifest is filed in this pass, not the next."""
    inbox, claimed = started_from_the_inbox(store, tmp_path)
    store.claim_video("promo", "a.mp4")
    store.fail_video("promo", "a.mp4", "no face")
    store.job_rendered("promo", finish=True)
    reconciler(store, tmp_path).reconcile()  # the other process's view: links.json shows it failed
    assert json.loads((tmp_path / "outputs" / "promo" / LINKS_NAME).read_text())["status"] == "failed"
    store.ask(Effect.VIEWS, "promo")
    render_side = reconciler(store, tmp_path, inbox=inbox)
    with job_lock(tmp_path / "locks", "promo"):  # held by the other process while it writes
        render_side.reconcile()
    assert not claimed.exists(), "filed in the same pass: links.json already showed the job finished"
    assert (inbox.failed_dir / "promo.yaml").exists()
    assert [e.kind for e in store.pending()] == [Effect.VIEWS]  # its own view waits for the lock
