"""A longer hostile-inputs run: the test suite's cases plus N seeded variants, through ONE real render daemon.

Variants (drawn from `--seed`, so a run can be repeated exactly):
- valid video: random size (odd sizes too), frame rate (10 to 60, 29.97), rotation, pixel format
  (8/10-bit, 4:2:0/4:4:4), length (one frame to 2 s), or a PNG/JPEG still. Must render with the voice's
  duration and the upright size (odd sizes padded to even).
- valid audio: random format (WAV, MP3, M4A, Ogg Vorbis, Ogg Opus, FLAC), channels, rate, length.
  Must render with that length.
- fuzzed video / audio: a valid file cut at a random byte, with random bytes overwritten, or with a run of
  bytes zeroed. Must render, or fail with a plain message naming the file.
- fuzzed manifest: a good manifest with random bytes overwritten, deleted or inserted (YAML's special
  characters are likely). Must render, or be refused with a plain message.

Every input is judged by the suite's own checks (tests/e2e/hostile_run.py); the daemon must survive,
open nothing outside the share and write nothing outside the outputs.

    .venv/bin/python bench/reliability_inputs.py --inputs 300 --seed 1 --json bench/out/reliability.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog

from daemon import samples
from daemon.render.media import MediaError, load_audio
from tests.e2e import hostile
from tests.e2e.hostile import ANY, RENDERED, Case, Make
from tests.e2e.hostile_run import Run, check, drive, outcome

FPS_CHOICES = (10, 15, 24, 25, 29.97, 30, 50, 60)
AUDIO_CHOICES = [  # (suffix written, suffix shown, channel counts, rates)
    (".wav", ".wav", (1, 2, 6), (8000, 16000, 22050, 44100, 48000)),
    (".mp3", ".mp3", (1, 2), (16000, 22050, 44100, 48000)),
    (".m4a", ".m4a", (1, 2, 6), (8000, 16000, 44100, 48000)),
    (".ogg", ".ogg", (2,), (22050, 44100, 48000)),
    (".opus", ".ogg", (1, 2, 6), (16000, 48000)),
    (".flac", ".flac", (1, 2, 6), (16000, 44100, 96000)),
]
FUZZ_VIDEOS = (
    "anchor.mp4",
    "cut-faststart.mp4",
    "mkv-named.mp4",
    "ten-bit.mp4",
    "phone.mp4",
    "vfr.mp4",
    "still.png",
    "still.jpg",
    "odd.mkv",
)
FUZZ_SOUNDS = (
    "wav-stereo.wav",
    "mp3-stereo.mp3",
    "m4a-stereo.m4a",
    "ogg-stereo.ogg",
    "ogg-mono.ogg",
    "flac-stereo.flac",
    "talking.mp4",
)
YAML_SPECIALS = b":[]{}&*!|>'\"%@`#,-? \t\n\x00\xff\xfe"
Variant = tuple[dict[str, Make], Case]


def _bytes(data: bytes) -> Make:
    return lambda path: path.write_bytes(data)


# ---------------------------------------------------------------- valid variants


def valid_video(rng: random.Random, key: str) -> Variant:
    if rng.random() < 0.15:
        name, size = f"{key}{rng.choice(['.png', '.jpg'])}", (rng.randint(40, 400), rng.randint(40, 400))
        return {name: lambda p: samples.write_still(p, size)}, _case(
            key, "valid: still image", videos=(name,)
        )
    size = (rng.randint(40, 400), rng.randint(40, 400))
    fps = rng.choice(FPS_CHOICES)
    odd = size[0] % 2 or size[1] % 2
    pix_fmt = "yuv444p" if odd else rng.choice(["yuv420p", "yuv420p10le", "yuv444p"])
    rotate, seconds = rng.choice([0, 0, 90, 180, 270]), rng.choice([1 / fps, 0.3, 1.0, 2.0])
    make: Make = lambda p: samples.write_face_clip(p, seconds, fps, size, rotate=rotate, pix_fmt=pix_fmt)  # noqa: E731
    shape = (size[0] + size[0] % 2, size[1] + size[1] % 2)
    return {f"{key}.mp4": make}, _case(key, "valid: video variant", videos=(f"{key}.mp4",), shape=shape)


def valid_audio(rng: random.Random, key: str) -> Variant:
    written, shown, channels, rates = rng.choice(AUDIO_CHOICES)
    count, rate, seconds = rng.choice(channels), rng.choice(rates), round(rng.uniform(0.3, 3.0), 2)
    voice = samples.speech_like(seconds, seed=rng.randrange(1000), sr=rate)

    def make(path: Path) -> None:
        real = path.with_suffix(written)
        samples.write_audio(real, voice, rate, channels=count)
        real.rename(path)

    cls = f"valid: audio {written.lstrip('.')}"
    return {f"{key}{shown}": make}, _case(key, cls, audio=f"{key}{shown}", seconds=seconds)


# ---------------------------------------------------------------- fuzzed variants


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One of three damages a copy or a disk does: cut, overwritten bytes, a zeroed run."""
    kind = rng.choice(["cut", "overwritten bytes", "zeroed run"])
    out = bytearray(data)
    if kind == "cut":
        return kind, bytes(out[: rng.randrange(1, len(out))])
    if kind == "overwritten bytes":
        for _ in range(rng.randint(1, 32)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return kind, bytes(out)
    start = rng.randrange(len(out))
    end = min(len(out), start + rng.randint(16, 8192))
    out[start:end] = bytes(end - start)
    return kind, bytes(out)


def fuzzed_media(rng: random.Random, key: str, pool: dict[str, bytes]) -> Variant:
    as_audio = rng.random() < 0.5
    base = rng.choice(FUZZ_SOUNDS if as_audio else FUZZ_VIDEOS)
    kind, data = mutate(rng, pool[base])
    name = f"{key}{Path(base).suffix}"
    cls = f"fuzzed {'audio' if as_audio else 'video'}: {kind}"
    if as_audio:
        return {name: _bytes(data)}, _case(key, cls, audio=name, seconds=_decoded_seconds(data, name))
    return {name: _bytes(data)}, _case(key, cls, videos=(name,))


def _decoded_seconds(data: bytes, name: str) -> float:
    """How long the daemon will hear this damaged sound (it decodes what it can); 0 if nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name)
        path.write_bytes(data)
        try:
            return len(load_audio(path)) / 16000
        except MediaError:
            return 0.0


def fuzzed_manifest(rng: random.Random, key: str) -> Variant:
    out = bytearray(hostile.GOOD.encode())
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out))
        action = rng.choice(["overwrite", "delete", "insert"])
        if action == "delete":
            del out[at]
        else:
            byte = rng.choice(YAML_SPECIALS) if rng.random() < 0.7 else rng.randrange(256)
            out[at : at + (action == "overwrite")] = bytes([byte])
    body = bytes(out)
    return {}, _case(key, "fuzzed manifest", body=lambda outside: body)


def _case(key: str, cls: str, **fields: Any) -> Case:
    expect = RENDERED if cls.startswith("valid") else ANY
    return Case(key, cls, expect, **fields)


# ---------------------------------------------------------------- the run


def variants(count: int, seed: int, pool: dict[str, bytes]) -> tuple[dict[str, Make], list[Case]]:
    rng = random.Random(seed)
    makers: list[Callable[[random.Random, str], Variant]] = [
        valid_video,
        valid_audio,
        lambda r, k: fuzzed_media(r, k, pool),
        lambda r, k: fuzzed_media(r, k, pool),
        fuzzed_manifest,
    ]
    media: dict[str, Make] = {}
    cases = []
    for i in range(count):
        made, case = rng.choice(makers)(rng, f"v{i:04d}")
        media.update(made)
        cases.append(case)
    return media, cases


def base_pool(folder: Path) -> dict[str, bytes]:
    """The suite's media, generated once, as the bytes fuzzing starts from."""
    names = set(FUZZ_VIDEOS) | set(FUZZ_SOUNDS)
    hostile.make_media(folder, {n: hostile.MEDIA[n] for n in names})
    return {n: (folder / n).read_bytes() for n in names}


def judge(run: Run, cases: list[Case]) -> tuple[dict[str, Counter[str]], list[dict[str, str]]]:
    tally: dict[str, Counter[str]] = defaultdict(Counter)
    problems = []
    for case in cases:
        try:
            check(run, case)
            verdict = outcome(run, case)
        except AssertionError as exc:
            problem = str(exc).split("\n")[0]
            known = case.key if case.xfail else None  # a strict xfail in the suite: the lead knows
            verdict = f"PROBLEM (known bug: {known})" if known else "PROBLEM"
            problems.append(
                {"case": case.key, "class": case.cls, "problem": problem, "known_bug": known or ""}
            )
        tally[case.cls][verdict] += 1
    return tally, problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", type=int, default=300, help="seeded variants on top of the suite's cases")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # quiet generators
    root = Path(args.keep or tempfile.mkdtemp(prefix="reliability-"))
    root.mkdir(parents=True, exist_ok=True)
    media, cases = variants(args.inputs, args.seed, base_pool(root / "pool"))
    every = [*hostile.CASES, *cases]
    run = drive(root / "run", every, {**hostile.MEDIA, **media}, wait_s=300 + 5 * len(every))
    tally, problems = judge(run, [*every, hostile.GOOD_CASE])
    report = _report(args, run, every, tally, problems)
    _print(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 1 if any(not p["known_bug"] for p in problems) or not run.alive else 0


def _report(
    args: argparse.Namespace,
    run: Run,
    every: list[Case],
    tally: dict[str, Counter[str]],
    problems: list[dict[str, str]],
) -> dict[str, Any]:
    return {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "seed": args.seed,
        "inputs": len(every),
        "seconds": round(run.seconds, 1),
        "daemon_alive": run.alive,
        "daemon_exit_code": run.exit_code,
        "outside_files_opened": sorted(run.opened),
        "share_untouched_outside_outputs": run.after == run.before,
        "outside_untouched": run.outside_after == run.outside_before,
        "tally": {cls: dict(counts) for cls, counts in tally.items()},
        "problems": problems,
    }


def _print(report: dict[str, Any]) -> None:
    inputs, seconds, seed = report["inputs"], report["seconds"], report["seed"]
    print(f"\n{inputs} inputs + 1 good through one daemon in {seconds} s (seed {seed})")
    width = max(len(cls) for cls in report["tally"])
    for cls, counts in report["tally"].items():
        print(f"  {cls:<{width}}  " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
    print(f"  daemon alive: {report['daemon_alive']}; outside files opened: {report['outside_files_opened']}")
    print(f"  share untouched outside outputs: {report['share_untouched_outside_outputs']}")
    for problem in report["problems"]:
        known = f" [known bug: {problem['known_bug']}]" if problem["known_bug"] else ""
        print(f"  PROBLEM {problem['case']} ({problem['class']}): {problem['problem']}{known}")


if __name__ == "__main__":
    raise SystemExit(main())
