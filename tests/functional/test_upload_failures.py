"""Every error in the upload of one video ends in the one failure path: the video leaves `uploading`
with the reason and a retry time, and is uploaded once the cause is gone, with no restart. Against the
real embedded SeaweedFS; the failures are injected at the client and at the job store."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import NoCredentialsError

import daemon.distribute.watcher
from daemon.distribute.watcher import DistributeSettings, UploadWatcher
from daemon.links import LINKS_NAME
from daemon.store import JobStore, Rendered, Video, VideoState
from tests.unit.test_store_links import manifest


class Broken:
    """A boto3 client that, while `broken`, fails every call as boto3 does without credentials."""

    def __init__(self, client: Any) -> None:
        self.client, self.broken = client, True

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.broken:
                raise NoCredentialsError()
            return attr(*args, **kwargs)

        return call


def rendered_job(store: JobStore, tmp_path: Path) -> Path:
    out = tmp_path / "outputs" / "promo" / "a.mp4"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"not really a video, but bytes to upload" * 100)
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "promo.yaml", base_dir=tmp_path)
    store.start_job("promo")
    store.claim_video("promo", "a.mp4")
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    store.video_rendered("promo", "a.mp4", Rendered(10, 0, out.stat().st_size, sha, "m", 0.4, None))
    store.job_rendered("promo")
    return out


def step_until(watcher: UploadWatcher, store: JobStore, done: Any, timeout: float = 30.0) -> Video:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watcher.step()
        video = store.video("promo", "a.mp4")
        assert video is not None
        if done(video) and not watcher._in_flight:
            return video
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout} s: {store.video('promo', 'a.mp4')}")


@pytest.mark.parametrize("cause", ["no credentials", "store locked"])
def test_an_upload_error_sends_the_video_back_with_a_retry_time_and_it_is_retried_without_restart(
    cause: str,
    tmp_path: Path,
    s3_client: Any,
    s3_bucket: str,
    s3_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    ledger_url: str | None,
) -> None:
    monkeypatch.setattr(daemon.distribute.watcher, "RETRY_FAILED_AFTER", 1.0)
    store = JobStore(tmp_path / "state", url=ledger_url)
    local = rendered_job(store, tmp_path)
    client = Broken(s3_client)
    client.broken = cause == "no credentials"
    if cause == "store locked":  # the upload journal's first read fails as SQLite does under contention
        real_load = store.load
        calls = []

        def locked_once(key: str) -> Any:
            calls.append(key)
            if len(calls) == 1:
                raise sqlite3.OperationalError("database is locked")
            return real_load(key)

        monkeypatch.setattr(store, "load", locked_once)
    watcher = UploadWatcher(
        store,
        client,
        DistributeSettings(bucket=s3_bucket, prefix=s3_prefix),
        outputs_dir=tmp_path / "outputs",
        locks_dir=tmp_path / "locks",
        stop=threading.Event(),
        signer=s3_client,
    )
    try:
        started = time.time()
        failed = step_until(watcher, store, lambda v: v.error is not None)
        assert failed.state == VideoState.RENDERED  # not left uploading
        assert failed.error is not None
        assert failed.error.startswith("upload failed, will retry: ")
        assert ("credentials" if cause == "no credentials" else "database is locked") in failed.error
        assert failed.retry_at is not None
        assert failed.retry_at >= started + 1.0
        assert local.exists()
        shown = json.loads((local.parent / LINKS_NAME).read_text())["videos"][0]
        assert (shown["status"], shown["error"]) == ("rendered", failed.error)  # the view says why
        client.broken = False
        ready = step_until(watcher, store, lambda v: v.state == VideoState.READY and v.evicted)
        assert time.time() >= failed.retry_at  # not before its retry time
        assert ready.error is None
        assert ready.url is not None
        shown = json.loads((local.parent / LINKS_NAME).read_text())["videos"][0]
        assert (shown["status"], shown["url"], shown["local_copy"]) == ("ready", ready.url, False)
        assert not local.exists()
    finally:
        watcher.shutdown()
        store.close()


def test_a_failure_after_the_claim_was_taken_over_is_abandoned_not_recorded(
    tmp_path: Path, s3_client: Any, s3_bucket: str, s3_prefix: str
) -> None:
    """A worker thawed after its lease lapsed finds its upload failing (the new owner evicted the local
    copy, say): the failure is refused by the fence and said as upload_abandoned, not as an upload_failed
    that would promise a retry; the new owner's upload stands."""
    from structlog.testing import capture_logs

    from daemon.distribute.uploader import UploadError

    store = JobStore(tmp_path / "state")
    rendered_job(store, tmp_path)
    stale = store.start_upload("promo", "a.mp4", "k/a.mp4", "host-a:upload@0", lease_s=0.05)
    time.sleep(0.1)
    fresh = store.start_upload("promo", "a.mp4", "k/a.mp4", "host-b:upload@0", lease_s=60.0)
    assert stale is not None
    assert fresh is not None
    watcher = UploadWatcher(
        store,
        s3_client,
        DistributeSettings(bucket=s3_bucket, prefix=s3_prefix),
        outputs_dir=tmp_path / "outputs",
        locks_dir=tmp_path / "locks",
        stop=threading.Event(),
        signer=s3_client,
    )
    video = store.video("promo", "a.mp4")
    assert video is not None
    try:
        with capture_logs() as logs:
            watcher._upload_failed(video, UploadError("a.mp4 is gone from the outputs"), stale)
    finally:
        watcher.shutdown()
    assert [e["event"] for e in logs if e["event"].startswith("upload_")] == ["upload_abandoned"]
    after = store.video("promo", "a.mp4")
    assert after is not None
    assert (after.state, after.owner, after.epoch, after.error) == (
        VideoState.UPLOADING,
        "host-b:upload@0",
        fresh.epoch,
        None,
    )
    store.close()
