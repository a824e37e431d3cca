"""`lipsyncd links [JOB] [--refresh]`: show the links of finished videos; re-sign those that expire within
`links.refresh_before` (signing needs the keys, not the server, so this works while the daemon runs)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from daemon.config import Config
from daemon.distribute.s3 import make_client, presign_get
from daemon.distribute.storage import embedded_storage, external_signer, storage_settings
from daemon.links import iso
from daemon.reconcile import Reconciler
from daemon.store import JobStore, Video, VideoState


def signing_client(config: Config, credentials_file: Path | None) -> Any:
    """Signs for the public URL, as the upload watcher does (see Storage.signing_client)."""
    if config.storage.endpoint_url is None:
        return embedded_storage(config, "links").signing_client()
    signer = external_signer(config, credentials_file)
    return signer if signer is not None else make_client(storage_settings(config, credentials_file))


def ready_videos(store: JobStore, job_id: str | None) -> list[Video]:
    return [v for v in store.videos_in(VideoState.READY) if job_id in (None, v.job_id)]


def refresh_links(
    config: Config, job_id: str | None, *, credentials_file: Path | None = None, write_views: bool = True
) -> int:
    """Sign again the ready links that expire within links.refresh_before; how many. `write_views`: this
    process writes the jobs' links.json as each link is recorded; else (the API, which may write only the
    inbox) the store's outbox leaves them to the watchers' next pass."""
    store = JobStore(config.state_dir, timeout=config.store.busy_timeout, url=config.store.url)
    if write_views:
        store.after_commit = Reconciler(
            store, outputs_dir=config.outputs_dir, locks_dir=config.state_dir / "locks"
        ).reconcile
    client = signing_client(config, credentials_file)
    due = [
        v
        for v in ready_videos(store, job_id)
        if (v.expires_at or 0) - time.time() < config.links.refresh_before
    ]
    for video in due:
        job = store.job(video.job_id)
        assert job is not None and video.object_key is not None
        ttl = int(job.link_ttl or config.links.default_ttl)
        bucket, base_url = config.storage.bucket, config.links.base_url
        link = presign_get(client, bucket, video.object_key, ttl, base_url, download_as=video.output)
        store.relink(video.job_id, video.output, link.url, link.expires_at.timestamp())  # + its view
    store.close()
    return len(due)


def print_links(config: Config, job_id: str | None) -> int:
    """The links, one per line (job/video, expiry, URL: for scripts), then each failed video and why on
    stderr, so a missing link is never silent. 0, or 1 for a job that does not exist (as `lipsyncd status
    JOB` answers)."""
    store = JobStore(config.state_dir, timeout=config.store.busy_timeout, url=config.store.url)
    known = job_id is None or store.job(job_id) is not None
    videos = ready_videos(store, job_id)
    failed = [v for v in store.videos_in(VideoState.FAILED) if job_id in (None, v.job_id)]
    store.close()
    if not known:
        print(f"lipsyncd: no job named {job_id!r}", file=sys.stderr)
        return 1
    for video in videos:
        print(f"{video.job_id}/{video.output}\texpires {iso(video.expires_at)}\t{video.url}")
    if not videos:
        print("no links yet" + (f" for job {job_id!r}" if job_id else ""))
    for video in failed:
        print(
            f"lipsyncd: {video.job_id}/{video.output} has no link: it failed: {video.error}", file=sys.stderr
        )
    return 0
