"""The upload watcher: rendered videos of jobs that asked for distribution go to object storage
(at most `max_concurrent` at once, resumable), get a presigned link in links.json, and then the local copy
is evicted. A watchdog observer on the outputs only wakes the loop; the job store says what is due.

Order per video, each step committed before the next: object key chosen -> upload (verified: size,
checksum) -> link signed -> READY in the store -> links.json shows the link -> local copy deleted.
A crash anywhere repeats at most the step in flight; nothing is evicted before its upload is verified.
"""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler

from daemon.distribute.notify import FailedVideo, JobLinks, Notifier, VideoLink
from daemon.distribute.s3 import Link, object_key, presign_get
from daemon.distribute.uploader import UploadCancelled, UploadError, UploadSettings, upload_file
from daemon.files import file_sha256
from daemon.inbox import start_observer
from daemon.lease import Heartbeat, worker_name
from daemon.links import ViewChecker, file_signature, summary
from daemon.linkspage import PAGE_NAME
from daemon.ops.metrics import MetricsFile
from daemon.reconcile import Eviction, Reconciler
from daemon.store import (
    Claim,
    Effect,
    InvalidTransition,
    Job,
    JobState,
    JobStore,
    LedgerUnreachable,
    LostClaim,
    Video,
    VideoState,
)

log = structlog.get_logger(__name__)

RETRY_FAILED_AFTER = 60.0  # seconds before a video whose upload failed for a non-network reason is retried
MAX_RERENDERS = 3  # a job whose rendered files keep vanishing is rendered again at most this often
VIEWS_CHECKED_EVERY = 3.0  # seconds between looks at every job's links.json (see ViewChecker)


@dataclass(frozen=True)
class DistributeSettings:
    bucket: str
    prefix: str
    max_concurrent: int = 3
    default_ttl: int = 86400
    base_url: str | None = None
    eviction: str = "delete"  # delete, keep, or after (keep_hours)
    keep_hours: float = 0.0
    poll_interval: float = 1.0  # seconds between looks at the job store (cheap: one indexed query)
    upload_page: bool = False  # links.html goes up beside the videos of a done job, with its own link
    upload: UploadSettings = UploadSettings()


class UploadWatcher:
    def __init__(
        self,
        store: JobStore,
        client: Any,
        settings: DistributeSettings,
        *,
        outputs_dir: Path,
        locks_dir: Path,
        stop: threading.Event,
        notifier: Notifier | None = None,
        beat: Callable[[], None] = lambda: None,
        metrics: MetricsFile | None = None,
        signer: Any = None,
        worker: str | None = None,
        lease_s: float = 60.0,
    ) -> None:
        self.store = store
        self.worker = worker or worker_name("upload", 0)  # owner of its upload claims
        self.lease_s = lease_s
        self._claims: dict[tuple[str, str], Claim] = {}  # the uploads this worker holds now
        self.signer = signer if signer is not None else client  # signs links for the public URL
        self.client = client
        self.settings = settings
        self.outputs_dir = outputs_dir
        self.locks_dir = locks_dir
        self.stop = stop
        self.notifier = notifier
        self.beat = beat
        self.wake = threading.Event()
        self._in_flight: dict[tuple[str, str], Future[None]] = {}
        self._retry_at: dict[tuple[str, str], float] = {}  # links pages whose upload failed
        self._views = ViewChecker(store, outputs_dir, locks_dir)
        self._views_due = 0.0
        self._published: dict[str, tuple[int, int, int]] = {}  # job -> links.html signature last published
        self._pool = ThreadPoolExecutor(settings.max_concurrent, thread_name_prefix="upload")
        # what follows each change (views, eviction, webhooks) is applied right after it commits
        self.reconciler = Reconciler(
            store,
            outputs_dir=outputs_dir,
            locks_dir=locks_dir,
            eviction=lambda: Eviction(self.settings.eviction, self.settings.keep_hours),
            notify=self._notify,
            metrics=metrics,
        )
        store.after_commit = self.reconciler.reconcile

    # -- the loop ------------------------------------------------------------------------------------

    def recover(self) -> None:
        """Uploads caught midway go back to 'rendered' (the journal lets them resume where they were);
        then every effect left pending is applied (reconcile)."""
        for video in self.store.videos_in(VideoState.UPLOADING):
            if video.owner not in (None, self.worker):
                continue  # another upload worker's: it lapses by itself if that worker is gone
            self.store.upload_stopped(video.job_id, video.output)
            log.info("upload_resumable", job=video.job_id, video=video.output)
        self.reconciler.start_up()

    def run_forever(self) -> None:
        """Events from the outputs only make it react sooner: the store is checked every poll interval."""
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        observer = start_observer(self.outputs_dir, _Wake(self.wake), polling=False, recursive=True)
        stop_listening = self.store.wake_on_work(self.wake)  # a render on another host finished
        try:
            while not self.stop.is_set():
                # PostgreSQL away (the store said so once): the next pass retries
                with suppress(LedgerUnreachable):
                    self.step()
                self.beat()
                self.wake.wait(timeout=self.settings.poll_interval)
                self.wake.clear()
        finally:
            stop_listening()
            observer.stop()
            self.shutdown()

    def run_until_idle(self, timeout: float = 3600.0) -> None:
        """Upload everything due now and wait for it (`lipsyncd upload --once`, the demo, benchmarks)."""
        deadline = time.monotonic() + timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.step()
            if not self._in_flight and not self._due():
                return
            time.sleep(0.2)

    def shutdown(self) -> None:
        self.stop.set()
        self._pool.shutdown(wait=True)
        self.reconciler.final_pass()

    def step(self) -> None:
        """One pass: reap finished uploads, start due ones, finish complete jobs, apply pending effects
        (views, eviction, webhooks)."""
        self._reap()
        self._send_back_vanished()
        for video in self._due():
            key = (video.job_id, video.output)
            if len(self._in_flight) >= self.settings.max_concurrent:
                break
            self._in_flight[key] = self._pool.submit(self._upload_one, video)
        self._finish_jobs()
        self.reconciler.reconcile()
        self._publish_pages()
        self._check_views()

    def _due(self) -> list[Video]:
        now = time.time()
        due = []
        for video in [*self.store.videos_in(VideoState.RENDERED), *self.store.uploads_lapsed()]:
            key = (video.job_id, video.output)
            if key in self._in_flight or (video.retry_at or 0.0) > now:
                continue
            job = self.store.job(video.job_id)
            if job is not None and job.distribute and self._local(video).is_file():
                due.append(video)
        return due

    def _reap(self) -> None:
        for key, future in list(self._in_flight.items()):
            if future.done():
                del self._in_flight[key]
                if (error := future.exception()) is not None and not isinstance(error, UploadCancelled):
                    log.error("upload_worker_crashed", job=key[0], video=key[1], error=repr(error))
                self._left_uploading(*key)

    def _left_uploading(self, job_id: str, output: str) -> None:
        """An upload thread that ended with its video still uploading (its failure could not be recorded
        then: the store was locked) goes through the failure path again, from the loop."""
        if self.stop.is_set() or output == PAGE_NAME:
            return
        video = self.store.video(job_id, output)
        claim = self._claims.pop((job_id, output), None)
        if video is not None and video.state == VideoState.UPLOADING and video.owner in (None, self.worker):
            with structlog.contextvars.bound_contextvars(job=job_id, video=output):
                error = UploadError("the upload ended without recording its outcome")
                self._upload_failed(video, error, claim)

    # -- one video -----------------------------------------------------------------------------------

    def _upload_one(self, video: Video) -> None:
        """The upload of one video. Every error on the way (storage, credentials, the job store, the
        disk, a bug) ends in `_upload_failed`: the video goes back to rendered with the reason and a
        retry time, never left uploading until a restart."""
        with structlog.contextvars.bound_contextvars(job=video.job_id, video=video.output):
            try:
                self._upload_steps(video)
            except UploadCancelled:
                raise
            except LostClaim:
                log.warning("upload_abandoned", reason="the claim was lost (its lease lapsed)")
            except Exception as exc:  # noqa: BLE001 - the one failure path of an upload
                self._upload_failed(video, exc, self._claims.get((video.job_id, video.output)))

    def _upload_steps(self, video: Video) -> None:
        job = self.store.job(video.job_id)
        assert job is not None
        if self._vanished(video):
            return  # the next pass sends it back to be rendered again
        problem = self._not_the_rendered_file(video)
        if problem:
            raise UploadError(problem)
        key = video.object_key or self._choose_key(job, video)
        try:
            claim = self.store.start_upload(job.id, video.output, key, self.worker, self.lease_s)
        except InvalidTransition:  # cancelled since it was found due: not uploaded
            log.info("upload_skipped", reason="the job was cancelled")
            return
        if claim is None:
            log.info("upload_skipped", reason="another upload worker holds it")
            return
        self._claims[(job.id, video.output)] = claim
        with structlog.contextvars.bound_contextvars(epoch=claim.epoch):
            self._upload_claimed(job, video, key, claim)

    def _upload_claimed(self, job: Job, video: Video, key: str, claim: Claim) -> None:
        with Heartbeat(self.store, video, claim, self.lease_s) as lease:
            try:
                result = upload_file(
                    self.client,
                    self.settings.bucket,
                    key,
                    self._local(video),
                    self.store,
                    self.settings.upload,
                    cancel=_Either(self.stop, lease.lost),
                )
            except UploadCancelled:
                if lease.lost.is_set():
                    raise LostClaim(job.id, video.output, claim, None, 0) from None
                with suppress(LostClaim, InvalidTransition):
                    self.store.upload_stopped(job.id, video.output, claim)
                log.info("upload_paused", key=key, reason="stopping; the upload resumes on the next start")
                raise
        if result.sha256 != video.sha256:
            raise UploadError("the uploaded file differs from the rendered one")
        link = self._sign(job, key, download_as=video.output)
        try:  # the link is shown, then the copy evicted: effects of this change (daemon.reconcile)
            self.store.video_ready(job.id, video.output, link.url, link.expires_at.timestamp(), claim)
        except InvalidTransition:  # cancelled while it went up: its link is never published
            log.info("upload_dropped", key=key, reason="the job was cancelled")
            return
        log.info("video_ready", key=key, bytes=result.size, resumed=result.parts > result.sent_parts)

    def _not_the_rendered_file(self, video: Video) -> str | None:
        """Only the very file the renderer wrote goes up: not a symlink put in its place (it could point
        anywhere), not a file whose bytes changed since (checked before a single byte is sent)."""
        path = self._local(video)
        try:
            info = path.lstat()
        except FileNotFoundError:
            return f"{path.name} is gone from the outputs"
        if not stat.S_ISREG(info.st_mode):
            return (
                f"{path.name} in the outputs is not the rendered file (a link or special file); not uploaded"
            )
        if info.st_size != video.size or file_sha256(path) != video.sha256:
            return f"{path.name} changed after it was rendered; render the job again to share it"
        return None

    def _choose_key(self, job: Job, video: Video) -> str:
        """Chosen once and stored, so a resumed or repeated upload goes to the same object."""
        when = datetime.fromtimestamp(video.rendered_at or time.time(), UTC)
        return object_key(self.settings.prefix, job.id, video.output, when)

    def _sign(self, job: Job, key: str, *, download_as: str | None = None) -> Link:
        ttl = int(job.link_ttl or self.settings.default_ttl)
        return presign_get(
            self.signer, self.settings.bucket, key, ttl, self.settings.base_url, download_as=download_as
        )

    def _upload_failed(self, video: Video, exc: BaseException, claim: Claim | None = None) -> None:
        """Not a network blip (those are retried inside upload_file): keep the file, say why, retry later.
        Recorded in the store (the reason and the retry time), so a restart keeps both; if even that
        cannot be written now (the store locked or its disk full), the video stays where it is and the
        next failure or start-up records it."""
        said = str(exc) if isinstance(exc, (UploadError, OSError)) else f"{type(exc).__name__}: {exc}"
        reason = f"upload failed, will retry: {said}"
        retry_at = time.time() + RETRY_FAILED_AFTER
        said_failed = False
        for attempt in range(3):  # a store busy for a moment must not leave the video uploading
            try:
                self.store.upload_failed(video.job_id, video.output, reason, retry_at, claim)
            except LostClaim:  # paused or cut off past its lease: the failure (its copy evicted, say) is
                # the new owner's doing, not one to report or retry
                log.warning("upload_abandoned", reason="the claim was lost (its lease lapsed)", error=said)
                return
            except InvalidTransition:
                log.error("upload_failed", error=said, retry_in_s=RETRY_FAILED_AFTER)
                return  # cancelled meanwhile: nothing to retry here
            except Exception as store_exc:  # noqa: BLE001 - the store itself: say so, try again shortly
                if not said_failed:
                    log.error("upload_failed", error=said, retry_in_s=RETRY_FAILED_AFTER)
                    said_failed = True
                log.error("upload_failure_unrecorded", error=f"{type(store_exc).__name__}: {store_exc}")
                self.stop.wait(0.5 * (attempt + 1))
            else:
                log.error("upload_failed", error=said, retry_in_s=RETRY_FAILED_AFTER)
                return

    # -- rendered files that vanished before their upload --------------------------------------------

    def _send_back_vanished(self) -> None:
        """A rendered file deleted before it was uploaded (its job folder removed by hand, say) would
        leave the video waiting forever: render it again, or fail it in plain words if it cannot be."""
        for video in self.store.videos_in(VideoState.RENDERED):
            if (video.job_id, video.output) in self._in_flight or not self._vanished(video):
                continue
            job = self.store.job(video.job_id)
            if job is None or not job.distribute or job.state == JobState.RENDERING:
                continue  # a job still rendering is sent back once that pass is over
            with structlog.contextvars.bound_contextvars(job=job.id, video=video.output):
                self._render_again_or_fail(job, video)

    def _render_again_or_fail(self, job: Job, video: Video) -> None:
        gone = f"the rendered file {video.output} vanished from {self.outputs_dir / job.id} before upload"
        problem = self._cannot_render_again(job, video)
        try:
            if problem:
                self.store.fail_video(job.id, video.output, f"{gone}; {problem}")
                log.warning("video_failed", reason=f"{gone}; {problem}")
                return
            if self.store.render_again(job.id, video.output, f"{gone}; rendering it again"):
                log.warning("rendered_file_vanished", reason=f"{gone}; rendering it again")
        except InvalidTransition:
            # another upload worker uploaded it since the list was read, and removed the local copy
            log.debug("vanished_video_moved_on")

    def _cannot_render_again(self, job: Job, video: Video) -> str | None:
        if job.state not in (JobState.RENDERED, JobState.QUEUED):
            return f"the job is {job.state.value}, so it is not rendered again. Submit the job again"
        missing = [
            w
            for w, p in ((job.audio_written, job.audio), (video.source_written, video.source))
            if not Path(p).is_file()
        ]
        if missing:
            return (
                f"it cannot be rendered again because {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} gone too. "
                "Put the files back and submit the job again"
            )
        if job.rerenders >= MAX_RERENDERS:
            return (
                f"it was rendered {job.rerenders + 1} times and its file was removed each time, so lipsyncd "
                "stopped. Find what deletes files in the outputs folder, then submit the job again"
            )
        return None

    def _vanished(self, video: Video) -> bool:
        try:
            self._local(video).lstat()
        except FileNotFoundError:
            return True
        return False

    # -- eviction and job completion ---------------------------------------------------------------------

    def _finish_jobs(self) -> None:
        for job in self.store.jobs(JobState.RENDERED):
            videos = self.store.videos(job.id)
            if all(v.state == VideoState.FAILED for v in videos):
                self._fail_job(job, videos)
            elif all(v.state in (VideoState.READY, VideoState.FAILED) for v in videos):
                try:
                    state = self.store.finish_job(job.id)  # done, or partial: webhooks go out (reconcile)
                except InvalidTransition:
                    continue  # another upload worker finished it (or it was cancelled) just now
                log.info(
                    "job_distributed",
                    job=job.id,
                    state=state.value,
                    ready=sum(v.state == VideoState.READY for v in videos),
                    failed=sum(v.state == VideoState.FAILED for v in videos),
                )

    def _fail_job(self, job: Job, videos: list[Video]) -> None:
        """Every video failed after rendering (its file vanished and it could not be rendered again)."""
        reasons = "\n".join(f"  - {v.source_written}: {v.error}" for v in videos)
        self.store.fail_job(job.id, f"no video of this job could be shared:\n{reasons}")
        log.warning("job_failed", job=job.id, reason="no video of this job could be shared")

    # -- the links page in storage (links.upload_page) ---------------------------------------------------

    def _publish_pages(self) -> None:
        """A finished job's links.html (done, or partial: its ready videos are worth sharing) goes up
        beside its videos, and again whenever the page changes (its video links were re-signed by
        `lipsyncd links --refresh`); its link is signed after each upload, so it lasts at least as long as
        the video links it shows. Looks at a page only when its file changed since last published."""
        if not self.settings.upload_page:
            return
        # a job whose views are still to be written may not have its last page on disk (its writer was busy):
        # the page goes up once the view is settled, never a page behind the store
        unsettled = {effect.job_id for effect in self.store.pending(Effect.VIEWS)}
        for job in self.store.jobs(JobState.DONE, JobState.PARTIAL):
            key = (job.id, PAGE_NAME)
            page = self.outputs_dir / job.id / PAGE_NAME
            if (
                not job.distribute
                or job.id in unsettled
                or key in self._in_flight
                or self._retry_at.get(key, 0.0) > time.monotonic()
            ):
                continue
            seen = file_signature(page)
            if seen is None or self._published.get(job.id) == seen:
                continue
            if job.page_sha256 is not None and file_sha256(page) == job.page_sha256:
                self._published[job.id] = seen
                continue
            self._in_flight[key] = self._pool.submit(self._publish_page, job, page)

    def _publish_page(self, job: Job, page: Path) -> None:
        with structlog.contextvars.bound_contextvars(job=job.id, video=PAGE_NAME):
            key = object_key(
                self.settings.prefix, job.id, PAGE_NAME, datetime.fromtimestamp(job.created, UTC)
            )
            try:
                result = upload_file(
                    self.client,
                    self.settings.bucket,
                    key,
                    page,
                    self.store,
                    self.settings.upload,
                    cancel=self.stop,
                )
            except (UploadError, OSError) as exc:
                self._retry_at[(job.id, PAGE_NAME)] = time.monotonic() + RETRY_FAILED_AFTER
                log.error("page_upload_failed", key=key, error=str(exc))
                return
            link = self._sign(job, key)
            self.store.set_page(job.id, link.url, link.expires_at.timestamp(), result.sha256)
            log.info("page_published", key=key, bytes=result.size, expires_at=link.expires_at.isoformat())

    def _check_views(self) -> None:
        """links.json edited, truncated or left stale by hand or by a failed write is put right within
        seconds, not at the job's next change (a finished job has none)."""
        if time.monotonic() < self._views_due:
            return
        self._views_due = time.monotonic() + VIEWS_CHECKED_EVERY
        for job_id, was in self._views.check():
            log.warning("links_view_repaired", job=job_id, was=was)

    def _notify(self, job: Job, videos: list[Video], state: JobState) -> None:
        if not job.notify or self.notifier is None or not self.store.mark_notified(job.id):
            return
        ready = [v for v in videos if v.state == VideoState.READY and v.url]
        failed = tuple(
            FailedVideo(v.output, v.source_written, v.error or "")
            for v in videos
            if v.state == VideoState.FAILED
        )
        links = JobLinks(
            job.id, tuple(_video_link(v) for v in ready), state.value, summary(job, videos), failed
        )
        self.notifier.send(job.notify, links)

    # -- helpers -------------------------------------------------------------------------------------

    def _local(self, video: Video) -> Path:
        return self.outputs_dir / video.job_id / video.output


def _video_link(video: Video) -> VideoLink:
    expires = datetime.fromtimestamp(video.expires_at or 0.0, UTC)
    return VideoLink(video.output, video.url or "", expires, video.sha256 or "", video.size or 0)


class _Either(threading.Event):
    """What an upload stops on: the daemon stopping, or its claim lost (the uploader only calls is_set)."""

    def __init__(self, *events: threading.Event) -> None:
        super().__init__()
        self._events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self._events)


class _Wake(FileSystemEventHandler):
    """Any change in the outputs wakes the loop; the store, not the event, says what to do."""

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.wake.set()
