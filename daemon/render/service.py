"""The render worker: takes queued jobs from the store and renders their videos one after another.

Failures are caught in one place per unit of work: a video that cannot render is marked failed with a
plain-words reason and the job goes on; a job whose audio is unusable fails as a whole. A stop request
(`Interrupted`) puts the video back in the queue, so a restart renders it again and nothing else.
"""

from __future__ import annotations

import contextvars
import errno
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.files import file_sha256
from daemon.inbox import Inbox
from daemon.lease import Heartbeat, worker_name
from daemon.links import POSTER_SUFFIX, UnsafeOutput, job_dir, poster_path
from daemon.ops.metrics import MetricsFile
from daemon.reconcile import Reconciler
from daemon.render.avatar_cache import AvatarCache
from daemon.render.detectors import detector_factories
from daemon.render.faces import builtin_detectors, detector_by_name
from daemon.render.media import MediaError, OutputRemoved
from daemon.render.pipeline import (
    Interrupted,
    JobAudio,
    RenderResult,
    RenderSettings,
    VideoRender,
    prepare_audio,
)
from daemon.render.poster import make_poster
from daemon.render.registry import ModelPool
from daemon.render.types import FaceDetector
from daemon.store import (
    DEFAULT_MAX_ATTEMPTS,
    Claim,
    InvalidTransition,
    Job,
    JobState,
    JobStore,
    LedgerUnreachable,
    LostClaim,
    Rendered,
    StateDiskFull,
    Video,
    VideoState,
)

# how far back (by the job's last change) a restarted render worker looks for files of lost claims
DEAD_CLAIM_SWEEP_S = 24 * 3600.0
log = structlog.get_logger(__name__)

_REMOVED_RETRIES = 3  # renders again after the output folder was deleted mid-render, then fail
_FULL_WAIT_MAX = 30.0  # seconds between tries while the state disk is full
_CANCEL_POLL = 0.5  # seconds between looks at the store for a `lipsyncd cancel` during a render


@dataclass(frozen=True)
class RenderPaths:
    outputs_dir: Path
    scratch_dir: Path
    locks_dir: Path
    models_dir: Path
    shared: Path | None = None  # media must still lie inside it when it is opened (checked again then)


@dataclass(frozen=True)
class _Assignment:
    """One claimed video being rendered: what every step of its render needs."""

    job: Job
    video: Video
    audio: JobAudio
    model_name: str
    pool: ModelPool
    claim: Claim
    lease: Heartbeat
    out_path: Path  # this claim's own file (`.eEPOCH.NAME`), published by the fenced write


@dataclass
class Progress:
    """What the service is doing now, for `STATUS=` lines and `lipsyncd status`."""

    job: str | None = None
    video: str | None = None
    fraction: float = 0.0


class RenderService:
    def __init__(
        self,
        store: JobStore,
        inbox: Inbox,
        models: Sequence[ModelPool],
        *,
        paths: RenderPaths,
        settings: RenderSettings,
        default_model: str,
        detector: str,
        stop: threading.Event,
        max_seconds: float = 3600.0,
        beat: Callable[[], None] = lambda: None,
        metrics: MetricsFile | None = None,
        avatar_cache: AvatarCache | None = None,
        worker: str | None = None,
        lease_s: float = 60.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.store = store
        self.worker = worker or worker_name("render", 0)  # owner of its claims: host:render@slot
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self._audio: dict[str, JobAudio] = {}  # the voice-over of jobs this worker rendered videos of
        self._audio_lock = threading.Lock()
        self.inbox = inbox
        self.pools = list(models)  # one per GPU: videos of a job render on all of them at once
        self._free: queue.Queue[ModelPool] = queue.Queue()
        for pool in self.pools:
            self._free.put(pool)
        self.paths = paths
        self.settings = settings
        self.default_model = default_model
        self.detector_name = detector
        self.max_seconds = max_seconds
        self.stop = stop
        self.beat = beat
        self.avatar_cache = avatar_cache  # detections and model inputs kept per presenter video
        self.progress = Progress()
        self.wake = threading.Event()
        self._detectors: dict[int, FaceDetector] = {}
        self._full_wait = 0.0  # the current wait while the state disk is full; 0 when it is not
        # what follows each change (views, the manifest filed) is applied right after it commits
        self.reconciler = Reconciler(
            store, outputs_dir=paths.outputs_dir, locks_dir=paths.locks_dir, inbox=inbox, metrics=metrics
        )
        store.after_commit = self.reconciler.reconcile

    def detector(self, pool: ModelPool) -> FaceDetector:
        """One detector per worker: OpenCV and ONNX detectors are not shared between threads."""
        if id(pool) not in self._detectors:
            factories = {**builtin_detectors(), **detector_factories(pool.onnxruntime_providers)}
            self._detectors[id(pool)] = detector_by_name(self.detector_name, self.paths.models_dir, factories)
        return self._detectors[id(pool)]

    def preload(self) -> None:
        """Open the default model and the face detector of each worker now, so the first job does not
        wait for them (the built-in model's first write alone imports onnx, ~1.5 s). A model that fails
        to open is left to the first job that asks for it to report."""
        for pool in self.pools:
            if self.stop.is_set():
                return
            try:
                pool.get(self.default_model)
                self.detector(pool)
            except Exception as exc:  # noqa: BLE001 - said; the job that needs it fails with the reason
                log.warning(
                    "model_not_preloaded", model=self.default_model, reason=f"{type(exc).__name__}: {exc}"
                )
                return

    def recover(self) -> None:
        """After a crash: the renders this worker's earlier life left midway go back to the queue (other
        workers' claims lapse by themselves), temp files no live render writes any more are removed, then
        every effect left pending is applied (reconcile)."""
        for video in self.store.release_own(self.worker):
            log.info("render_requeued", job=video.job_id, video=video.output)
        for job_id in self.store.reopen_pending_jobs():
            log.warning("job_reopened", job=job_id, reason="a video of this finished job was never rendered")
        active = self.store.jobs(JobState.RENDERING, JobState.QUEUED)
        for job in active:
            _remove_partials(self.paths.outputs_dir / job.id, older_than=time.time() - self.lease_s)
        self._remove_dead_claims_files()
        self.reconciler.start_up()

    def _remove_dead_claims_files(self) -> None:
        """A worker thawed past its lease can start a file of its lost claim (`.eN.NAME`, its temp or
        poster) after the new owner removed the earlier epochs' files, and be killed before it notices the
        loss: nobody would remove that file, whatever the job's state. A claim's files live only while the
        video is rendering under that epoch; all others go, in the jobs of the last day (age cannot tell:
        the file may be seconds old). A file changed after the claims were read may be a new claim's."""
        since = time.time() - DEAD_CLAIM_SWEEP_S
        for job in self.store.jobs():
            if job.updated >= since or job.state in (JobState.RENDERING, JobState.QUEUED):
                read = time.time()
                videos = self.store.videos(job.id)
                live = {(v.output, v.epoch) for v in videos if v.state is VideoState.RENDERING}
                _remove_dead_epochs(self.paths.outputs_dir / job.id, live, older_than=read)

    def next_job(self) -> Job | None:
        jobs = self.store.jobs(JobState.RENDERING, JobState.QUEUED)
        return jobs[0] if jobs else None

    def run_pending(self) -> int:
        """Claim and render videos until none waits (one claim loop per GPU of this process); returns how
        many jobs this worker finished. Raises Interrupted on stop."""
        if len(self.pools) == 1:
            done = self._claim_loop(self.pools[0])
        else:
            with ThreadPoolExecutor(len(self.pools), thread_name_prefix="gpu-worker") as workers:
                futures = [
                    workers.submit(contextvars.copy_context().run, self._claim_loop, pool)
                    for pool in self.pools
                ]
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                raise errors[0]  # type: ignore[misc]  # Interrupted first of all: the stop reaches the caller
            done = sum(f.result() for f in futures)
        # a job whose last videos failed at their claim (attempts used up) has nobody else to finish it
        for job_id in self.store.active_jobs():
            done += self._complete(job_id)
        return done

    def run_forever(self) -> None:
        stop_listening = self.store.wake_on_work(self.wake)  # another host queued work: claim at once
        try:
            while not self.stop.is_set():
                self.reconciler.reconcile()
                try:
                    self.run_pending()
                except LedgerUnreachable:  # PostgreSQL restarting or cut off (the store said so): wait
                    self.stop.wait(LEDGER_RETRY_S)
                self.beat()
                self.wake.wait(timeout=1.0)
                self.wake.clear()
        finally:
            stop_listening()
        self.reconciler.final_pass()

    def render_job(self, job: Job) -> None:
        """Render what waits, this job among it (its videos are claimed one by one like any other)."""
        self.run_pending()

    # -- one claim at a time -------------------------------------------------------------------------

    def _claim_loop(self, pool: ModelPool) -> int:
        done = 0
        while not self.stop.is_set():
            try:
                claimed = self.store.claim_next_video(
                    self.worker, self.lease_s, max_attempts=self.max_attempts
                )
            except StateDiskFull as exc:
                self._wait_for_space(exc)
                continue
            if claimed is None:
                return done
            video, claim = claimed
            job = self.store.job(video.job_id)
            assert job is not None
            with structlog.contextvars.bound_contextvars(job=job.id, epoch=claim.epoch):
                try:
                    self._render_claimed(job, video, claim, pool)
                    self._space_back()
                except StateDiskFull as exc:  # nothing failed: the video goes back to the queue
                    self._wait_for_space(exc)
                    with suppress(Exception):  # still full: its lease lapses and it is claimed again
                        self.store.requeue_video(job.id, video.output, claim)
                    continue
                except LedgerUnreachable:  # nothing failed: its lease lapses and it is claimed again
                    raise
                except Interrupted:
                    raise
                except (
                    Exception
                ) as exc:  # the one place a video's unexpected failure stops: the worker goes on
                    log.exception("job_crashed", video=video.output)
                    self._crashed(job, video, claim, exc)
            self.progress = Progress()
            self.reconciler.reconcile()  # what a failure left pending, and changes by `lipsyncd cancel`
            done += self._complete(job.id)
        return done

    def _render_claimed(self, job: Job, video: Video, claim: Claim, pool: ModelPool) -> None:
        audio = self._job_audio(job)
        if audio is None:
            return
        with Heartbeat(self.store, video, claim, self.lease_s) as lease:
            self.render_video(job, video, audio, pool, claim=claim, lease=lease)

    def _job_audio(self, job: Job) -> JobAudio | None:
        """The job's voice-over, prepared once per worker; None when it fails the whole job."""
        with self._audio_lock:
            if job.id in self._audio:
                return self._audio[job.id]
        try:
            self._still_inside(job.audio_written, Path(job.audio))
            audio = prepare_audio(Path(job.audio), self.paths.scratch_dir)
        except MediaError as exc:
            said = as_written(str(exc), job.audio, job.audio_written)
            self._fail_job(job, f"the audio {job.audio_written!r} cannot be used: {said}")
            return None
        if audio.seconds > self.max_seconds:
            limit = f"{self.max_seconds / 60:g} minutes"
            self._fail_job(
                job,
                f"the audio is {audio.seconds / 60:.1f} minutes long; outputs may be at most "
                f"{limit} (render.max_video_seconds). Split the voice-over into shorter jobs.",
            )
            return None
        with self._audio_lock:
            if len(self._audio) >= 4:  # the jobs rendering now; older ones are finished
                self._audio.pop(next(iter(self._audio)))
            self._audio[job.id] = audio
        return audio

    def _complete(self, job_id: str) -> int:
        """Move the job on when its last video ended (the store does it once, whoever asks)."""
        try:
            state = self.store.complete_job(job_id)
        except StateDiskFull as exc:
            self._wait_for_space(exc)
            return 0
        if state is None:
            return 0
        videos = self.store.videos(job_id)
        job = self.store.job(job_id)
        if state == JobState.FAILED:
            log.warning("job_failed", job=job_id, reason=job.error if job else None)
            return 1
        failed = sum(v.state == VideoState.FAILED for v in videos)
        log.info("job_rendered", job=job_id, videos=len(videos), failed=failed, state=state.value)
        return 1

    def _crashed(self, job: Job, video: Video, claim: Claim, exc: Exception) -> None:
        try:
            reason = f"an internal error stopped this render ({type(exc).__name__}: {exc})"
            self.store.fail_video(job.id, video.output, reason, claim)
        except (LostClaim, InvalidTransition):
            pass  # another worker has it now, or it was cancelled: nothing of ours to record
        except StateDiskFull as full:
            self._wait_for_space(full)
        except Exception:  # the store or disk itself is failing: the job is retried after a restart
            log.exception("job_fail_unrecorded", job=job.id)
            self.stop.wait(5.0)

    def _fail_job(self, job: Job, reason: str) -> None:
        self.store.fail_job(job.id, reason)  # its videos still to render say why too; manifest filed
        log.warning("job_failed", reason=reason)

    # -- one video -----------------------------------------------------------------------------------

    def render_video(
        self,
        job: Job,
        video: Video,
        audio: JobAudio,
        pool: ModelPool,
        *,
        claim: Claim,
        lease: Heartbeat,
    ) -> None:
        """Render one claimed video into a file of this claim's own (`.eEPOCH.NAME`), published under the
        output's name only by the fenced write that records it (see JobStore.video_rendered)."""
        model_name = job.model or self.default_model
        folder = job_dir(self.paths.outputs_dir, job.id)
        task = _Assignment(
            job, video, audio, model_name, pool, claim, lease, folder / f".e{claim.epoch}.{video.output}"
        )
        with structlog.contextvars.bound_contextvars(video=video.output, model=model_name):
            _remove_earlier_epochs(folder, video.output, claim.epoch)
            self.progress = Progress(job.id, video.output, 0.0)
            result = self._attempt(task)
            if result is not None:
                self._publish(task, result, folder / video.output)

    def _attempt(self, task: _Assignment) -> RenderResult | None:
        """The render, or None when it ended without a file (failed, cancelled, taken over: recorded)."""
        job, video, claim = task.job, task.video, task.claim
        try:
            return self._render_again_if_removed(task)
        except (StateDiskFull, LedgerUnreachable):
            raise
        except Interrupted:
            if task.lease.lost.is_set():  # paused or cut off past its lease: another worker has it now
                _discard(task.out_path)
                log.warning("render_abandoned", reason="the claim was lost (its lease lapsed)")
                return None
            if not self.stop.is_set():  # not the daemon stopping: the job was cancelled
                self.reconciler.reconcile()  # its view shows the cancel `lipsyncd cancel` recorded
                log.info("render_cancelled")
                return None
            with suppress(LostClaim, InvalidTransition):
                self.store.requeue_video(job.id, video.output, claim)
            log.info("render_interrupted")
            raise
        except (MediaError, LookupError) as exc:
            self._fail_video(job, video, as_written(str(exc), video.source, video.source_written), claim)
        except UnsafeOutput as exc:
            self._fail_video(job, video, str(exc.strerror), claim)
        except OSError as exc:
            self._fail_video(job, video, _disk_problem(exc, self._disks()), claim)
        except Exception as exc:
            log.exception("render_crashed")
            self._fail_video(
                job, video, f"an internal error stopped this render ({type(exc).__name__}: {exc})", claim
            )
        return None

    def _publish(self, task: _Assignment, result: RenderResult, final: Path) -> None:
        """Check the render, then record it: the fenced write moves the file to its name (`final`)."""
        job, video, claim = task.job, task.video, task.claim
        out = result.output
        problem, warning = face_check(result.frames, result.faceless_frames, video, self.settings)
        if problem:
            _discard(out)  # nothing to use: no file is left to be uploaded or shown
            self._fail_video(job, video, problem, claim)
            return
        size, sha256 = out.stat().st_size, file_sha256(out)
        self._poster(out)
        rendered = Rendered(
            frames=result.frames,
            faceless_frames=result.faceless_frames,
            size=size,
            sha256=sha256,
            model=task.model_name,
            duration=result.frames / result.fps if result.fps else None,
            warning=warning,
        )
        try:
            # the render is done: wait for room on the state disk rather than lose it
            publish = _Publish(out, final)
            self._record(
                lambda: self.store.video_rendered(job.id, video.output, rendered, claim, publish=publish)
            )
        except InvalidTransition:  # cancelled as it finished: the file is not kept nor shared
            _discard(out)
            log.info("render_cancelled")
            return
        except LostClaim:  # taken over while it rendered: the new owner's file stays as it is
            _discard(out)
            log.warning("render_abandoned", reason="the claim was lost (its lease lapsed)")
            return
        fps = result.frames / result.seconds if result.seconds else 0.0
        log.info(
            "video_rendered",
            frames=result.frames,
            faceless_frames=result.faceless_frames,
            warning=warning,
            seconds=round(result.seconds, 2),
            fps=round(fps, 1),
        )

    def _poster(self, out: Path) -> None:
        """The frame links.html shows; made before the video counts as rendered, so the page written
        for that change has it. Only a picture: a failure is logged and the page shows a placeholder."""
        try:
            make_poster(out, poster_path(out.parent, out.name))
        except Exception as exc:  # noqa: BLE001 - PyAV/PIL errors have many types; none stops the video
            log.warning("poster_failed", error=f"{type(exc).__name__}: {exc}")

    def _render(self, task: _Assignment) -> RenderResult:
        job, video, claim, lease = task.job, task.video, task.claim, task.lease
        model = task.pool.get(task.model_name)
        self._still_inside(video.source_written, Path(video.source))
        last = [0.0]
        unrecorded = [False]

        def on_progress(fraction: float) -> None:
            self.progress.fraction = fraction
            self.beat()
            if fraction - last[0] >= 0.02:
                last[0] = fraction
                try:
                    self.store.set_progress(job.id, video.output, fraction, claim)
                except LostClaim:
                    lease.lost.set()  # the render stops at its next look at its stop event
                except (StateDiskFull, LedgerUnreachable) as exc:  # only shown: render on, say so once
                    if not unrecorded[0]:
                        log.warning("progress_not_recorded", reason=str(exc))
                    unrecorded[0] = True

        return VideoRender(
            source=Path(video.source),
            audio=task.audio,
            out_path=task.out_path,
            model=model,
            detector=self.detector(task.pool),
            settings=self.settings,
            scratch_dir=self.paths.scratch_dir,
            stop=_Halt(self.stop, lambda: self._cancelled(job.id, video.output), lease.lost),
            on_progress=on_progress,
            beat=self.beat,
            cache=self.avatar_cache,
        ).run()

    def _render_again_if_removed(self, task: _Assignment) -> RenderResult:
        """Someone deleted the job's output folder mid-render (`rm -rf outputs/latest_batch/JOB`): the media
        are fine, so the video renders again into a re-made folder, a few times at most."""
        job, video = task.job, task.video
        folder = self.paths.outputs_dir / job.id
        for attempt in range(1, _REMOVED_RETRIES + 2):
            try:
                return self._render(task)
            except OutputRemoved:
                removed = f"the job's output folder {folder} was removed while {video.output} was rendering"
                media = ((video.source_written, video.source), (job.audio_written, job.audio))
                gone = [written for written, path in media if not Path(path).is_file()]
                if gone:
                    raise MediaError(
                        f"{removed}, and {' and '.join(gone)} {'is' if len(gone) == 1 else 'are'} gone too; "
                        "put it back and submit the job again"
                    ) from None
                if attempt > _REMOVED_RETRIES:
                    raise MediaError(
                        f"{removed}, {attempt} times; leave the folder alone while the job runs, then submit "
                        "the job again"
                    ) from None
                log.warning(
                    "output_folder_removed", folder=str(folder), attempt=attempt, action="renders again"
                )
                self.store.set_progress(job.id, video.output, 0.0, task.claim)
        raise AssertionError("unreachable")

    def _cancelled(self, job_id: str, output: str) -> bool:
        video = self.store.video(job_id, output)
        return video is not None and video.state == VideoState.CANCELLED

    def _disks(self) -> dict[str, Path]:
        return {
            "outputs": self.paths.outputs_dir,
            "render scratch": self.paths.scratch_dir,
            "state directory": self.store.path.parent,
        }

    def _record(self, write: Callable[[], None]) -> None:
        """A store write that must not be lost: while the state disk is full or the ledger out of reach,
        wait and write again (fenced: refused if the lease lapsed and another worker took the video
        meanwhile). On a stop it is left unwritten (Interrupted): the video renders again after the
        restart."""
        while True:
            try:
                write()
            except StateDiskFull as exc:
                if self.stop.is_set():
                    raise Interrupted from exc
                self._wait_for_space(exc)
                continue
            except LedgerUnreachable as exc:  # the store logs the outage's start and end once each
                if self.stop.is_set():
                    raise Interrupted from exc
                self.beat()
                self.stop.wait(LEDGER_RETRY_S)
                continue
            self._space_back()
            return

    def _wait_for_space(self, exc: StateDiskFull) -> None:
        """One plain line per try and a growing wait (2 s, 4 s, ... 30 s), not a traceback every 5 s."""
        self._full_wait = min(max(2 * self._full_wait, 2.0), _FULL_WAIT_MAX)
        log.warning("state_disk_full", reason=str(exc), retry_in_s=self._full_wait)
        self.beat()
        self.stop.wait(self._full_wait)

    def _space_back(self) -> None:
        if self._full_wait:
            log.info("state_disk_writable", action="carrying on where it stopped")
            self._full_wait = 0.0

    def _still_inside(self, written: str, path: Path) -> None:
        """The manifest was checked when it was claimed; a file swapped for a symlink since then must not
        make us read outside the share."""
        shared = self.paths.shared
        if shared is not None and not path.resolve().is_relative_to(shared.resolve()):
            raise MediaError(
                f"{written} now points outside the shared folder (it was replaced by a link after the job "
                "was queued), so it was not read. Copy the real file into the share and submit the job again."
            )

    def _fail_video(self, job: Job, video: Video, reason: str, claim: Claim) -> None:
        try:
            self._record(lambda: self.store.fail_video(job.id, video.output, reason, claim))
        except (LostClaim, InvalidTransition):
            return  # another worker has it now, or it was cancelled: its failure is not ours to record
        log.warning("video_failed", reason=reason)


LEDGER_RETRY_S = 1.0  # how often a worker tries an unreachable ledger again


class _Halt(threading.Event):
    """What a render stops on: the daemon stopping, or its video cancelled with `lipsyncd cancel` (another
    process: the store is asked at most every _CANCEL_POLL seconds). The pipeline only calls is_set()."""

    def __init__(self, stop: threading.Event, cancelled: Callable[[], bool], lost: threading.Event) -> None:
        super().__init__()
        self._stop, self._ask, self._lost = stop, cancelled, lost
        self._cancelled, self._next = False, 0.0

    def is_set(self) -> bool:
        if self._stop.is_set() or self._cancelled or self._lost.is_set():
            return True
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + _CANCEL_POLL
            with suppress(LedgerUnreachable):  # asked again at the next poll; the render goes on
                self._cancelled = self._ask()
        return self._cancelled


class _Publish:
    """Inside the fenced write that records the render: the claim's own file (and its poster) take the
    output's names. Atomic renames in one folder: readers see the old file or the new one. Asked again
    (the write it ran in could not commit: a full state disk), it knows its own file by its inode: moved
    into place by the try before, it is not moved twice."""

    def __init__(self, staged: Path, final: Path) -> None:
        self.staged, self.final = staged, final
        self.inode = staged.stat().st_ino

    def __call__(self) -> None:
        poster = poster_path(self.staged.parent, self.staged.name)
        if poster.exists():
            os.replace(poster, poster_path(self.final.parent, self.final.name))
        if not self.staged.exists() and _inode(self.final) == self.inode:
            return
        os.replace(self.staged, self.final)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _discard(staged: Path) -> None:
    staged.unlink(missing_ok=True)
    poster_path(staged.parent, staged.name).unlink(missing_ok=True)


def _remove_dead_epochs(folder: Path, live: set[tuple[str, int]], *, older_than: float) -> None:
    """Every claim's file (`.eN.NAME`, `..eN.STEM.part.mp4`, its poster and their temps) in `folder`
    whose (output, epoch) is not in `live`, unchanged since `older_than`."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        mark, _, rest = path.name.lstrip(".").partition(".")
        if not (path.name.startswith(".") and mark[:1] == "e" and mark[1:].isdigit()):
            continue
        epoch = int(mark[1:])
        if not any(held == epoch and _of_output(rest, output) for output, held in live):
            with suppress(FileNotFoundError):
                if path.stat().st_mtime < older_than:
                    path.unlink()


def _of_output(rest: str, output: str) -> bool:
    """`rest` (a claim file's name after `.eN.`) is the output, its render temp or its poster (temp)."""
    stem = Path(output).stem
    return rest in (output, f"{stem}.part.mp4") or rest.startswith(stem + POSTER_SUFFIX)


def _remove_earlier_epochs(folder: Path, output: str, epoch: int) -> None:
    """Files earlier claims of this video left (`.eN.NAME` and their temp files): never published now."""
    if not folder.is_dir():
        return
    stem = Path(output).stem
    for path in folder.iterdir():
        mark, _, rest = path.name.lstrip(".").partition(".")
        ours = rest in (output, f"{stem}.part.mp4") or rest.startswith(stem + POSTER_SUFFIX)
        if mark[:1] == "e" and mark[1:].isdigit() and int(mark[1:]) < epoch and ours:
            path.unlink(missing_ok=True)


def as_written(message: str, resolved: str, written: str) -> str:
    """A media error names the file as the manifest did: the server's own folders mean nothing to the
    people who read links.json and the page (and are not theirs to know)."""
    return message.replace(resolved, written)


def face_check(
    frames: int, faceless: int, video: Video, settings: RenderSettings
) -> tuple[str | None, str | None]:
    """(why the video fails, a warning for a ready one) from its frames without a face. No face at all
    fails it unless render.faceless_videos is pass_through; a share of faceless frames over
    render.faceless_warning_share is only a warning (those frames are shown as they were)."""
    name = Path(video.source_written).name
    if frames and faceless >= frames and settings.faceless_videos == "fail":
        return (
            f"no face found in any of the {frames} frames of {name}, so there is nothing to lip-sync. Use a "
            "clip where the presenter's face is clearly visible and turned to the camera, or set "
            "render.faceless_videos: pass_through to get such videos back unchanged",
            None,
        )
    if frames and faceless / frames > settings.faceless_warning_share:
        return None, (
            f"no face found in {faceless} of the {frames} frames of {name} ({faceless / frames:.0%}); those "
            "frames are not lip-synced. Check that the face is visible and turned to the camera"
        )
    return None, None


def _remove_partials(folder: Path, *, older_than: float | None = None) -> None:
    """Hidden temp files (`.NAME.part.mp4`, `.NAME.poster.jpg.*.tmp`, a claim's `.eN.NAME`) a killed
    process left behind. With `older_than`, only those unchanged since then: another worker's live render
    keeps writing its own."""
    if folder.is_dir():
        for path in folder.iterdir():
            poster_temp = ".poster.jpg." in path.name and path.name.endswith(".tmp")
            mark = path.name[1:].partition(".")[0]
            staged = mark[:1] == "e" and mark[1:].isdigit()
            if path.name.startswith(".") and (path.name.endswith(".part.mp4") or poster_temp or staged):
                with suppress(FileNotFoundError):
                    if older_than is None or path.stat().st_mtime < older_than:
                        path.unlink()


def _disk_problem(exc: OSError, disks: dict[str, Path]) -> str:
    """Plain words for a failed write, naming the disk (outputs, render scratch or state) that failed."""
    outputs = disks["outputs"]
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what, folder = _full_disk(exc, disks)
        full = "is full" if exc.errno == errno.ENOSPC else "is full for this user (disk quota)"
        return (
            f"the disk holding the {what} ({folder}) {full}: {_free(folder) / 2**20:.1f} MiB free; "
            "free some space there, then submit the job again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"lipsyncd may not write into {outputs}; check the folder's owner and permissions"
    return f"the output could not be written ({exc.strerror}); check the disk holding {outputs}"


def _full_disk(exc: OSError, disks: dict[str, Path]) -> tuple[str, Path]:
    """The disk the failed write was on: the one holding the file named in the error, else the one with
    the least room (FFmpeg and spill-file errors often name no file)."""
    if exc.filename:
        named = Path(os.fsdecode(exc.filename))
        for what, folder in disks.items():
            if named.is_relative_to(folder):
                return what, folder
    return min(disks.items(), key=lambda item: _free(item[1]))


def _free(folder: Path) -> int:
    """Free bytes on the disk holding `folder` (or its nearest existing parent)."""
    for path in (folder, *folder.parents):
        try:
            return shutil.disk_usage(path).free
        except OSError:
            continue
    return 0
