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
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.files import file_sha256
from daemon.inbox import Inbox
from daemon.links import UnsafeOutput, job_dir, poster_path
from daemon.ops.metrics import Metrics
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
    InvalidTransition,
    Job,
    JobState,
    JobStore,
    Rendered,
    StateDiskFull,
    Video,
    VideoState,
)

log = structlog.get_logger(__name__)

_PENDING = (VideoState.QUEUED, VideoState.RENDERING)
_RENDERED = (VideoState.RENDERED, VideoState.UPLOADING, VideoState.READY)
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
        metrics: Metrics | None = None,
        avatar_cache: AvatarCache | None = None,
    ) -> None:
        self.store = store
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
        self.metrics = metrics or Metrics(None, "render")
        self.avatar_cache = avatar_cache  # detections and model inputs kept per presenter video
        self.progress = Progress()
        self.wake = threading.Event()
        self._detectors: dict[int, FaceDetector] = {}
        self._full_wait = 0.0  # the current wait while the state disk is full; 0 when it is not
        # what follows each change (views, the manifest filed) is applied right after it commits
        self.reconciler = Reconciler(
            store, outputs_dir=paths.outputs_dir, locks_dir=paths.locks_dir, inbox=inbox
        )
        store.after_commit = self.reconciler.reconcile

    def detector(self, pool: ModelPool) -> FaceDetector:
        """One detector per worker: OpenCV and ONNX detectors are not shared between threads."""
        if id(pool) not in self._detectors:
            factories = {**builtin_detectors(), **detector_factories(pool.providers)}
            self._detectors[id(pool)] = detector_by_name(self.detector_name, self.paths.models_dir, factories)
        return self._detectors[id(pool)]

    def recover(self) -> None:
        """After a crash: renders caught midway go back to the queue and their temp files are removed;
        then every effect left pending is applied (reconcile)."""
        for video in self.store.videos_in(VideoState.RENDERING):
            self.store.requeue_video(video.job_id, video.output)
            log.info("render_requeued", job=video.job_id, video=video.output)
        for job_id in self.store.reopen_pending_jobs():
            log.warning("job_reopened", job=job_id, reason="a video of this finished job was never rendered")
        active = self.store.jobs(JobState.RENDERING, JobState.QUEUED)
        for job in active:
            _remove_partials(self.paths.outputs_dir / job.id)
        self.reconciler.start_up()

    def next_job(self) -> Job | None:
        jobs = self.store.jobs(JobState.RENDERING, JobState.QUEUED)
        return jobs[0] if jobs else None

    def run_pending(self) -> int:
        """Render every job waiting now; returns how many were finished. Raises Interrupted on stop."""
        done = 0
        while not self.stop.is_set() and (job := self.next_job()) is not None:
            try:
                self.render_job(job)
                self._space_back()
            except StateDiskFull as exc:  # nothing failed: the job is taken up again as the store has it
                self._wait_for_space(exc)
                continue
            except Exception as exc:  # the one place a job's unexpected failure stops: the daemon goes on
                log.exception("job_crashed", job=job.id)
                self._crashed(job, exc)
            self.progress = Progress()
            self.reconciler.reconcile()  # what a failure left pending, and changes by `lipsyncd cancel`
            done += 1
        return done

    def run_forever(self) -> None:
        while not self.stop.is_set():
            self.reconciler.reconcile()
            self.run_pending()
            self.beat()
            self.wake.wait(timeout=1.0)
            self.wake.clear()

    # -- one job -------------------------------------------------------------------------------------

    def render_job(self, job: Job) -> None:
        with structlog.contextvars.bound_contextvars(job=job.id):
            if job.state == JobState.QUEUED:
                try:
                    self.store.start_job(job.id)
                except InvalidTransition:  # cancelled between the look and the move: `cancel` files it
                    log.info("job_cancelled", before="rendering")
                    return
            started = time.monotonic()
            try:
                self._still_inside(job.audio_written, Path(job.audio))
                audio = prepare_audio(Path(job.audio), self.paths.scratch_dir)
            except MediaError as exc:
                said = as_written(str(exc), job.audio, job.audio_written)
                self._fail_job(job, f"the audio {job.audio_written!r} cannot be used: {said}")
                return
            if audio.seconds > self.max_seconds:
                limit = f"{self.max_seconds / 60:g} minutes"
                self._fail_job(
                    job,
                    f"the audio is {audio.seconds / 60:.1f} minutes long; outputs may be at most "
                    f"{limit} (render.max_video_seconds). Split the voice-over into shorter jobs.",
                )
                return
            # `rendering` too: a video whose end a full state disk kept from being recorded renders again
            todo = [v for v in self.store.videos(job.id) if v.state in _PENDING]
            self._render_all(job, todo, audio)
            self._finish_job(job, time.monotonic() - started)

    def _render_all(self, job: Job, videos: list[Video], audio: JobAudio) -> None:
        """Each video on the next free worker (GPU); with one worker, simply one after another."""
        if len(self.pools) == 1:
            for video in videos:
                self.render_video(job, video, audio, self.pools[0])
            return
        with ThreadPoolExecutor(len(self.pools), thread_name_prefix="gpu-worker") as workers:
            futures = [
                workers.submit(contextvars.copy_context().run, self._on_free_worker, job, v, audio)
                for v in videos
            ]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]  # Interrupted first of all: the stop reaches the caller

    def _on_free_worker(self, job: Job, video: Video, audio: JobAudio) -> None:
        pool = self._free.get()
        try:
            self.render_video(job, video, audio, pool)
        finally:
            self._free.put(pool)

    def _finish_job(self, job: Job, seconds: float) -> None:
        current = self.store.job(job.id)
        if current is not None and current.state == JobState.CANCELLED:
            self._file_cancelled(current)
            return
        videos = self.store.videos(job.id)
        if pending := [v.output for v in videos if v.state in _PENDING]:
            log.warning("job_unfinished", pending=pending)  # not finished with a video left behind
            return
        rendered = [v for v in videos if v.state in _RENDERED]
        if not rendered:
            reasons = "\n".join(f"  - {v.source_written}: {v.error}" for v in videos)
            self._fail_job(job, f"no video of this job could be rendered:\n{reasons}")
            return
        if not job.distribute:  # nothing left to do: done, or partial when some videos failed
            self._record(lambda: self.store.job_rendered(job.id, finish=True))
        else:
            self._record(lambda: self.store.job_rendered(job.id))
        finished = self.store.job(job.id)
        self.metrics.job("rendered")
        failed = len(videos) - len(rendered)
        state = finished.state.value if finished else None
        log.info("job_rendered", videos=len(videos), failed=failed, state=state, seconds=round(seconds, 1))

    def _file_cancelled(self, job: Job) -> None:
        """A job cancelled while it rendered: its manifest goes to failed/ with the reason (an effect
        `lipsyncd cancel` recorded, applied here now rather than at the next pass)."""
        self.reconciler.reconcile()
        self.metrics.job("cancelled")
        log.info("job_cancelled", reason=job.error)

    def _crashed(self, job: Job, exc: Exception) -> None:
        try:
            self._fail_job(job, f"an internal error stopped this job ({type(exc).__name__}: {exc})")
        except StateDiskFull as full:
            self._wait_for_space(full)
        except Exception:  # the store or disk itself is failing: the job is retried after a restart
            log.exception("job_fail_unrecorded", job=job.id)
            self.stop.wait(5.0)

    def _fail_job(self, job: Job, reason: str) -> None:
        self.store.fail_job(job.id, reason)  # its videos still to render say why too; manifest filed
        self.metrics.job("failed")
        log.warning("job_failed", reason=reason)

    # -- one video -----------------------------------------------------------------------------------

    def render_video(self, job: Job, video: Video, audio: JobAudio, pool: ModelPool) -> None:
        model_name = job.model or self.default_model
        with structlog.contextvars.bound_contextvars(video=video.output, model=model_name):
            current = self.store.video(job.id, video.output)
            if current is None or current.state not in _PENDING:
                return  # cancelled since the job started
            try:
                self.store.claim_video(job.id, video.output)
            except InvalidTransition:
                return  # cancelled this very moment
            self.progress = Progress(job.id, video.output, 0.0)
            try:
                result = self._render_again_if_removed(job, video, audio, model_name, pool)
            except StateDiskFull:
                raise
            except Interrupted:
                if not self.stop.is_set():  # not the daemon stopping: the job was cancelled
                    self.reconciler.reconcile()  # its view shows the cancel `lipsyncd cancel` recorded
                    log.info("render_cancelled")
                    return
                self.store.requeue_video(job.id, video.output)
                log.info("render_interrupted")
                raise
            except (MediaError, LookupError) as exc:
                self._fail_video(job, video, as_written(str(exc), video.source, video.source_written))
                return
            except UnsafeOutput as exc:
                self._fail_video(job, video, str(exc.strerror))
                return
            except OSError as exc:
                self._fail_video(job, video, _disk_problem(exc, self._disks()))
                return
            except Exception as exc:
                log.exception("render_crashed")
                self._fail_video(
                    job, video, f"an internal error stopped this render ({type(exc).__name__}: {exc})"
                )
                return
            out = result.output
            problem, warning = face_check(result.frames, result.faceless_frames, video, self.settings)
            if problem:
                out.unlink(missing_ok=True)  # nothing to use: no file is left to be uploaded or shown
                self._fail_video(job, video, problem)
                return
            size, sha256 = out.stat().st_size, file_sha256(out)
            self._poster(out)
            try:
                rendered = Rendered(
                    frames=result.frames,
                    faceless_frames=result.faceless_frames,
                    size=size,
                    sha256=sha256,
                    model=model_name,
                    duration=result.frames / result.fps if result.fps else None,
                    warning=warning,
                )
                # the render is done: wait for room on the state disk rather than lose it
                self._record(lambda: self.store.video_rendered(job.id, video.output, rendered))
            except InvalidTransition:  # cancelled as it finished: the file is not kept nor shared
                out.unlink(missing_ok=True)
                poster_path(out.parent, out.name).unlink(missing_ok=True)
                log.info("render_cancelled")
                return
            self.metrics.frames(result.frames)
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

    def _render(
        self, job: Job, video: Video, audio: JobAudio, model_name: str, pool: ModelPool
    ) -> RenderResult:
        model = pool.get(model_name)
        self._still_inside(video.source_written, Path(video.source))
        out_path = job_dir(self.paths.outputs_dir, job.id) / video.output
        last = [0.0]
        unrecorded = [False]

        def on_progress(fraction: float) -> None:
            self.progress.fraction = fraction
            self.beat()
            if fraction - last[0] >= 0.02:
                last[0] = fraction
                try:
                    self.store.set_progress(job.id, video.output, fraction)
                except StateDiskFull as exc:  # progress is only shown: render on, say so once
                    if not unrecorded[0]:
                        log.warning("progress_not_recorded", reason=str(exc))
                    unrecorded[0] = True

        return VideoRender(
            source=Path(video.source),
            audio=audio,
            out_path=out_path,
            model=model,
            detector=self.detector(pool),
            settings=self.settings,
            scratch_dir=self.paths.scratch_dir,
            stop=_Halt(self.stop, lambda: self._cancelled(job.id, video.output)),
            on_progress=on_progress,
            beat=self.beat,
            cache=self.avatar_cache,
        ).run()

    def _render_again_if_removed(
        self, job: Job, video: Video, audio: JobAudio, model_name: str, pool: ModelPool
    ) -> RenderResult:
        """Someone deleted the job's output folder mid-render (`rm -rf outputs/latest_batch/JOB`): the media
        are fine, so the video renders again into a re-made folder, a few times at most."""
        folder = self.paths.outputs_dir / job.id
        for attempt in range(1, _REMOVED_RETRIES + 2):
            try:
                return self._render(job, video, audio, model_name, pool)
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
                self.store.set_progress(job.id, video.output, 0.0)
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
        """A store write that must not be lost: while the state disk is full, wait for room and write
        again. On a stop it is left unwritten (Interrupted): the video renders again after the restart."""
        while True:
            try:
                write()
            except StateDiskFull as exc:
                if self.stop.is_set():
                    raise Interrupted from exc
                self._wait_for_space(exc)
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

    def _fail_video(self, job: Job, video: Video, reason: str) -> None:
        self._record(lambda: self.store.fail_video(job.id, video.output, reason))
        self.metrics.failure("render")
        log.warning("video_failed", reason=reason)


class _Halt(threading.Event):
    """What a render stops on: the daemon stopping, or its video cancelled with `lipsyncd cancel` (another
    process: the store is asked at most every _CANCEL_POLL seconds). The pipeline only calls is_set()."""

    def __init__(self, stop: threading.Event, cancelled: Callable[[], bool]) -> None:
        super().__init__()
        self._stop, self._ask = stop, cancelled
        self._cancelled, self._next = False, 0.0

    def is_set(self) -> bool:
        if self._stop.is_set() or self._cancelled:
            return True
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + _CANCEL_POLL
            self._cancelled = self._ask()
        return self._cancelled


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


def _remove_partials(folder: Path) -> None:
    """Hidden temp files (`.NAME.part.mp4`, `.NAME.poster.jpg.*.tmp`) a killed process left behind."""
    if folder.is_dir():
        for path in folder.iterdir():
            poster_temp = ".poster.jpg." in path.name and path.name.endswith(".tmp")
            if path.name.startswith(".") and (path.name.endswith(".part.mp4") or poster_temp):
                path.unlink(missing_ok=True)


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
