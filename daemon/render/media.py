"""Media IO with PyAV: probe and stream video frames, load audio as 16 kHz mono, encode H.264 + AAC MP4.

Conventions:
- Frames are upright (the display matrix is applied), at a constant frame rate: yuv420p planes
  (`iter_yuv_frames`, `VideoEncoder.write_yuv`: the render pipeline), or BGR uint8 (H, W, 3)
  (`iter_frames`, `VideoEncoder.write`: tools and tests).
- `VideoInfo.rotation` is clockwise degrees, the phone "rotate" tag convention: the decoder turns the
  stored picture clockwise by that much to show it upright.
- Errors meant for users are `MediaError`s that name the file and say what to do.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
import structlog
from av.codec.hwaccel import HWAccel, hwdevices_available
from av.video.reformatter import Interpolation

from daemon.render.audio import SAMPLE_RATE
from daemon.render.types import VideoInfo
from daemon.render.yuv import YuvFrame, even

log = structlog.get_logger(__name__)

FALLBACK_FPS = 25.0
MAX_SIDE = 8192  # pixels on the longer side of a picture we take (8K)
_MAX_PADDING_S = 0.3  # the most codec padding at the end of a sound: 2 AAC frames at 8 kHz, plus slack
_STILL_FORMATS = ("image2", "_pipe")  # FFmpeg's demuxers for single images (png_pipe, jpeg_pipe, ...)
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
_EPS = 1e-6  # seconds*fps slack so exact boundaries are not lost to float rounding
# swscale's default rounding darkens BGR<->YUV round trips by 2-3 levels; accurate costs ~3 ms per 1080p frame
_SWS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND


class MediaError(Exception):
    """A media file we cannot use; the message is for the user and names the file."""


class OutputRemoved(OSError):
    """The half-written output vanished while it was being encoded: someone deleted the job's output
    folder (or the temp file in it). Nothing is wrong with the media; the render can simply run again."""


# ---------------------------------------------------------------- opening


@contextlib.contextmanager
def _opened(path: Path, what: str, hwaccel: HWAccel | None = None) -> Iterator[av.container.InputContainer]:
    """Open `path` for reading; FFmpeg errors inside the block become plain-words MediaErrors.
    With `hwaccel` (see `video_decoder`) video is decoded on the GPU and the frames come back to memory."""
    _check_file(path, what)
    try:
        # tags are only shown, never used: a camera that wrote them in Latin-1 must not make the file unusable
        with av.open(os.fspath(path), "r", metadata_errors="replace", hwaccel=hwaccel) as container:
            yield container
    except av.FFmpegError as exc:
        raise _unreadable(path, what, exc) from exc


_EXPORT_AS = {"a video": "an MP4 (H.264) video or a PNG/JPEG image", "a sound file": "WAV, MP3 or M4A sound"}


def _unreadable(path: Path, what: str, exc: av.FFmpegError) -> MediaError:
    """Plain words for a file FFmpeg refused; its own text only where it says more than 'invalid data'."""
    if _mp4_index_missing(path):
        return MediaError(
            f"{path} is not {what} we can read: it was cut short (its index, which MP4 writers add last, "
            f"is missing). Export or copy it again."
        )
    detail = "" if isinstance(exc, av.InvalidDataError) else f" ({exc.strerror or exc})"
    return MediaError(
        f"{path} is not {what} we can read{detail}: it may be damaged, cut short or in a format we do not "
        f"know. Export it again as {_EXPORT_AS.get(what, 'a common format')} and retry."
    )


def _mp4_index_missing(path: Path) -> bool:
    """An MP4/MOV (it starts with an 'ftyp' box) whose top-level boxes run out before the 'moov' index:
    what a copy or recording that stopped midway leaves when the index was to be written last."""
    try:
        kinds = list(_top_level_boxes(path))
    except OSError:  # the caller's message still stands: the file cannot be read
        return False
    return bool(kinds) and kinds[0] == b"ftyp" and b"moov" not in kinds


def _top_level_boxes(path: Path, limit: int = 64) -> Iterator[bytes]:
    """The types of an ISO media file's top-level boxes, read from their 8/16-byte headers."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        pos = 0
        for _ in range(limit):
            handle.seek(pos)
            header = handle.read(16)
            if len(header) < 8:
                return
            length = int.from_bytes(header[:4], "big")
            length = int.from_bytes(header[8:16], "big") if length == 1 else length or size - pos
            yield header[4:8]
            if length < 8:
                return
            pos += length


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise MediaError(f"{path} does not exist (or is not a file): check the path in the manifest.")
    if path.stat().st_size == 0:
        raise MediaError(
            f"{path} is empty (0 bytes), so it cannot be {what}: the copy or upload may not have "
            f"finished. Copy the file again."
        )


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kind = "an audio file" if container.streams.audio else "no picture at all"
        raise MediaError(
            f"{path} has no video track (it looks like {kind}): an avatar must be a video or an image. "
            f"Give a video (MP4, MOV) or a photo (PNG, JPEG) of the presenter instead."
        )
    return container.streams.video[0]


def _audio_stream(container: av.container.InputContainer, path: Path) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise MediaError(
            f"{path} has no audio track, so there is no voice to lip-sync to: give a file with sound "
            f"(WAV, MP3, M4A, OGG, FLAC, or a video with an audio track)."
        )
    return container.streams.audio[0]


# ---------------------------------------------------------------- probing


def probe_video(path: Path) -> VideoInfo:
    """Size (after rotation), frame rate, duration and rotation of a video or still image."""
    with _opened(path, "a video") as container:
        stream = _video_stream(container, path)
        _check_complete(container, stream, path)
        if stream.codec_context is not None:  # None: a codec FFmpeg does not know (damaged header, say)
            _check_size(stream.codec_context.width, stream.codec_context.height, path)  # 0 x 0 for images
        first = _first_frame(container, stream, path)
        _check_size(first.width, first.height, path)
        rotation = _rotation(first)
        turned = rotation % 180 == 90
        still = container.format.name.endswith(_STILL_FORMATS)
        info = VideoInfo(
            width=first.height if turned else first.width,
            height=first.width if turned else first.height,
            fps=FALLBACK_FPS if still else _fps(stream),
            duration=0.0 if still else _duration(container, stream),
            rotation=rotation,
            is_still=still,
        )
    log.info(
        "video_probed",
        path=str(path),
        width=info.width,
        height=info.height,
        fps=round(info.fps, 3),
        duration=round(info.duration, 3),
        rotation=rotation,
        still=still,
    )
    return info


def _check_size(width: int, height: int, path: Path) -> None:
    """Bigger than 8K costs minutes and gigabytes per frame and is past what H.264 players take."""
    if max(width, height) > MAX_SIDE:
        raise MediaError(
            f"{path} is {width}x{height} pixels; the largest picture we take is {MAX_SIDE} pixels on a side "
            f"(8K). Scale it down and retry."
        )


def _cut_short(path: Path, detail: str) -> MediaError:
    return MediaError(f"{path} is cut short or damaged ({detail}): export or copy it again.")


def _check_complete(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> None:
    """MP4/MOV index every frame's position: a file that ends before its last frame was cut short."""
    if "mp4" not in container.format.name or not len(stream.index_entries):
        return
    needed = max(entry.pos + entry.size for entry in stream.index_entries[-16:])  # the tail suffices
    size = path.stat().st_size
    if needed > size:
        raise _cut_short(path, f"it is {size} bytes but its frames need {needed}")


def _decoded(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> Iterator[av.VideoFrame]:
    """Decoded frames; a packet the demuxer could only read in part means the file was cut."""
    for packet in container.demux(stream):
        if packet.is_corrupt:
            raise _cut_short(path, f"a frame at byte {packet.pos} is incomplete")
        yield from packet.decode()


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> av.VideoFrame:
    for frame in _decoded(container, stream, path):
        return frame
    raise _cut_short(path, "it has a video track but not one picture could be decoded from it")


def _rotation(frame: av.VideoFrame) -> int:
    """Clockwise degrees to turn the stored picture (PyAV reports the counter-clockwise angle)."""
    return (-round(frame.rotation / 90) * 90) % 360


def _fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and 1 <= rate <= 240:
            return float(rate)
    return FALLBACK_FPS


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


# ---------------------------------------------------------------- decoding

DECODERS = ("auto", "cpu", "nvdec")


def video_decoder(setting: str, device: int = 0) -> HWAccel | None:
    """render.decoder: NVDEC (FFmpeg's CUDA hwaccel through PyAV) for "nvdec" and "auto" where it opens
    on this machine, else None (the CPU decoder), logged once per process with the reason. A stream NVDEC
    cannot take (a profile it lacks) falls back to the CPU decoder inside FFmpeg."""
    if setting not in DECODERS:
        raise ValueError(f"unknown render.decoder {setting!r}; choose one of {', '.join(DECODERS)}")
    if setting == "cpu":
        return None
    reason = nvdec_unusable(device)
    if reason is None:
        return HWAccel("cuda", device=str(device), allow_software_fallback=True)
    _log_cpu_decoder(setting, reason)
    return None


@functools.cache
def _log_cpu_decoder(setting: str, reason: str) -> None:
    (log.warning if setting == "nvdec" else log.info)("decoder_cpu", requested=setting, reason=reason)


@functools.cache
def nvdec_unusable(device: int = 0) -> str | None:
    """Why NVDEC cannot decode here (None: it can), found once per process by decoding a tiny H.264
    clip with the CUDA hwaccel: the build must have it and a CUDA device with its driver must open."""
    if "cuda" not in hwdevices_available():
        return "this PyAV's FFmpeg has no CUDA hwaccel (NVDEC); decoding on the CPU"
    try:
        with av.open(io.BytesIO(_tiny_h264()), "r", hwaccel=HWAccel("cuda", device=str(device))) as container:
            stream = container.streams.video[0]
            next(container.decode(stream))
            on_gpu = stream.codec_context.is_hwaccel
    except (av.FFmpegError, OSError, StopIteration) as exc:
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"no CUDA device for NVDEC on GPU {device} ({detail}); decoding on the CPU"
    return (
        None if on_gpu else f"FFmpeg's CUDA hwaccel did not take H.264 on GPU {device}; decoding on the CPU"
    )


def _tiny_h264() -> bytes:
    """Two 64x64 H.264 frames in an MP4, in memory: what the NVDEC probe decodes."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(2):
            out.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="bgr24"))
            )
        out.mux(stream.encode())
    return buffer.getvalue()


def iter_frames(path: Path, info: VideoInfo, hwaccel: HWAccel | None = None) -> Iterator[np.ndarray]:
    """Upright BGR uint8 frames at the constant rate `info.fps`, streamed (one source frame held).

    Frames are placed by presentation time: a variable frame rate source has frames repeated or dropped
    (each output instant shows the nearest source frame). A still image yields its one frame.
    """
    yield from _iter_converted(path, info, _to_bgr, hwaccel)


def iter_yuv_frames(path: Path, info: VideoInfo, hwaccel: HWAccel | None = None) -> Iterator[YuvFrame]:
    """`iter_frames` as yuv420p planes (limited range, the source's matrix): what the render pipeline
    works on, with no full-frame colour conversion for a yuv420p source."""
    yield from _iter_converted(path, info, _to_yuv, hwaccel)


def _iter_converted(
    path: Path, info: VideoInfo, convert: Callable[[av.VideoFrame, int], Any], hwaccel: HWAccel | None
) -> Iterator[Any]:
    with _opened(path, "a video", hwaccel) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        timed = _timed(_decoded(container, stream, path), info.fps)
        frames = ((item[2], 1) for item in timed) if info.is_still else _constant_rate(timed, info)
        for frame, count in frames:
            yield from _copies(convert(frame, info.rotation), count)


def _timed(frames: Iterable[av.VideoFrame], fps: float) -> Iterator[tuple[float, float, av.VideoFrame]]:
    """(start, length, frame) in seconds from the first frame; a missing pts follows the previous frame."""
    origin: float | None = None
    start = -1.0 / fps
    for frame in frames:
        start = start + 1.0 / fps if frame.time is None else float(frame.time)
        origin = start if origin is None else origin
        length = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 1.0 / fps
        yield start - origin, length, frame


def _constant_rate(
    timed: Iterable[tuple[float, float, av.VideoFrame]], info: VideoInfo
) -> Iterator[tuple[av.VideoFrame, int]]:
    """(frame, times to show it): output instant n/fps shows the source frame nearest to it.

    The last frame lasts until the container's duration (decoded frame durations are unreliable
    after B-frame reordering), or its own duration when the container does not say.
    """
    fps = info.fps
    shown = 0
    held: tuple[float, float, av.VideoFrame] | None = None
    for item in timed:
        if held is not None:
            count = _instants_before((held[0] + item[0]) / 2, fps) - shown
            if count > 0:
                yield held[2], count
                shown += count
        held = item
    if held is not None:  # a one-frame video shows once
        end = info.duration if info.duration > held[0] else held[0] + held[1]
        yield held[2], max(_instants_before(end, fps) - shown, 0 if shown else 1)


def _instants_before(t: float, fps: float) -> int:
    """How many output instants n/fps (n >= 0) lie strictly before t."""
    return max(0, math.ceil(t * fps - _EPS))


def _copies(frame: Any, count: int) -> Iterator[Any]:
    """The frame, then copies: a consumer may draw on what it gets."""
    for i in range(count):
        yield frame if i == 0 else frame.copy()


def _to_bgr(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    """BGR uint8, any bit depth; the source's own matrix and range are honoured."""
    bgr = frame.to_ndarray(format="bgr24", src_color_range=frame.color_range or None, interpolation=_SWS)
    if rotation:
        bgr = np.rot90(bgr, -(rotation // 90))  # negative k: clockwise
    return np.ascontiguousarray(bgr)


_BT709 = 1  # AVCOL_SPC_BT709
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


def _to_yuv(frame: av.VideoFrame, rotation: int) -> YuvFrame:
    """Limited-range yuv420p planes, upright. A yuv420p limited-range source is copied as it is (one
    copy of 1.5 bytes a pixel); others (full-range yuvj420p, 4:2:2, 10-bit, RGB stills) are reformatted
    by swscale first. The matrix is kept (the encoder tags the output with it), so colours look as
    they did when the whole frame went through BGR with the source's matrix."""
    matrix = "bt709" if frame.colorspace == _BT709 else "bt601"
    if frame.format.name != "yuv420p" or frame.color_range == _FULL_RANGE:
        frame = frame.reformat(
            format="yuv420p",
            src_color_range=frame.color_range or None,
            dst_color_range=1,  # MPEG ("TV") range
            interpolation=_SWS,
        )
    if rotation and (frame.width & 1 or frame.height & 1):
        # planes padded to even would put the padding on the wrong side once turned: rare (phones record
        # even sizes), so such a source takes the old path through BGR
        return _yuv_from_bgr(_to_bgr(frame, rotation))
    out = _planes(frame, frame.width, frame.height, matrix)
    if rotation:  # turning the planes is a full-frame copy: only rotated sources pay it
        turned = YuvFrame.blank(frame.height, frame.width, matrix)
        k = -(rotation // 90)  # negative k: clockwise
        for src, dst in zip((out.y, out.u, out.v), (turned.y, turned.u, turned.v), strict=True):
            dst[:] = np.rot90(src, k)
        return turned
    return out


def _planes(frame: av.VideoFrame, width: int, height: int, matrix: str) -> YuvFrame:
    """A yuv420p frame's planes copied into one buffer; luma padded to even by repeating its edge."""
    out = YuvFrame.blank(width, height, matrix)
    for plane, dst in zip(frame.planes, (out.y, out.u, out.v), strict=True):
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        dst[: plane.height, : plane.width] = rows[: plane.height, : plane.width]
    out.pad_luma()
    return out


def _yuv_from_bgr(bgr: np.ndarray) -> YuvFrame:
    """Today's BGR frame as planes, converted as `VideoEncoder.write` converts it (padded to even)."""
    height, width = bgr.shape[:2]
    padded = np.pad(bgr, ((0, height & 1), (0, width & 1), (0, 0)), mode="edge")
    converted = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="bgr24").reformat(
        format="yuv420p", interpolation=_SWS
    )
    return _planes(converted, width, height, "bt601")


# ---------------------------------------------------------------- audio


def load_audio(path: Path) -> np.ndarray:
    """The first audio track of any audio or video file as float32 mono at 16 kHz (silence is fine)."""
    with _opened(path, "a sound file") as container:
        stream = _audio_stream(container, path)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = [f.to_ndarray().reshape(-1) for f in _resampled(container.decode(stream), resampler)]
        declared = _declared_samples(container, stream)
    if not chunks:
        raise MediaError(
            f"{path} has an audio track but no sound could be decoded from it: the file is probably cut "
            f"short or damaged. Export or copy it again."
        )
    wav = _without_padding(np.concatenate(chunks).astype(np.float32, copy=False), declared)
    log.info("audio_loaded", path=str(path), seconds=round(len(wav) / SAMPLE_RATE, 3))
    return wav


def _declared_samples(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> int | None:
    """How many 16 kHz samples an MP4/M4A says it plays (its edit list is exact); None for other formats."""
    if "mp4" not in container.format.name or not (stream.duration and stream.time_base):
        return None
    return round(float(stream.duration * stream.time_base) * SAMPLE_RATE)


def _without_padding(wav: np.ndarray, declared: int | None) -> np.ndarray:
    """Drop the codec's padding past the declared end: FFmpeg returns AAC's last frame whole, up to 1024
    samples too many (0.13 s at 8 kHz), which would make the video longer than the voice. A bigger
    difference is not padding (a wrong header, say): then the decoded sound is kept as it is."""
    if declared is None or not 0 < len(wav) - declared <= _MAX_PADDING_S * SAMPLE_RATE:
        return wav
    return wav[:declared]


def _resampled(frames: Iterable[av.AudioFrame], resampler: av.AudioResampler) -> Iterator[av.AudioFrame]:
    for frame in frames:
        yield from resampler.resample(frame)
    yield from resampler.resample(None)


# ---------------------------------------------------------------- encoding

# x264 preset names -> NVENC presets (p1 fastest .. p7 best)
_NVENC_PRESETS = dict(
    ultrafast="p1",
    superfast="p1",
    veryfast="p2",
    faster="p3",
    fast="p3",
    medium="p4",
    slow="p5",
    slower="p6",
    veryslow="p7",
)


def _codec_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    """Constant-quality options: x264's crf, or NVENC's cq in VBR mode with no bitrate cap.

    NVENC output is untested: the machines we had (no GPU; an H100, which has no NVENC unit) cannot
    run it. `cq` and `crf` are both 0-51 quality scales of roughly similar meaning; ask
    `encoder_available("h264_nvenc")` before choosing it.
    """
    if codec == "h264_nvenc":
        return {"preset": _NVENC_PRESETS.get(preset, "p4"), "rc": "vbr", "cq": str(crf), "b": "0"}
    return {"crf": str(crf), "preset": preset}


def encoder_available(codec: str) -> bool:
    """Whether `codec` can open here: h264_nvenc needs an NVIDIA GPU with NVENC and its driver library.

    Checked on an H100 (driver 580): h264_nvenc is built in but fails to open, because data-centre
    GPUs such as the H100 and H200 have no NVENC unit; use libx264 there.
    """
    try:
        context = av.CodecContext.create(codec, "w")
        if not isinstance(context, av.video.codeccontext.VideoCodecContext):
            return False
        context.width, context.height, context.pix_fmt = 256, 256, "yuv420p"
        context.time_base = Fraction(1, 25)
        context.open()
    except (av.FFmpegError, ValueError) as exc:
        log.info("encoder_unavailable", codec=codec, reason=getattr(exc, "strerror", None) or str(exc))
        return False
    return True


_NAME_MAX = 255  # bytes in one file name (ext4, XFS, Btrfs, SMB and NFS exports of them)


def _temp_path(out_path: Path) -> Path:
    """`.NAME.part.mp4` beside the output. A stem too long for that (the output's own name may use all
    255 bytes) is cut and marked with a hash of the whole name, so two long names never share one."""
    name = f".{out_path.stem}.part.mp4"
    if len(os.fsencode(name)) <= _NAME_MAX:
        return out_path.with_name(name)
    digest = hashlib.sha256(os.fsencode(out_path.name)).hexdigest()[:12]
    return out_path.with_name(f".{os.fsdecode(os.fsencode(out_path.stem)[:200])}~{digest}.part.mp4")


def _even(n: int) -> int:
    return n + (n & 1)


def _claim_temp(tmp: Path) -> int:
    """Create the temp file ourselves, never through a symlink someone left at its name (it could point
    outside the outputs); FFmpeg then writes into this very file. Returns its inode for a check at close."""
    tmp.unlink(missing_ok=True)  # a leftover file or a planted link: the link itself goes, not its target
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


class VideoEncoder:
    """Writes an MP4 (H.264 yuv420p + AAC, moov at the front) frame by frame.

    Odd widths/heights are padded to even by repeating the last column/row (yuv420p needs even sizes),
    so a 255x257 input gives a 256x258 file. The file appears at `out_path` only when `close()`
    succeeds; until then it is `.NAME.part.mp4` in the same folder (NAME shortened if it must be), removed
    on failure.
    Audio from `audio_path` keeps its rate (if AAC can store it) and up to two channels, and is cut or
    padded with silence to exactly frames / fps.
    """

    def __init__(
        self,
        out_path: Path,
        width: int,
        height: int,
        fps: float,
        audio_path: Path | None,
        *,
        codec: str = "libx264",
        crf: int = 20,
        preset: str = "veryfast",
        threads: int = 0,
    ) -> None:
        self.out_path = out_path
        self.width, self.height = width, height
        self.rate = Fraction(fps).limit_denominator(1001)
        self.frames = 0
        self._tmp = _temp_path(out_path)
        self._tmp_inode = _claim_temp(self._tmp)
        self._audio: _AudioTrack | None = None
        self._out = av.open(
            os.fspath(self._tmp), "w", format="mp4", container_options={"movflags": "+faststart"}
        )
        try:
            self._video = self._add_video(codec, _codec_options(codec, crf, preset), threads)
            self._audio = _AudioTrack(audio_path, self._out) if audio_path else None
        except BaseException:
            self._abort()
            raise

    def _add_video(self, codec: str, options: dict[str, str], threads: int) -> av.video.stream.VideoStream:
        if av.Codec(codec, "w").type != "video":
            raise ValueError(f"{codec} is not a video codec")
        stream = self._out.add_stream(codec, rate=self.rate, options=options)
        assert isinstance(stream, av.video.stream.VideoStream)  # for the type checker: checked above
        stream.width, stream.height = _even(self.width), _even(self.height)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = threads
        stream.codec_context.colorspace = 6  # SMPTE170M: the BT.601 matrix swscale converts BGR with
        stream.codec_context.color_range = 1  # limited ("TV") range, also swscale's default
        return stream

    def write(self, frame_bgr: np.ndarray) -> None:
        """Append one BGR uint8 frame of the size given at construction."""
        if frame_bgr.shape != (self.height, self.width, 3) or frame_bgr.dtype != np.uint8:
            want = (self.height, self.width, 3)
            raise ValueError(f"frame is {frame_bgr.shape} {frame_bgr.dtype}, expected {want} uint8")
        bgr = av.VideoFrame.from_ndarray(self._pad(frame_bgr), format="bgr24")
        self._encode(bgr.reformat(format="yuv420p", interpolation=_SWS))

    def write_yuv(self, frame: YuvFrame) -> None:
        """Append one frame of planes of the size given at construction: no colour conversion. The
        output is tagged with the frames' matrix (all frames of a video share their source's)."""
        if (frame.width, frame.height) != (self.width, self.height):
            raise ValueError(f"frame is {frame.width}x{frame.height}, expected {self.width}x{self.height}")
        if self.frames == 0 and frame.matrix == "bt709":
            self._video.codec_context.colorspace = 1  # BT.709: the planes keep the source's matrix
        planes = frame.buffer.reshape(even(self.height) * 3 // 2, even(self.width))
        self._encode(av.VideoFrame.from_ndarray(planes, format="yuv420p"))

    def _encode(self, frame: av.VideoFrame) -> None:
        frame.pts = self.frames
        self._out.mux(self._video.encode(frame))
        self.frames += 1
        if self._audio:
            self._audio.feed_until(self.frames / self.rate)

    def _pad(self, frame: np.ndarray) -> np.ndarray:
        pad_h, pad_w = self.height & 1, self.width & 1
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        return np.ascontiguousarray(frame)

    def close(self) -> Path:
        """Finish the file and move it into place; returns `out_path`."""
        try:
            if self.frames == 0:
                raise ValueError(f"no frames were written for {self.out_path}")
            self._out.mux(self._video.encode(None))
            if self._audio:
                self._audio.finish(self.frames / self.rate)
            self._out.close()
        except BaseException as exc:
            gone = not os.path.lexists(self._tmp)  # FFmpeg reopens the file to move the index to the front
            self._abort()
            if gone and isinstance(exc, Exception):
                raise self._removed() from exc
            raise
        if not os.path.lexists(self._tmp):
            raise self._removed()
        if self._tmp.lstat().st_ino != self._tmp_inode:  # replaced behind our back (a planted symlink)
            self._tmp.unlink(missing_ok=True)
            raise MediaError(f"{self._tmp} was replaced while it was being written; the output was dropped")
        os.replace(self._tmp, self.out_path)
        seconds = round(float(self.frames / self.rate), 3)
        size = self.out_path.stat().st_size
        log.info("video_encoded", path=str(self.out_path), frames=self.frames, seconds=seconds, bytes=size)
        return self.out_path

    def _removed(self) -> OutputRemoved:
        return OutputRemoved(
            errno.ENOENT, f"{self._tmp.name} was removed from {self._tmp.parent} while it was written"
        )

    def _abort(self) -> None:
        """Drop everything written so far: no half file is ever left behind."""
        if self._audio:
            self._audio.discard()
        with contextlib.suppress(Exception):
            self._out.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()


class _AudioTrack:
    """Decodes `source` and encodes it as AAC into `out`, kept level with the video written so far."""

    def __init__(self, source: Path, out: av.container.OutputContainer) -> None:
        self._source = source
        self._stack = contextlib.ExitStack()
        self._input = self._stack.enter_context(_opened(source, "a sound file"))
        try:
            self._setup(out, _audio_stream(self._input, source))
        except BaseException:
            self.discard()
            raise

    def _setup(self, out: av.container.OutputContainer, source: av.audio.stream.AudioStream) -> None:
        self.rate = source.rate if source.rate in _AAC_RATES else 48000
        self.layout = "mono" if source.channels == 1 else "stereo"
        self._out = out
        self._stream = out.add_stream("aac", rate=self.rate, layout=self.layout)
        resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self._decoded = _resampled(self._input.decode(source), resampler)
        self._pending = np.zeros((1 if self.layout == "mono" else 2, 0), np.float32)
        self._sent = 0

    def feed_until(self, seconds: Fraction | float) -> None:
        """Encode samples up to `seconds`, padding with silence once the source has run out."""
        target = round(seconds * self.rate)
        while self._sent < target:
            chunk = self._take(target - self._sent)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.layout)
            frame.rate, frame.pts, frame.time_base = self.rate, self._sent, Fraction(1, self.rate)
            self._out.mux(self._stream.encode(frame))
            self._sent += chunk.shape[1]

    def _take(self, wanted: int) -> np.ndarray:
        """Up to `wanted` samples (channels, n): pending ones, else the next decoded frame, else silence."""
        if self._pending.shape[1] == 0:
            self._pending = self._next_block(wanted)
        chunk, self._pending = self._pending[:, :wanted], self._pending[:, wanted:]
        return np.ascontiguousarray(chunk)

    def _next_block(self, wanted: int) -> np.ndarray:
        try:
            frame = next(self._decoded, None)
        except av.FFmpegError as exc:
            raise MediaError(
                f"{self._source} could not be decoded past {self._sent / self.rate:.2f} s "
                f"({exc.strerror or exc}): the file may be damaged. Export it again."
            ) from exc
        if frame is None:
            return np.zeros((self._pending.shape[0], min(wanted, 1024)), np.float32)
        return frame.to_ndarray().astype(np.float32, copy=False)

    def finish(self, seconds: Fraction | float) -> None:
        self.feed_until(seconds)
        self._out.mux(self._stream.encode(None))
        self._stack.close()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()
