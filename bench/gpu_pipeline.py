"""End-to-end render speed on a GPU machine, and where the time goes.

Generates a 1080p face clip and speech, imports a randomly initialised Wav2Lip (speed does not depend
on the weights), then measures on the CUDA execution provider:
  - each stage alone: decode, face tracking (Haar every 5 frames), model (fp32/fp16, IO-bound numpy in/out),
    paste-back, encode (libx264; NVENC when the GPU has an encoder);
  - the whole pipeline for one video, and for several videos in flight (one worker each, one GPU).

    python3 bench/gpu_pipeline.py --json OUT.json [--seconds 10] [--in-flight 1,4,8]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_speed import machine, make_model
from daemon.render import audio as audio_features
from daemon.render.blend import paste_back
from daemon.render.faces import HaarDetector, crop_face, track_faces
from daemon.render.media import VideoEncoder, encoder_available, iter_frames, probe_video
from daemon.render.model import LipSyncModel, prepare_faces, to_images
from daemon.render.pipeline import RenderSettings, VideoRender, prepare_audio
from daemon.samples import speech_like, write_audio, write_face_clip

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def stage_fps(work: Path, clip: Path, audio: Path, model: LipSyncModel, batch: int) -> dict[str, float]:
    info = probe_video(clip)
    frames = list(iter_frames(clip, info))
    n = len(frames)
    out: dict[str, float] = {}
    started = time.perf_counter()
    for _ in iter_frames(clip, info):
        pass
    out["decode"] = n / (time.perf_counter() - started)
    started = time.perf_counter()
    tracked = list(track_faces(iter(frames), HaarDetector()))
    out["face_track"] = n / (time.perf_counter() - started)
    boxes = [crop.box for _, crop in tracked]
    crops = [crop_face(f, b) for f, b in zip(frames, boxes, strict=True) if b is not None]
    mel = audio_features.mel_spectrogram(np.zeros(16000 * 10, np.float32))
    mels = np.stack([audio_features.mel_window(mel, i, info.fps) for i in range(batch)])[:, None]
    faces = prepare_faces(crops[:batch] * (batch // max(len(crops[:batch]), 1)))[:batch]
    model.infer(mels, faces)
    started, runs = time.perf_counter(), 0
    while time.perf_counter() - started < 3:
        images = to_images(model.infer(mels, faces))
        runs += 1
    out["model_host_io"] = runs * batch / (time.perf_counter() - started)
    started = time.perf_counter()
    pasted = [
        paste_back(f, b, images[i % len(images)])
        for i, (f, b) in enumerate(zip(frames, boxes, strict=True))
        if b
    ]
    out["paste_back"] = len(pasted) / (time.perf_counter() - started)
    for codec in ("libx264", "h264_nvenc"):
        if not encoder_available(codec):
            continue
        started = time.perf_counter()
        with VideoEncoder(
            work / f"enc-{codec}.mp4", info.width, info.height, info.fps, audio, codec=codec
        ) as enc:
            for frame in frames:
                enc.write(frame)
        out[f"encode_{codec}"] = n / (time.perf_counter() - started)
    return out


def pipeline_fps(
    work: Path, clip: Path, audio: Path, folder: Path, precision: str, batch: int, *, in_flight: int
) -> float:
    """Frames per second summed over `in_flight` videos rendering at once, each with its own session."""
    job_audio = prepare_audio(audio)
    models = [LipSyncModel.open(folder, providers=CUDA, precision=precision) for _ in range(in_flight)]

    def one(i: int) -> int:
        render = VideoRender(
            source=clip,
            audio=job_audio,
            out_path=work / f"out-{in_flight}-{i}.mp4",
            model=models[i],
            detector=HaarDetector(),
            settings=RenderSettings(batch_size=batch),
            scratch_dir=work / "scratch",
            stop=threading.Event(),
        )
        return render.run().frames

    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        frames = sum(pool.map(one, range(in_flight)))
    return frames / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--in-flight", default="1,4,8")
    args = parser.parse_args()
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels
    work = Path(tempfile.mkdtemp(prefix="gpubench-"))
    clip = write_face_clip(work / "hd.mp4", args.seconds, 25, (1920, 1080))
    audio = write_audio(work / "speech.wav", speech_like(args.seconds))
    (work / "models").mkdir()
    make_model(work / "models")
    folder = work / "models" / "bench"
    result: dict[str, object] = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "clip": f"1080p {args.seconds:g}s 25fps",
        "batch": args.batch,
    }
    model = LipSyncModel.open(folder, providers=CUDA, precision="fp16")
    result["provider"] = model.provider
    result["stages_fps"] = stage_fps(work, clip, audio, model, args.batch)
    print(json.dumps(result, indent=1), flush=True)
    runs = {}
    for precision in ("fp16", "fp32"):
        for n in [int(x) for x in args.in_flight.split(",")]:
            runs[f"{precision}_x{n}"] = round(
                pipeline_fps(work, clip, audio, folder, precision, args.batch, in_flight=n), 1
            )
            print(precision, n, runs[f"{precision}_x{n}"], flush=True)
    result["end_to_end_fps"] = runs
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
