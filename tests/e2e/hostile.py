"""Hostile and broken inputs for the render daemon, generated on the spot (nothing is downloaded).

Each `Case` is one manifest dropped into the inbox, the media it names and the outcome it must have:
RENDERED (links.json says `rendered`, with the audio's duration), MIXED (the bad videos `failed` in
links.json beside a good one that rendered), JOB_FAILED (the manifest lands in inbox/failed/ with an
error file; links.json says `failed`), REFUSED (inbox/failed/ with an error file; no job at all) or ANY
(one of those, for fuzzed inputs whose fate is not known in advance).

Files outside the shared folder live in `outside/`; each holds a canary string of its own, so a case that
tempts the daemon to read one can check that its canary never shows up anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import yaml

from daemon import samples
from daemon.render.media import VideoEncoder

RENDERED, MIXED, JOB_FAILED, REFUSED = "rendered", "mixed", "job failed", "refused"
ANY = "any"  # fuzzed input: rendered or failed, as long as it is clean
VOICE_S = 1.2  # every job's voice, unless the case says otherwise
FPS = 25
SIZE = (160, 160)  # small avatars keep the suite fast; the face is still found at this size
Make = Callable[[Path], object]


@dataclass(frozen=True)
class Case:
    key: str  # a short ASCII id; also the manifest's file stem unless `file_name` says otherwise
    cls: str  # the class of input, as the tally names it
    expect: str
    audio: str = "voice.wav"  # media names (in inbox/media/), turned into the manifest's paths
    videos: tuple[str, ...] = ("anchor.mp4",)
    words: tuple[str, ...] = ()  # phrases the user-facing message must contain
    names: tuple[str, ...] = ()  # files the message must name (default: the bad media)
    seconds: float = VOICE_S  # the output's duration when it renders
    shape: tuple[int, int] | None = None  # (width, height) of the output, when the case is about size
    body: Callable[[Outside], bytes] | None = None  # a manifest written by hand
    file_name: str | bytes | None = None  # the manifest's name in the inbox (bytes: not UTF-8)
    symlink: str | None = None  # the manifest is a symbolic link to this file in outside/
    outside: tuple[str, ...] = ()  # files in outside/ this case tempts the daemon to read
    xfail: str | None = None  # a known daemon bug outside media.py: the lead fixes it and flips this

    @property
    def manifest_name(self) -> str:
        """The name as Python sees it (undecodable bytes become surrogates, as os.listdir gives them)."""
        if isinstance(self.file_name, bytes):
            return os.fsdecode(self.file_name)
        return self.file_name or f"{self.key}.yaml"

    def named(self) -> tuple[str, ...]:
        """The files the user-facing message must name: given, else the bad media, else the manifest."""
        if self.names:
            return self.names
        if self.body is None and self.audio != "voice.wav":
            return (Path(self.audio).name,)
        if self.body is None:
            return tuple(Path(v).name for v in self.videos)
        return (self.manifest_name,)

    def manifest(self, outside: Outside) -> bytes:
        if self.body is not None:
            return self.body(outside)
        doc = {"audio": f"media/{self.audio}", "videos": [f"media/{v}" for v in self.videos]}
        return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8")


@dataclass(frozen=True)
class Outside:
    """A folder beside the share with files no manifest may reach; each file holds its own canary."""

    folder: Path
    canaries: dict[str, str] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.folder / name


def make_outside(folder: Path) -> Outside:
    folder.mkdir(parents=True)
    (folder / "dir").mkdir()
    outside = Outside(folder)
    for name in ("private.txt", "voice.wav", "face.mp4", "dir/voice.wav", "secret.yaml", "link.wav"):
        canary = f"CANARY-{name.replace('/', '-')}-5d41402a"
        outside.canaries[name] = canary
        text = f"audio: media/{canary}.wav\nvideos: [media/{canary}.mp4]\n" if name.endswith(".yaml") else ""
        (folder / name).write_bytes(text.encode() or f"{canary}\n".encode() * 64)
    return outside


# ---------------------------------------------------------------- media


def _voice(seconds: float = VOICE_S, rate: int = 16000) -> np.ndarray:
    return samples.speech_like(seconds, seed=1, sr=rate)


def _clip(seconds: float = 1.0, size: tuple[int, int] = SIZE, **options: object) -> Make:
    return lambda path: samples.write_face_clip(path, seconds, FPS, size, **options)  # type: ignore[arg-type]


def _sound(channels: int, rate: int, codec_suffix: str | None = None) -> Make:
    """`codec_suffix` picks the codec when it differs from the name's (.opus written as .ogg)."""

    def make(path: Path) -> None:
        real = path.with_suffix(codec_suffix) if codec_suffix else path
        samples.write_audio(real, _voice(rate=rate), rate, channels=channels)
        real.rename(path)

    return make


def _renamed(suffix: str, make: Make) -> Make:
    """Written as `suffix` (which picks the format), then given the case's name: a mislabelled file."""

    def wrap(path: Path) -> None:
        real = path.with_name(path.stem + ".real" + suffix)
        make(real)
        real.rename(path)

    return wrap


def _bytes(data: bytes) -> Make:
    return lambda path: path.write_bytes(data)


def _cut(make: Make) -> Make:
    """The first half of the file: a copy or upload that stopped midway."""

    def wrap(path: Path) -> None:
        make(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return wrap


def _faststart(path: Path) -> None:
    """An MP4 with its index at the front (as our own outputs are), so a cut keeps the index."""
    with VideoEncoder(path, *SIZE, FPS, None) as encoder:
        for frame in samples.face_frames(1.0, FPS, SIZE):
            encoder.write(frame)


def _uhd(path: Path) -> None:
    """1 s of 3840x2160: one view of the face, panned a little per frame (warping 4K frames is slow)."""
    view = next(samples.face_frames(1 / FPS, FPS, (3840, 2160)))
    with av.open(os.fspath(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 3840, 2160, "yuv420p"
        for i in range(FPS):
            frame = av.VideoFrame.from_ndarray(np.roll(view, 8 * i, axis=1), format="bgr24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _latin1_tags(path: Path) -> None:
    """A clip whose tags are Latin-1, not UTF-8, as some old cameras and editors write them."""
    samples.write_face_clip(path, 1.0, FPS, SIZE)
    data = path.read_bytes()
    assert data.count(b"VideoHandler") == 1
    path.write_bytes(data.replace(b"VideoHandler", b"Vid\xe9o-cam\xe9ra"))  # same length: boxes stay valid


def _with_sound(path: Path) -> None:
    voice = samples.write_audio(path.with_name(".voice-for-video.wav"), _voice())
    with VideoEncoder(path, *SIZE, FPS, voice) as encoder:
        for frame in samples.face_frames(VOICE_S, FPS, SIZE):
            encoder.write(frame)
    voice.unlink()


UNICODE_VIDEO = "主播 \u200f😀 e\u0301.mp4"  # Chinese, a right-to-left mark, an emoji, a combining accent
LONG_VIDEO = "促" * 83 + ".mp4"  # 253 bytes: near the 255-byte limit of one file name

MEDIA: dict[str, Make] = {
    "voice.wav": _sound(1, 16000),
    "anchor.mp4": _clip(),
    "a/same.mp4": _clip(seed=5),
    "b/same.mp4": _clip(seed=6),
    UNICODE_VIDEO: _clip(seed=7),
    LONG_VIDEO: _clip(seed=8),
    # broken or mislabelled videos
    "zero.mp4": _bytes(b""),
    "text.mp4": _bytes(b"Shopping list: milk, eggs, bread.\n" * 40),
    "cut.mp4": _cut(_clip()),
    "cut-faststart.mp4": _cut(_faststart),
    "wav-named.mp4": _renamed(".wav", _sound(1, 16000)),
    "mkv-named.mp4": _renamed(".mkv", _clip()),
    "latin1-tags.mp4": _latin1_tags,
    "png-named.jpg": _renamed(".png", lambda p: samples.write_still(p, SIZE)),
    "voice-only.m4a": _sound(1, 16000),
    # unusual but valid videos and images
    "one-frame.mp4": _clip(1 / FPS),
    "odd.mkv": _clip(size=(255, 257), codec="ffv1", pix_fmt="bgr0"),
    "uhd.mp4": _uhd,
    "ten-bit.mp4": _clip(pix_fmt="yuv420p10le"),
    "phone.mp4": _clip(size=(180, 320), rotate=90),
    "vfr.mp4": lambda path: samples.write_vfr_clip(path, VOICE_S, size=SIZE),
    "still.png": lambda path: samples.write_still(path, SIZE),
    "still.jpg": lambda path: samples.write_still(path, SIZE),
    "camera.jpg": lambda path: samples.write_still(path, (9000, 6000)),  # a 54-megapixel camera's photo
    "fifo.mp4": os.mkfifo,
    "folder.mp4": Path.mkdir,
    # sounds
    "silence.wav": lambda path: samples.write_audio(path, np.zeros(int(VOICE_S * 16000), np.float32)),
    "talking.mp4": _with_sound,
    "zero.wav": _bytes(b""),
    "text.wav": _bytes(b"Not a recording, just words.\n" * 40),
    "wav-mono.wav": _sound(1, 16000),
    "wav-stereo.wav": _sound(2, 44100),
    "wav-5.1.wav": _sound(6, 48000),
    "mp3-mono.mp3": _sound(1, 22050),
    "mp3-stereo.mp3": _sound(2, 44100),
    "m4a-mono.m4a": _sound(1, 16000),
    "m4a-stereo.m4a": _sound(2, 44100),
    "m4a-5.1.m4a": _sound(6, 48000),
    "m4a-mono-8kHz.m4a": _sound(1, 8000),  # AAC pads to 1024-sample frames: 0.12 s at this rate
    "ogg-mono.ogg": _sound(1, 16000, ".opus"),  # Opus in Ogg: FFmpeg's Vorbis encoder writes stereo only
    "ogg-stereo.ogg": _sound(2, 44100),
    "ogg-5.1.ogg": _sound(6, 48000, ".opus"),
    "flac-mono.flac": _sound(1, 16000),
    "flac-stereo.flac": _sound(2, 44100),
    "flac-5.1.flac": _sound(6, 48000),
}


def make_media(folder: Path, media: Mapping[str, Make]) -> None:
    for name, make in media.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)


def link_escapes(media: Path, outside: Outside) -> None:
    """Symbolic links inside the share that point out of it: to a file, and to a whole folder."""
    (media / "escape.wav").symlink_to(outside.path("link.wav"))
    (media / "escape-dir").symlink_to(outside.path("dir"), target_is_directory=True)


# ---------------------------------------------------------------- cases


def _video(key: str, cls: str, name: str, expect: str = RENDERED, **more: object) -> Case:
    return Case(key, cls, expect, videos=(name,), **more)  # type: ignore[arg-type]


def _sound_case(name: str) -> Case:
    key = "sound-" + name.rsplit(".", 1)[0].replace(".", "")
    return Case(key, f"audio: {_sound_class(name)}", RENDERED, audio=name)


def _sound_class(name: str) -> str:
    stem, suffix = name.rsplit(".", 1)
    return f"{suffix.upper()} {stem.split('-', 1)[1]}"


VIDEO_CASES = [
    _video("video-zero", "video: zero-byte", "zero.mp4", JOB_FAILED, words=("empty (0 bytes)",)),
    _video("video-text", "video: text file named .mp4", "text.mp4", JOB_FAILED, words=("not a video",)),
    _video("video-cut", "video: truncated (index lost)", "cut.mp4", JOB_FAILED, words=("cut short",)),
    _video(
        "video-cut-fast",
        "video: truncated (frames lost)",
        "cut-faststart.mp4",
        JOB_FAILED,
        words=("cut short",),
    ),
    _video("video-wav", "video: WAV named .mp4", "wav-named.mp4", JOB_FAILED, words=("no video track",)),
    _video(
        "video-audio-only",
        "video: audio-only file",
        "voice-only.m4a",
        JOB_FAILED,
        words=("no video track", "audio file"),
    ),
    _video("video-fifo", "video: a named pipe", "fifo.mp4", REFUSED, words=("not a regular file",)),
    _video("video-folder", "video: a folder", "folder.mp4", REFUSED, words=("not a regular file",)),
    _video("video-mkv", "video: Matroska named .mp4", "mkv-named.mp4"),
    _video("video-png-as-jpg", "video: PNG named .jpg", "png-named.jpg"),
    _video("video-latin1-tags", "video: tags in Latin-1, not UTF-8", "latin1-tags.mp4"),
    _video("video-one-frame", "video: a single frame", "one-frame.mp4"),
    _video("video-odd", "video: odd size 255x257", "odd.mkv", shape=(256, 258)),
    _video("video-4k", "video: 4K (3840x2160, 1 s)", "uhd.mp4", shape=(3840, 2160), audio="wav-mono.wav"),
    _video("video-10bit", "video: 10-bit", "ten-bit.mp4"),
    _video("video-rotated", "video: phone, rotated 90", "phone.mp4", shape=(180, 320)),
    _video("video-vfr", "video: variable frame rate", "vfr.mp4"),
    _video("image-png", "image: PNG as the avatar", "still.png"),
    _video("image-jpeg", "image: JPEG as the avatar", "still.jpg"),
    _video(
        "image-huge", "image: 9000x6000 photo (over 8K)", "camera.jpg", JOB_FAILED, words=("Scale it down",)
    ),
    Case(
        "mixed",
        "video: broken ones beside a good one",
        MIXED,
        videos=("anchor.mp4", "zero.mp4", "text.mp4", "cut.mp4", "wav-named.mp4", "voice-only.m4a"),
    ),
]

AUDIO_NAMES = [
    n for n in MEDIA if n.split("-")[0] in ("wav", "mp3", "m4a", "ogg", "flac") and "named" not in n
]

AUDIO_CASES = [
    *[_sound_case(name) for name in AUDIO_NAMES],
    Case("sound-silence", "audio: silence", RENDERED, audio="silence.wav"),
    Case("sound-from-video", "audio: a video with sound", RENDERED, audio="talking.mp4"),
    Case(
        "sound-none",
        "audio: a video with no audio track",
        JOB_FAILED,
        audio="anchor.mp4",
        words=("no audio track",),
    ),
    Case("sound-zero", "audio: zero-byte", JOB_FAILED, audio="zero.wav", words=("empty (0 bytes)",)),
    Case(
        "sound-text", "audio: text file named .wav", JOB_FAILED, audio="text.wav", words=("not a sound file",)
    ),
]


def _text(text: str, encoding: str = "utf-8") -> Callable[[Outside], bytes]:
    return lambda outside: text.encode(encoding)


def _doc(audio: object = "media/voice.wav", videos: object = ("media/anchor.mp4",), **more: object) -> str:
    videos = list(videos) if isinstance(videos, tuple) else videos
    return yaml.safe_dump({"audio": audio, "videos": videos, **more}, allow_unicode=True)


def _outside_doc(name: str) -> Callable[[Outside], bytes]:
    return lambda outside: _doc(audio=str(outside.path(name))).encode()


def _nested(depth: int, json_style: bool) -> str:
    inner = "[" * depth + "]" * depth
    return f'{{"audio": "media/voice.wav", "videos": {inner}}}' if json_style else f"videos: {inner}\n"


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9)
)
GOOD = "audio: media/voice.wav\nvideos:\n  - media/anchor.mp4\n"

MANIFEST_CASES = [
    Case(
        "yaml-invalid",
        "manifest: invalid YAML",
        REFUSED,
        body=_text("audio: media/voice.wav\nvideos: [a, b\n"),
        words=("not valid YAML", "line"),
    ),
    Case("yaml-bomb", "manifest: alias bomb (billion laughs)", REFUSED, body=_text(BOMB), words=("aliases",)),
    Case(
        "yaml-deep",
        "manifest: nested 100000 deep (YAML)",
        REFUSED,
        body=_text(_nested(100_000, False)),
        words=("nested",),
    ),
    Case(
        "json-deep",
        "manifest: nested 100000 deep (JSON)",
        REFUSED,
        file_name="json-deep.json",
        body=_text(_nested(100_000, True)),
        words=("nested",),
    ),
    Case("huge", "manifest: 10 MB", REFUSED, body=_text(GOOD + "# padding\n" * 1_000_000), words=("bytes",)),
    Case(
        "latin1",
        "manifest: not UTF-8 (Latin-1)",
        REFUSED,
        body=_text(GOOD + "name: café\n", "latin-1"),
        words=("not UTF-8",),
    ),
    Case("utf16", "manifest: not UTF-8 (UTF-16)", REFUSED, body=_text(GOOD, "utf-16"), words=("UTF-8",)),
    Case(
        "nul-byte",
        "manifest: NUL byte in the file",
        REFUSED,
        body=_text(GOOD + "name: a\x00b\n"),
        words=("NUL",),
    ),
    Case("empty", "manifest: empty file", REFUSED, body=_text(""), words=("mapping",)),
    Case(
        "not-mapping",
        "manifest: a list, not a mapping",
        REFUSED,
        body=_text("- media/voice.wav\n"),
        words=("mapping",),
    ),
    Case(
        "wrong-types",
        "manifest: wrong types",
        REFUSED,
        body=_text(_doc(audio=["media/voice.wav"], videos=5, distribute="yes", link_ttl={"h": 1}, name=7)),
        words=("'audio' must be", "'videos' must be", "'distribute' must be", "'name' must be", "link_ttl"),
    ),
    Case(
        "wrong-items",
        "manifest: wrong types in the list",
        REFUSED,
        body=_text(_doc(videos=[1, None, {"a": "b"}])),
        words=("videos[0]", "videos[1]", "videos[2]"),
    ),
    Case(
        "missing",
        "manifest: missing files",
        REFUSED,
        body=_text(_doc(audio="media/nope.wav", videos=["media/gone.mp4"])),
        words=("does not exist",),
        names=("nope.wav", "gone.mp4"),
    ),
    Case(
        "dup-video",
        "manifest: the same video twice",
        REFUSED,
        body=_text(_doc(videos=["media/anchor.mp4", "media/./anchor.mp4"])),
        words=("twice",),
    ),
    Case(
        "dup-stems",
        "manifest: two videos with the same file name",
        RENDERED,
        videos=("a/same.mp4", "b/same.mp4"),
    ),
    Case("dup-name-a", "manifest: two jobs with the same name", RENDERED, body=_text(_doc(name="twin"))),
    Case("dup-name-b", "manifest: two jobs with the same name", RENDERED, body=_text(_doc(name="twin"))),
    Case(
        "dup-key",
        "manifest: a key given twice",
        REFUSED,
        body=_text(GOOD + "videos:\n  - media/still.png\n"),
        words=("videos",),
    ),
]

CLASH_CASES = [  # each must keep its own error file (inbox/failed/clash.error.txt, clash.2.error.txt)
    Case(
        "clash-json",
        "manifest: two manifests with one stem (clash.json, clash.yaml)",
        REFUSED,
        file_name="clash.json",
        body=_text('{"audio": "media/nope-b.wav", "videos": ["media/anchor.mp4"]}'),
        names=("nope-b.wav",),
    ),
    Case(
        "clash-yaml",
        "manifest: two manifests with one stem (clash.json, clash.yaml)",
        REFUSED,
        body=_text(_doc(audio="media/nope-a.wav")),
        file_name="clash.yaml",
        names=("nope-a.wav",),
    ),
]

PATH_CASES = [
    Case(
        "dotdot",
        "path: '..' out of the share",
        REFUSED,
        body=_text(_doc(audio="../../outside/voice.wav")),
        words=("'..'",),
        names=("voice.wav",),
        outside=("voice.wav",),
    ),
    Case(
        "absolute",
        "path: absolute, outside the share",
        REFUSED,
        body=_outside_doc("voice.wav"),
        words=("outside the shared folder",),
        outside=("voice.wav",),
    ),
    Case(
        "etc-passwd",
        "path: /etc/passwd",
        REFUSED,
        body=_text(_doc(audio="/etc/passwd")),
        words=("outside the shared folder",),
        names=("/etc/passwd",),
    ),
    Case(
        "link-file",
        "path: symlink escaping the share",
        REFUSED,
        audio="escape.wav",
        words=("outside the shared folder",),
        outside=("link.wav",),
    ),
    Case(
        "link-dir",
        "path: symlinked folder escaping the share",
        REFUSED,
        audio="escape-dir/voice.wav",
        words=("outside the shared folder",),
        outside=("dir/voice.wav",),
    ),
    Case(
        "link-manifest",
        "path: the manifest is a symlink out of the share",
        REFUSED,
        symlink="secret.yaml",
        words=("symbolic link",),
        names=("link-manifest.yaml",),
        outside=("secret.yaml",),
    ),
    Case(
        "nul-path",
        "path: NUL character in a path",
        REFUSED,
        body=_text(_doc(audio="media/voice\x00.wav")),
        words=("NUL",),
        names=("media/voice",),
    ),
    Case(
        "name-traversal",
        "name: '../../outside/pwned' as the job name",
        RENDERED,
        body=_text(_doc(name="../../outside/pwned")),
    ),
]

NAME_CASES = [
    Case(
        "long-media-name",
        "name: a video's name of 253 bytes (83 Chinese characters)",
        RENDERED,
        videos=(LONG_VIDEO,),
    ),
    Case(
        "unicode-media",
        "name: Chinese, RTL mark, emoji, combining accent in a video's name",
        RENDERED,
        videos=(UNICODE_VIDEO,),
    ),
    Case(
        "unicode-manifest",
        "name: Chinese, RTL mark, emoji in the manifest's name",
        RENDERED,
        file_name="促销\u200f🎉 e\u0301.yaml",
    ),
    Case(
        "bytes-manifest",
        "name: manifest file name not valid UTF-8",
        REFUSED,
        file_name=b"latin-caf\xe9.yaml",
        names=("latin-caf",),
        words=("not valid UTF-8",),
    ),
]

CASES = [*VIDEO_CASES, *AUDIO_CASES, *MANIFEST_CASES, *CLASH_CASES, *PATH_CASES, *NAME_CASES]
GOOD_CASE = Case("zz-good", "the known-good job dropped last", RENDERED)


def drop(inbox: Path, case: Case, outside: Outside) -> None:
    """Put the manifest into the inbox the way a careful user does: write beside it, rename in."""
    name = case.file_name if isinstance(case.file_name, bytes) else os.fsencode(case.manifest_name)
    target = os.path.join(os.fsencode(inbox), name)
    if case.symlink:
        os.symlink(outside.path(case.symlink), target)
        return
    tmp = os.path.join(os.fsencode(inbox), b"." + name + b".tmp")
    with open(tmp, "wb") as out:
        out.write(case.manifest(outside))
    os.rename(tmp, target)
