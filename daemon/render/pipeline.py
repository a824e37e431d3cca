"""Render one avatar video against a job's audio, streaming, in three overlapped stages:

    decode + face track (thread) -> batched inference (thread) -> blend + encode (caller's thread)

Queues between the stages are bounded, so memory stays the same whatever the video's length: about
`batch * (queue_batches + 3)` frames are alive at once (the batch being gathered, the one in the model,
the ones queued for the encoder, the one being encoded), plus the tracker's few frames of look-ahead.
`batch` is `batch_size`, made smaller for big frames so that those frames fit in `frames_budget_mb`.

Any stage failing stops the others and the error surfaces in the caller; a stop request abandons the
output (the encoder removes its temp file) and raises `Interrupted`.

A frame shown again (a short avatar ping-ponging under long audio) reuses the model's avatar inputs
computed the first time, when the model family says they are worth keeping (MuseTalk's VAE latents),
up to `INPUT_MEMO_MB`; none are kept when every frame is shown once and no avatar cache will keep them.

Frames flow as yuv420p planes (`yuv.YuvFrame`), never converted whole: the tracker looks at luma, the
model gets a BGR copy of the face region only, and its face is blended into the planes the encoder takes.

With an `AvatarCache`, the decode stage replays the detections of an earlier render of the same video
instead of running the detector, and stores new ones when it is done.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import structlog
from av.codec.hwaccel import HWAccel

from daemon.render import audio as audio_features
from daemon.render.avatar_cache import AvatarCache, AvatarInputs, InputKey
from daemon.render.faces import FaceTracker, TrackStats
from daemon.render.family import AudioFeatures, LipSyncFamily
from daemon.render.media import VideoEncoder, iter_yuv_frames, load_audio, probe_video, video_decoder
from daemon.render.timeline import TimelineFrame, timeline
from daemon.render.types import Box, FaceDetector, VideoInfo
from daemon.render.yuv import YuvDetector, YuvFrame, even_region, paste_yuv

log = structlog.get_logger(__name__)

INPUT_MEMO_MB = 128  # avatar inputs kept per render for frames shown again (MuseTalk: 32 KB a frame)


class Interrupted(BaseException):
    """A stop was requested mid-render. BaseException, so `except Exception` cannot swallow it."""


@dataclass(frozen=True)
class RenderSettings:
    batch_size: int = 16
    detect_every: int = 5
    audio_longer: str = "pingpong"
    video_longer: str = "cut"
    encoder: str = "libx264"
    decoder: str = "cpu"  # render.decoder: "auto" and "nvdec" decode on the GPU where NVDEC opens (media.py)
    crf: int = 20
    preset: str = "veryfast"
    # batches waiting between two stages: the memory bound. 1 is enough on CPU and GPU alike (the model
    # is the slow stage, so the encoder's queue stays short); each extra one costs batch_size frames
    # (16 x 3 MB at 1080p).
    queue_batches: int = 1
    # Frames in flight may take at most this much memory: at 1080p (3.1 MB a frame of yuv420p planes) the
    # batch stays 16; at 4K (12.4 MB) it drops to 5.
    # On a CPU the batch size barely matters for speed (Wav2Lip fp32: 21 frames/s at 1, 22 at 16).
    frames_budget_mb: int = 256
    # a video with no face in any frame: "fail" it, or "pass_through" (unchanged, with a warning); over
    # this share of faceless frames a video is ready but carries a warning (render.faceless_* keys)
    faceless_videos: str = "fail"
    faceless_warning_share: float = 0.5

    def batch_for(self, width: int, height: int) -> int:
        """`batch_size`, or fewer when that many frames of this size would not fit the budget."""
        frame_bytes = (width + (width & 1)) * (height + (height & 1)) * 3 // 2  # yuv420p, padded to even
        fits = self.frames_budget_mb * 2**20 // (frame_bytes * (self.queue_batches + 3))
        return max(1, min(self.batch_size, fits))


@dataclass
class JobAudio:
    """Loaded once per job and shared by all its videos; the model's features are computed on first use
    (the job's model is only known to be loadable then) and kept for the job's other videos."""

    path: Path
    samples: int
    scratch_dir: Path | None = None  # where features too big for memory go (a disk, not a tmpfs)
    _wav: np.ndarray | None = field(default=None, repr=False)  # dropped once features are computed
    _features: dict[str, AudioFeatures] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def seconds(self) -> float:
        return self.samples / audio_features.SAMPLE_RATE

    def features(self, model: LipSyncFamily) -> AudioFeatures:
        """The model family's features of this audio, computed once (videos on other GPUs wait for it)."""
        with self._lock:
            if model.audio_key not in self._features:
                wav = self._wav if self._wav is not None else load_audio(self.path)
                started = time.perf_counter()
                self._features[model.audio_key] = model.job_audio(wav, self.scratch_dir)
                self._wav = None  # a job has one model: the samples are not needed again
                log.info(
                    "job_audio", features=model.audio_key, seconds=round(time.perf_counter() - started, 2)
                )
            return self._features[model.audio_key]


@dataclass(frozen=True)
class StageTimes:
    """Seconds each stage worked (its wall time minus time blocked on its queues), for profiling."""

    decode: float  # decoding, tracking (detection included) and timeline
    detect: float  # of which: face detection
    infer: float  # crops, model, output conversion
    model: float  # of which: the model itself
    encode: float  # blending, encoding, muxing


@dataclass(frozen=True)
class RenderResult:
    output: Path
    frames: int
    faceless_frames: int
    fps: float
    seconds: float  # wall time
    detector_calls: int = 0
    cached_detections: int = 0  # answers replayed from the avatar cache
    reused_inputs: int = 0  # frames whose avatar inputs were computed earlier in this render
    stages: StageTimes | None = None


@dataclass(frozen=True)
class _Batch:
    items: list[TimelineFrame]
    faces: list[np.ndarray | None]  # model output per item, None where the frame has no face


_DONE = object()


def shows_frames_again(info: VideoInfo, total: int) -> bool:
    """Whether a render of `total` frames may show some of the video's frames more than once (a still, or
    a video not at least a second longer than the audio: container durations are estimates): only then
    are frames spilled for replay and avatar inputs worth keeping within the render."""
    return info.is_still or info.duration * info.fps < total + info.fps


def prepare_audio(path: Path, scratch_dir: Path | None = None) -> JobAudio:
    wav = load_audio(path)
    return JobAudio(path=path, samples=len(wav), scratch_dir=scratch_dir, _wav=wav)


@dataclass
class VideoRender:
    """One render; `run()` returns the result or raises (MediaError, Interrupted, ...)."""

    source: Path
    audio: JobAudio
    out_path: Path
    model: LipSyncFamily
    detector: FaceDetector
    settings: RenderSettings
    scratch_dir: Path
    stop: threading.Event
    on_progress: Callable[[float], None] = lambda fraction: None
    beat: Callable[[], None] = lambda: None
    cache: AvatarCache | None = None
    _clocks: dict[str, _Clock] = field(default_factory=dict, init=False, repr=False)
    _track: TrackStats = field(default_factory=TrackStats, init=False, repr=False)
    _batch: int = field(default=1, init=False, repr=False)
    _features: AudioFeatures | None = field(default=None, init=False, repr=False)
    _inputs: AvatarInputs = field(
        default_factory=lambda: AvatarInputs(INPUT_MEMO_MB << 20), init=False, repr=False
    )

    def run(self) -> RenderResult:
        started = time.monotonic()
        info = probe_video(self.source)
        total = audio_features.frame_count(self.audio.samples, info.fps)
        self._features = self.audio.features(self.model)
        if self.cache and self.model.reuse_inputs:
            self._inputs = self.cache.inputs(self.source, self.model.inputs_key, INPUT_MEMO_MB << 20)
        elif not shows_frames_again(info, total):
            self._inputs = AvatarInputs(0)  # every frame is shown once and nothing keeps them: no memo
        self._batch = min(self.settings.batch_for(info.width, info.height), self.model.max_batch or 1 << 30)
        frames_q: queue.Queue[Any] = queue.Queue(maxsize=self._batch * self.settings.queue_batches)
        batches_q: queue.Queue[Any] = queue.Queue(maxsize=self.settings.queue_batches)
        failed = threading.Event()
        halted = lambda: self.stop.is_set() or failed.is_set()  # noqa: E731
        self._clocks = {name: _Clock() for name in ("decode", "infer", "encode", "model")}
        workers = [
            _Worker("decode", lambda: self._decode(info, total, frames_q, halted), frames_q, failed),
            _Worker("infer", lambda: self._infer(info.fps, frames_q, batches_q, halted), batches_q, failed),
        ]
        for worker in workers:
            worker.start()
        try:
            written, faceless = self._encode(info, total, batches_q)
        finally:
            failed.set()  # tell any worker still running to give up
            for worker in workers:
                worker.join()
            if self.cache:
                self.cache.save_inputs(self._inputs)  # what was encoded is right even if the render stopped
        return self._result(info, written, faceless, time.monotonic() - started)

    def _result(self, info: VideoInfo, written: int, faceless: int, seconds: float) -> RenderResult:
        busy = {name: clock.busy() for name, clock in self._clocks.items()}
        stages = StageTimes(
            busy["decode"],
            self._track.detector_seconds,
            busy["infer"],
            self._clocks["model"].worked,
            busy["encode"],
        )
        log.info(
            "render_stages",
            frames=written,
            batch=self._batch,
            seconds=round(seconds, 2),
            detector_calls=self._track.detector_calls,
            cached_detections=self._track.memo_hits,
            reused_inputs=self._inputs.hits,
            **{f"{name}_s": round(value, 2) for name, value in vars(stages).items()},
        )
        return RenderResult(
            self.out_path,
            written,
            faceless,
            info.fps,
            seconds,
            detector_calls=self._track.detector_calls,
            cached_detections=self._track.memo_hits,
            reused_inputs=self._inputs.hits,
            stages=stages,
        )

    # -- stage 1: decode and track faces ---------------------------------------------------------------

    def _hwaccel(self) -> HWAccel | None:
        """NVDEC on the model's GPU when render.decoder allows and it opens there (else the CPU decoder)."""
        return video_decoder(self.settings.decoder, getattr(self.model, "device_id", 0))

    def _decode(self, info: VideoInfo, total: int, out: queue.Queue[Any], halted: Callable[[], bool]) -> None:
        clock = self._clocks["decode"].start()
        # the tracker and cache are written for BGR frames but only pass frames on to the detector
        detector = cast(FaceDetector, YuvDetector(self.detector))
        memo = self.cache.track(self.source, detector, info) if self.cache else None
        tracker = FaceTracker(detector, detect_every=self.settings.detect_every, memo=memo)
        self._track = tracker.stats
        spill_dir = self.scratch_dir if shows_frames_again(info, total) else None
        keep = self.settings.video_longer == "keep"
        try:
            for item in timeline(
                tracker.track(
                    cast(Iterator[np.ndarray], iter_yuv_frames(self.source, info, self._hwaccel()))
                ),
                total,
                policy=self.settings.audio_longer,
                spill_dir=spill_dir,
                keep_longer_video=keep,
            ):
                _put(out, item, halted, clock)
            _put(out, _DONE, halted, clock)
        finally:
            if self.cache and memo:
                self.cache.save(memo)  # what was detected is right even if the render goes no further
            clock.stop()

    # -- stage 2: batched inference --------------------------------------------------------------------

    def _infer(
        self, fps: float, inp: queue.Queue[Any], out: queue.Queue[Any], halted: Callable[[], bool]
    ) -> None:
        clock = self._clocks["infer"].start()
        for items in _batches(inp, self._batch, halted, clock):
            _put(out, _Batch(items, self._faces_for(items, fps)), halted, clock)
            self.beat()
        _put(out, _DONE, halted, clock)
        clock.stop()

    def _faces_for(self, items: list[TimelineFrame], fps: float) -> list[np.ndarray | None]:
        with_face = [item for item in items if item.crop.box is not None]
        if not with_face:
            return [None] * len(items)
        assert self._features is not None
        audio = np.stack([self._features.window(item.index, fps) for item in with_face])
        with self._clocks["model"].timing():
            images = iter(self.model.generate(self._avatar_inputs(with_face), audio))
        return [next(images) if item.crop.box is not None else None for item in items]

    def _avatar_inputs(self, items: list[TimelineFrame]) -> np.ndarray:
        """The model's avatar inputs for these frames: kept ones reused, the others computed in one batch."""
        keys = [(item.source_index, item.crop.box) for item in items if item.crop.box is not None]
        fresh = {key: item for key, item in zip(keys, items, strict=True) if key not in self._inputs}
        self._inputs.hits += len(keys) - len(fresh)  # kept earlier, or shown twice in this batch
        computed: dict[InputKey, np.ndarray] = {}
        if fresh:
            crops = [self._prepare(_planes(item), box) for (_, box), item in fresh.items()]
            computed = dict(zip(fresh, self.model.avatar_inputs(crops), strict=True))
            if self.model.reuse_inputs:
                self._inputs.keep(computed)
        return np.stack([computed[key] if key in computed else self._inputs.take(key) for key in keys])

    def _prepare(self, frame: YuvFrame, box: Box) -> np.ndarray:
        """The model's crop, from a BGR copy of the face region only (even corners: whole chroma samples)."""
        region = even_region(self.model.face_box(box, frame.shape), frame)
        return self.model.prepare(frame.to_bgr(region), _moved(box, -region.x1, -region.y1))

    # -- stage 3: blend and encode ---------------------------------------------------------------------

    def _encode(self, info: VideoInfo, total: int, inp: queue.Queue[Any]) -> tuple[int, int]:
        clock = self._clocks["encode"].start()
        try:
            return self._encode_all(info, total, inp, clock)
        finally:
            clock.stop()

    def _encode_all(
        self, info: VideoInfo, total: int, inp: queue.Queue[Any], clock: _Clock
    ) -> tuple[int, int]:
        written = faceless = 0
        last_report = 0.0
        s = self.settings
        with VideoEncoder(
            self.out_path,
            info.width,
            info.height,
            info.fps,
            self.audio.path,
            codec=s.encoder,
            crf=s.crf,
            preset=s.preset,
        ) as encoder:
            for batch in _drain(inp, self.stop, clock):
                for item, face in zip(batch.items, batch.faces, strict=True):
                    box = item.crop.box
                    frame = _planes(item)
                    if face is not None and box is not None:
                        face_box = self.model.face_box(box, frame.shape)
                        paste_yuv(frame, face_box, face, self.model.face_mask(face_box))
                    encoder.write_yuv(frame)
                    faceless += box is None
                written += len(batch.items)
                if time.monotonic() - last_report >= 1.0:
                    last_report = time.monotonic()
                    self.on_progress(min(written / max(total, 1), 0.99))
        return written, faceless


def _planes(item: TimelineFrame) -> YuvFrame:
    assert isinstance(item.frame, YuvFrame)  # the decode stage streams planes
    return item.frame


def _moved(box: Box, dx: int, dy: int) -> Box:
    """`box` (landmarks too) shifted by (dx, dy): into a region's own coordinates."""
    points = box.landmarks
    if points is not None:
        points = tuple(p + (dx if i % 2 == 0 else dy) for i, p in enumerate(points))
    return Box(box.x1 + dx, box.y1 + dy, box.x2 + dx, box.y2 + dy, points)


class _Clock:
    """A stage's wall time and the part of it spent blocked on queues; busy = the difference."""

    def __init__(self) -> None:
        self.started = self.stopped = 0.0
        self.waited = self.worked = 0.0

    def start(self) -> _Clock:
        self.started = time.perf_counter()
        return self

    def stop(self) -> None:
        self.stopped = time.perf_counter()

    def busy(self) -> float:
        end = self.stopped or time.perf_counter()
        return max(0.0, end - self.started - self.waited) if self.started else 0.0

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Adds the block's duration to `worked` (for a part of a stage, e.g. the model)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.worked += time.perf_counter() - started


class _Worker(threading.Thread):
    """Runs one stage; on failure records the error for the consumer and raises the shared flag."""

    def __init__(
        self, name: str, target: Callable[[], None], out: queue.Queue[Any], failed: threading.Event
    ) -> None:
        super().__init__(name=f"render-{name}", daemon=True)
        self._target_fn = target
        self._out = out
        self._failed = failed

    def run(self) -> None:
        try:
            self._target_fn()
        except _Abandoned:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._failed.set()
            _put_force(self._out, _Failure(exc))


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class _Abandoned(Exception):
    """A stage gave up because another stage failed or a stop was requested."""


def _put(q: queue.Queue[Any], item: Any, halted: Callable[[], bool], clock: _Clock | None = None) -> None:
    started = time.perf_counter()
    try:
        while True:
            if halted():
                raise _Abandoned
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
    finally:
        if clock is not None:
            clock.waited += time.perf_counter() - started


def _put_force(q: queue.Queue[Any], item: Any) -> None:
    """Make room for a failure report: the consumer must see it even if the queue is full."""
    while True:
        try:
            q.put_nowait(item)
            return
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                q.get_nowait()


def _get(q: queue.Queue[Any], halted: Callable[[], bool], on_halt: type[BaseException], clock: _Clock) -> Any:
    started = time.perf_counter()
    try:
        while True:
            try:
                item = q.get(timeout=0.2)
            except queue.Empty:
                if halted():
                    raise on_halt from None
                continue
            if isinstance(item, _Failure):
                raise item.error
            return item
    finally:
        clock.waited += time.perf_counter() - started


def _batches(
    q: queue.Queue[Any], size: int, halted: Callable[[], bool], clock: _Clock
) -> Iterator[list[TimelineFrame]]:
    batch: list[TimelineFrame] = []
    while (item := _get(q, halted, _Abandoned, clock)) is not _DONE:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _drain(q: queue.Queue[Any], stop: threading.Event, clock: _Clock) -> Iterator[_Batch]:
    while (item := _get(q, stop.is_set, Interrupted, clock)) is not _DONE:
        yield item
