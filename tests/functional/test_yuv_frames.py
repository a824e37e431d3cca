"""The pipeline on yuv420p planes: outside the face the output keeps the source's own levels, the face
region carries the model's output, and odd-sized, rotated and full-range sources keep their size,
orientation and levels.

"Today's output" below is the path the pipeline took before it worked on planes, rebuilt here with PyAV
calls: decode to BGR (`to_ndarray(format="bgr24")`, the source's range, swscale's accurate rounding),
turn it upright, pad to even, convert back to yuv420p as the encoder did. That round trip itself moves
luma by up to 2 levels (measured: 1.2 darker on average on the astronaut clip, more where BGR clips),
and blurs chroma edges (bilinear up-, then down-sampling: 1-3% of chroma samples more than 2 levels
off, up to 9-15 levels at sharp colour edges). So the new output is held to the source's planes exactly
(a lossless encode, crf 0), to today's luma within 2 levels wherever today's BGR did not clip, and to
today's chroma on average (under 0.75 levels, under 5% of samples more than 2 off).
"""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.reformatter import Interpolation

from daemon.render.baseline import write_baseline
from daemon.render.faces import FaceTracker, HaarDetector
from daemon.render.media import iter_yuv_frames, probe_video
from daemon.render.model import LipSyncModel
from daemon.render.pipeline import RenderSettings, VideoRender, prepare_audio
from daemon.render.types import Box
from daemon.render.yuv import YuvDetector
from daemon.samples import speech_like, write_audio, write_face_clip

SWS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND  # what media.py converted BGR with
SECONDS = 0.6
MARGIN = 4  # px around the face boxes: the even-corner region and chroma blocks reach past the box


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LipSyncModel:
    folder = tmp_path_factory.mktemp("models") / "baseline"
    write_baseline(folder)
    return LipSyncModel.open(folder, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_audio(tmp_path_factory.mktemp("audio") / "a.wav", speech_like(SECONDS))


def render(tmp_path: Path, model: LipSyncModel, video: Path, audio: Path) -> Path:
    out = tmp_path / "out.mp4"
    VideoRender(
        source=video,
        audio=prepare_audio(audio),
        out_path=out,
        model=model,
        detector=HaarDetector(),
        settings=RenderSettings(batch_size=4, crf=0),  # crf 0: x264 is lossless, the planes come back
        scratch_dir=tmp_path / "scratch",
        stop=threading.Event(),
    ).run()
    return out


def planes(path: Path) -> tuple[list[np.ndarray], av.VideoFrame]:
    """Every frame's planes as decoded, stacked (h * 3 / 2, w) as `to_ndarray` gives them; and a frame."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="yuv420p") for f in frames], frames[0]


def todays(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Today's output planes (see the module docstring) and, per frame, where its BGR clipped."""
    rotation = probe_video(path).rotation
    out, clipped = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            bgr = frame.to_ndarray(
                format="bgr24", src_color_range=frame.color_range or None, interpolation=SWS
            )
            bgr = np.rot90(bgr, -(rotation // 90))
            h, w = bgr.shape[:2]
            bgr = np.ascontiguousarray(np.pad(bgr, ((0, h & 1), (0, w & 1), (0, 0)), mode="edge"))
            converted = av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(
                format="yuv420p", interpolation=SWS
            )
            out.append(converted.to_ndarray())
            clipped.append(((bgr == 0) | (bgr == 255)).any(axis=2))
    return out, clipped


def untouched(video: Path, shape: tuple[int, int]) -> np.ndarray:
    """True where no frame's face box (plus MARGIN) reaches, on the output's even-sized luma grid."""
    info = probe_video(video)
    tracker = FaceTracker(YuvDetector(HaarDetector()))  # type: ignore[arg-type]  # as the pipeline does
    keep = np.ones(shape, bool)
    boxes: list[Box] = [crop.box for _, crop in tracker.track(iter_yuv_frames(video, info)) if crop.box]  # type: ignore[arg-type]
    assert boxes, "the clip must have a face for the test to mean anything"
    for b in boxes:
        keep[max(0, b.y1 - MARGIN) : b.y2 + MARGIN, max(0, b.x1 - MARGIN) : b.x2 + MARGIN] = False
    return keep


def split(stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V of `to_ndarray(format="yuv420p")`: the three planes one after the other, flattened."""
    h, w = stacked.shape[0] * 2 // 3, stacked.shape[1]
    flat, luma, chroma = stacked.reshape(-1), h * w, h * w // 4
    u, v = flat[luma : luma + chroma], flat[luma + chroma :]
    return flat[:luma].reshape(h, w), u.reshape(h // 2, w // 2), v.reshape(h // 2, w // 2)


def assert_outside_face_matches_today(video: Path, out: Path) -> list[np.ndarray]:
    got, _ = planes(out)
    ref, clipped = todays(video)
    assert len(got) == len(ref)
    keep = untouched(video, split(got[0])[0].shape)
    chroma_keep = keep[::2, ::2] & keep[1::2, 1::2]
    for new, old, clip in zip(got, ref, clipped, strict=True):
        (ny, nu, nv), (oy, ou, ov) = split(new), split(old)
        fine = keep & ~clip
        assert np.abs(ny.astype(int) - oy)[fine].max() <= 2
        fine_c = chroma_keep & ~(clip[::2, ::2] | clip[1::2, 1::2])
        for n, o in ((nu, ou), (nv, ov)):
            off = np.abs(n.astype(int) - o)[fine_c]
            assert (off > 2).mean() < 0.05  # today's blurred chroma edges aside
            assert off.mean() < 0.75
    return got


def test_outside_the_face_the_output_is_the_source_and_within_two_levels_of_today(
    tmp_path: Path, model: LipSyncModel, audio: Path
) -> None:
    video = write_face_clip(tmp_path / "clip.mp4", SECONDS, 25)
    out = render(tmp_path, model, video, audio)
    got = assert_outside_face_matches_today(video, out)
    source, _ = planes(video)
    keep = untouched(video, split(got[0])[0].shape)
    for new, src in zip(got, source, strict=True):
        (ny, nu, nv), (sy, su, sv) = split(new), split(src)
        assert np.array_equal(ny[keep], sy[keep])  # not one level moved: no conversion on the way
        chroma_keep = keep[::2, ::2] & keep[1::2, 1::2]
        assert np.array_equal(nu[chroma_keep], su[chroma_keep])
        assert np.array_equal(nv[chroma_keep], sv[chroma_keep])


def test_the_models_face_lands_inside_the_face_box(tmp_path: Path, model: LipSyncModel, audio: Path) -> None:
    video = write_face_clip(tmp_path / "clip.mp4", SECONDS, 25)
    out = render(tmp_path, model, video, audio)
    got, _ = planes(out)
    source, _ = planes(video)
    moved = [np.abs(split(n)[0].astype(int) - split(s)[0]) for n, s in zip(got, source, strict=True)]
    keep = untouched(video, moved[0].shape)
    assert max(float(m[~keep].mean()) for m in moved) > 1.0  # the baseline drops the jaw while speech plays
    assert max(int((m > 8).sum()) for m in moved) > 50
    assert all(int(m[keep].max()) == 0 for m in moved)


@pytest.mark.parametrize(
    ("name", "options", "size"),
    [
        ("odd.mkv", {"size": (255, 257), "codec": "ffv1"}, (256, 258)),  # padded to even, as before
        ("turned.mp4", {"size": (256, 192), "rotate": 90}, (256, 192)),  # upright, as displayed
        ("full.mp4", {"size": (256, 256), "pix_fmt": "yuvj420p"}, (256, 256)),  # full range -> limited
    ],
)
def test_odd_rotated_and_full_range_sources_keep_size_orientation_and_levels(
    tmp_path: Path,
    model: LipSyncModel,
    audio: Path,
    name: str,
    options: dict[str, object],
    size: tuple[int, int],
) -> None:
    video = write_face_clip(tmp_path / name, SECONDS, 25, **options)  # type: ignore[arg-type]
    out = render(tmp_path, model, video, audio)
    _, first = planes(out)
    assert (first.width, first.height) == size
    assert first.rotation == 0
    assert first.color_range in (0, 1)  # limited ("TV") range, as today's output
    assert_outside_face_matches_today(video, out)  # orientation too: a turned picture would differ


def write_bt709_clip(path: Path) -> Path:
    """The face clip re-encoded with its planes tagged BT.709 (as HD cameras and phones tag theirs)."""
    source = write_face_clip(path.with_name("plain.mp4"), SECONDS, 25)
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        stream.codec_context.colorspace = 1  # BT.709
        for index, frame in enumerate(src.decode(video=0)):
            frame.pts, frame.time_base = index, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_a_bt709_source_keeps_its_planes_and_is_tagged_bt709(
    tmp_path: Path, model: LipSyncModel, audio: Path
) -> None:
    video = write_bt709_clip(tmp_path / "hd.mp4")
    out = render(tmp_path, model, video, audio)
    got, first = planes(out)
    source, source_first = planes(video)
    assert source_first.colorspace == 1
    assert first.colorspace == 1  # so a player converts the kept planes with the matrix they were made in
    keep = untouched(video, split(got[0])[0].shape)
    for new, src in zip(got, source, strict=True):
        assert np.array_equal(split(new)[0][keep], split(src)[0][keep])
