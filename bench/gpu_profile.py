"""GPU box profile: the model alone (fp16, TensorRT and CUDA, with and without IO binding), each render
stage alone at 1080p (wall and CPU milliseconds a frame), and whole renders with 1, 2, 4 render workers
per GPU (one process each, as `lipsyncd run` starts them), with where each worker's time went.

    python3 bench/gpu_profile.py --json OUT.json                  # on the GPU box (docs/gpu.md)
    python3 bench/gpu_profile.py --quick                          # the CPU fallback: small and short

Needs torch (the `import` extra) to build a random-weight Wav2Lip; speed does not depend on the weights.
Without a GPU every GPU row is skipped with the reason and the CPU rows still run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort

from bench.model_speed import machine
from daemon.render import accel
from daemon.render.model import LipSyncModel, choose_providers

CPU, CUDA, TRT = accel.CPU, accel.CUDA, accel.TENSORRT


# ---------------------------------------------------------------- the model alone


def make_model(models_dir: Path) -> Path:
    """A random-weight Wav2Lip imported with its fp16 variant (no int8: its calibration is slow)."""
    import torch

    from daemon.modelimport import import_checkpoint
    from daemon.modelimport.wav2lip_arch import Wav2Lip

    torch.manual_seed(0)
    net = Wav2Lip().eval()
    checkpoint = models_dir / "random_wav2lip.pth"
    state = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, checkpoint, _use_new_zipfile_serialization=False)
    import_checkpoint(checkpoint, models_dir, name="bench", fp16=True)
    return models_dir / "bench"


def feeds(batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(batch)
    mel = rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32)
    return mel, rng.uniform(0, 1, (batch, 6, 96, 96)).astype(np.float32)


def rate(step: Callable[[], object], frames: int, seconds: float) -> float:
    """Frames a second over at least `seconds` (and 3 runs), after one warm-up call."""
    step()
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        step()
        runs += 1
    return frames * runs / (time.perf_counter() - start)


def model_rows(folder: Path, state: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each provider at hand (TensorRT, CUDA, CPU) x precision x batch x mode:
    run = session.run, numpy in and out (the daemon before IO binding);
    bound = IO binding, numpy in and out (the daemon now on CUDA/TensorRT);
    device = inputs and outputs already on the GPU (the model alone: what paste-back on the GPU would see)."""
    have = ort.get_available_providers()
    sets = [p for p in ([TRT, CUDA, CPU] if not args.cpu_only else [CPU]) if p in have]
    rows: list[dict[str, Any]] = []
    for provider in sets:
        chain = choose_providers({TRT: "tensorrt", CUDA: "cuda", CPU: "cpu"}[provider], have)[0]
        for precision in args.precisions:
            started = time.perf_counter()
            try:
                model = LipSyncModel.open(
                    folder, providers=chain, precision=precision, trt_cache=state / "trt-cache"
                )
            except Exception as exc:  # noqa: BLE001 - a provider that fails to open is reported, not fatal
                rows.append({"provider": provider, "precision": precision, "error": str(exc)[:300]})
                print(f"{provider} {precision}: could not open: {exc}", flush=True)
                continue
            opened = time.perf_counter() - started
            for batch in args.model_batches if model.provider != CPU else args.cpu_batches:
                rows += one_model(model, provider, precision, batch, opened, args.model_seconds)
    return rows


def one_model(
    model: LipSyncModel, provider: str, precision: str, batch: int, opened: float, seconds: float
) -> list[dict[str, Any]]:
    mel, face = feeds(batch)
    plain = LipSyncModel(model.session, model.spec, io_binding=False)
    bound = LipSyncModel(model.session, model.spec, io_binding=True, device_id=model.device_id)
    for m in (plain, bound):
        m.largest_batch = model.largest_batch
    steps: dict[str, Callable[[], object]] = {
        "run": lambda: plain.infer(mel, face),
        "bound": lambda: bound.infer(mel, face),
    }
    if model.provider != CPU:
        steps["device"] = device_step(model, mel, face)
    rows = []
    for mode, step in steps.items():
        fps = rate(step, batch, seconds)
        rows.append(
            {
                "provider": model.provider,
                "asked": provider,
                "precision": precision,
                "batch": batch,
                "mode": mode,
                "fps": round(fps, 1),
                "open_s": round(opened, 2),
            }
        )
        print(
            f"model {model.provider:>26} {precision:>5} batch {batch:>4} {mode:>6}: {fps:>9.1f} frames/s",
            flush=True,
        )
    return rows


def device_step(model: LipSyncModel, mel: np.ndarray, face: np.ndarray) -> Callable[[], object]:
    ports = {model._mel.name: (mel, model._mel.dtype), model._face.name: (face, model._face.dtype)}
    binding = model.session.io_binding()
    for name, (array, dtype) in ports.items():
        value = ort.OrtValue.ortvalue_from_numpy(array.astype(dtype), "cuda", model.device_id)
        binding.bind_ortvalue_input(name, value)
    binding.bind_output(model.spec.output, "cuda", model.device_id)
    return lambda: model.session.run_with_iobinding(binding)


# ---------------------------------------------------------------- each stage alone


def stage_rows(
    clip: Path, folder: Path, state: Path, chain: list[str], precision: str, batch: int
) -> dict[str, Any]:
    """Wall and CPU (all threads of this process) milliseconds a frame for each stage, one after another.
    CPU ms a frame is what limits many workers on one box: cores x 1000 / the sum is the ceiling."""
    from daemon.render.blend import paste_back
    from daemon.render.faces import HaarDetector, track_faces
    from daemon.render.media import VideoEncoder, encoder_available, iter_frames, probe_video, video_decoder
    from daemon.render.model import prepare_faces, to_images

    info = probe_video(clip)
    frames = list(iter_frames(clip, info))
    n = len(frames)
    out: dict[str, Any] = {"frames": n}

    def clock(name: str, work: Callable[[], object], count: int = n) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out[name] = {"wall_ms": round(1000 * wall / count, 3), "cpu_ms": round(1000 * cpu / count, 3)}
        ms = out[name]
        print(
            f"stage {name:>18}: {ms['wall_ms']:>8.2f} ms wall, {ms['cpu_ms']:>8.2f} ms CPU a frame",
            flush=True,
        )

    clock("decode_cpu", lambda: sum(1 for _ in iter_frames(clip, info)))
    nvdec = video_decoder("nvdec")
    if nvdec is not None:
        clock("decode_nvdec", lambda: sum(1 for _ in iter_frames(clip, info, nvdec)))
    else:
        out["decode_nvdec"] = {"skipped": "NVDEC not usable here (see the decoder_cpu log line)"}
    tracked: list[Any] = []
    clock("track_haar_every5", lambda: tracked.extend(track_faces(iter(frames), HaarDetector())))
    boxes = [crop.box for _, crop in tracked]
    pairs = [(f, b) for f, b in zip(frames, boxes, strict=True) if b is not None]
    model = LipSyncModel.open(folder, providers=chain, precision=precision, trt_cache=state / "trt-cache")
    crops: list[np.ndarray] = []
    clock("crop", lambda: crops.extend(model.prepare(f, b) for f, b in pairs), max(len(pairs), 1))
    inputs: list[np.ndarray] = []
    clock("prepare_faces", lambda: inputs.append(prepare_faces(crops)), max(len(crops), 1))
    mel, _ = feeds(len(crops))
    images: list[np.ndarray] = []

    def infer() -> None:
        for i in range(0, len(crops), batch):
            images.extend(to_images(model.infer(mel[i : i + batch], inputs[0][i : i + batch])))

    model.infer(mel[:batch], inputs[0][:batch])
    short = {CPU: "cpu", CUDA: "cuda", TRT: "tensorrt"}.get(model.provider, model.provider)
    clock(f"model_{short}_{precision}", infer, max(len(crops), 1))
    pasted: list[np.ndarray] = []
    clock("paste_back", lambda: pasted.extend(paste_back(f, b, images[i]) for i, (f, b) in enumerate(pairs)))
    for codec in ("libx264", "h264_nvenc"):
        if not encoder_available(codec):
            out[f"encode_{codec}"] = {
                "skipped": "encoder does not open here (no NVENC unit: H100/H200 have none)"
            }
            continue

        def encode(codec: str = codec) -> None:
            with VideoEncoder(
                clip.with_name(f"enc-{codec}.mp4"), info.width, info.height, info.fps, None, codec=codec
            ) as enc:
                for frame in frames:
                    enc.write(frame)

        clock(f"encode_{codec}", encode)
    return out


# ---------------------------------------------------------------- whole renders, N workers per GPU


def render_worker(
    slot: int, gpus: list[int], args: dict[str, Any], ready: Any, go: Any, results: Any
) -> None:
    """One render worker process: open the model on its GPU, warm up, wait for the start, render."""
    from daemon.app import gpu_for_slot
    from daemon.render.faces import HaarDetector
    from daemon.render.pipeline import RenderSettings, VideoRender, prepare_audio

    gpu = gpu_for_slot(gpus, slot)
    work = Path(args["work"])
    model = LipSyncModel.open(
        Path(args["folder"]),
        providers=args["chain"],
        precision=args["precision"],
        device_id=gpu,
        trt_cache=Path(args["state"]) / "trt-cache",
    )
    model.infer(*feeds(4))
    audio = prepare_audio(Path(args["audio"]))
    settings = RenderSettings(batch_size=args["batch"], decoder=args["decoder"], preset=args["preset"])
    ready.put(slot)
    go.wait()
    started = time.perf_counter()
    frames, stages = 0, {"decode": 0.0, "detect": 0.0, "infer": 0.0, "model": 0.0, "encode": 0.0}
    for run in range(args["repeat"]):
        result = VideoRender(
            source=Path(args["clip"]),
            audio=audio,
            out_path=work / f"out-{slot}-{run}.mp4",
            model=model,
            detector=HaarDetector(),
            settings=settings,
            scratch_dir=work / "scratch",
            stop=threading.Event(),
        ).run()
        frames += result.frames
        for name, value in vars(result.stages).items():
            stages[name] += value
    results.put(
        {
            "slot": slot,
            "gpu": gpu,
            "frames": frames,
            "seconds": time.perf_counter() - started,
            "busy_s": stages,
        }
    )


def end_to_end(per_gpu: int, gpus: list[int], shared: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    count = per_gpu * max(len(gpus), 1)
    procs = [
        ctx.Process(target=render_worker, args=(s, gpus, shared, ready, go, results)) for s in range(count)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=900)  # TensorRT's first build can take minutes; later workers load the cache
    started = time.perf_counter()
    go.set()
    done = [results.get(timeout=3600) for _ in procs]
    wall = time.perf_counter() - started
    for p in procs:
        p.join()
    frames = sum(d["frames"] for d in done)
    busy = {k: round(1000 * sum(d["busy_s"][k] for d in done) / max(frames, 1), 2) for k in done[0]["busy_s"]}
    row = {"workers_per_gpu": per_gpu, "workers": count, "frames": frames, "fps": round(frames / wall, 1)}
    row["busy_ms_per_frame"] = busy  # stage thread busy time (wall, not CPU), summed over workers
    print(
        f"end to end {per_gpu} per GPU ({count} workers): {row['fps']} frames/s; busy ms a frame {busy}",
        flush=True,
    )
    return row


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--json", type=Path)
    p.add_argument("--seconds", type=float, default=10.0, help="length of the 1080p test clip")
    p.add_argument("--size", default="1920x1080")
    p.add_argument("--precisions", type=lambda s: s.split(","), default=["fp16", "fp32"])
    p.add_argument("--model-batches", type=ints, default=[64, 128, 256])
    p.add_argument("--cpu-batches", type=ints, default=[16])
    p.add_argument("--model-seconds", type=float, default=3.0)
    p.add_argument("--workers-per-gpu", type=ints, default=[1, 2, 4])
    p.add_argument("--gpus", type=ints, default=[0])
    p.add_argument("--batch", type=int, default=16, help="render.batch_size for the whole renders")
    p.add_argument("--repeat", type=int, default=2, help="renders of the clip per worker")
    p.add_argument("--decoder", default="auto", choices=["auto", "cpu", "nvdec"])
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--cpu-only", action="store_true", help="leave the GPU providers out")
    p.add_argument(
        "--quick", action="store_true", help="a short run: 1 s at 640x360, 1 worker, small batches"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.size, args.model_seconds, args.repeat = 1.0, "640x360", 0.5, 1
        args.model_batches, args.cpu_batches, args.workers_per_gpu = [16], [8], [1]
    return args


def main(argv: list[str] | None = None) -> int:
    from daemon.samples import speech_like, write_audio, write_face_clip

    args = parse_args(argv)
    if hasattr(ort, "preload_dlls") and CUDA in ort.get_available_providers():
        ort.preload_dlls()
    work = Path(tempfile.mkdtemp(prefix="gpuprofile-"))
    width, height = (int(x) for x in args.size.split("x"))
    clip = write_face_clip(work / "clip.mp4", args.seconds, 25, (width, height))
    audio = write_audio(work / "speech.wav", speech_like(args.seconds))
    (work / "models").mkdir()
    folder = make_model(work / "models")
    state = work / "state"
    best = choose_providers("cpu" if args.cpu_only else "tensorrt")[0]
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "providers": best,
    }
    result["model"] = model_rows(folder, state, args)
    result["stages"] = stage_rows(clip, folder, state, best, args.precisions[0], max(args.model_batches))
    shared = {
        "work": str(work),
        "folder": str(folder),
        "state": str(state),
        "clip": str(clip),
        "audio": str(audio),
        "chain": best,
        "precision": args.precisions[0],
        "batch": args.batch,
        "decoder": args.decoder,
        "preset": args.preset,
        "repeat": args.repeat,
    }
    gpus = args.gpus if best[0] != CPU else []
    result["end_to_end"] = [end_to_end(k, gpus, shared) for k in args.workers_per_gpu]
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
