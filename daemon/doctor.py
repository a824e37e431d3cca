"""`lipsyncd doctor`: what this machine offers and what to fix, one line per check."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon.config import Config


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str
    warn: bool = False  # works, but probably not as meant: said, without failing the doctor

    @property
    def mark(self) -> str:
        return "FIX" if not self.ok else "WARN" if self.warn else "OK "


def run_checks(config: Config) -> list[Check]:
    checks: list[Callable[[Config], list[Check]]] = [
        _gpus,
        _providers,
        _encoders,
        _models,
        _folders,
        _storage,
        _links,
    ]
    return [result for check in checks for result in _safely(check, config)]


def _safely(check: Callable[[Config], list[Check]], config: Config) -> list[Check]:
    try:
        return check(config)
    except Exception as exc:  # noqa: BLE001 - a broken check reports itself; the others still run
        return [Check(check.__name__.strip("_"), False, f"the check itself failed: {exc}")]


def _gpus(config: Config) -> list[Check]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [Check("GPU", True, "none found (nvidia-smi absent): rendering runs on the CPU")]
    out = subprocess.run(
        [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True
    )
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not names:
        return [
            Check("GPU", False, f"nvidia-smi failed ({out.stderr.strip()[:120]}): check the NVIDIA driver")
        ]
    return [Check(f"GPU {i}", True, name) for i, name in enumerate(names)]


def _providers(config: Config) -> list[Check]:
    import onnxruntime as ort

    from daemon.render.model import choose_providers

    available = ort.get_available_providers()
    chosen, reason = choose_providers(config.render.providers)
    wants_gpu = config.render.providers in ("cuda", "tensorrt")
    ok = not wants_gpu or "CUDAExecutionProvider" in available
    detail = f"onnxruntime {ort.__version__}: {', '.join(available)}; using {chosen[0]} ({reason})"
    if not ok:
        detail += ". Install onnxruntime-gpu (pip install 'lipsyncd[gpu]') matching your CUDA"
    return [Check("execution providers", ok, detail)]


def _encoders(config: Config) -> list[Check]:
    from daemon.render.media import encoder_available

    checks = [
        Check("encoder libx264", encoder_available("libx264"), "H.264 software encoder (PyAV's FFmpeg)")
    ]
    nvenc = encoder_available("h264_nvenc")
    note = "NVENC usable" if nvenc else "NVENC not usable here (no NVIDIA encoder unit; H100/H200 have none)"
    checks.append(Check("encoder h264_nvenc", nvenc or config.render.encoder != "h264_nvenc", note))
    return checks


def _models(config: Config) -> list[Check]:
    from daemon.render.registry import model_entries

    entries = model_entries(config.models_dir)
    ok = config.render.model in {entry.name for entry in entries}
    listed = ", ".join(f"{e.name} ({e.family} {e.variants_text})" for e in entries)
    detail = f"{listed}; default {config.render.model!r}"
    if not ok:
        detail += " is missing: run `lipsyncd model import` or change render.model"
    return [Check("models", ok, detail)]


def _folders(config: Config) -> list[Check]:
    checks = [_writable("inbox", config.inbox_dir), _writable("outputs", config.outputs_dir)]
    state = _writable("state", config.state_dir)
    if state.ok and config.state_dir.exists() and config.state_dir.stat().st_mode & 0o007:
        state = Check(
            "state", False, f"{config.state_dir} is readable by everyone: chmod o-rwx it (keys live there)"
        )
    return [*checks, state]


def _writable(what: str, folder: Path) -> Check:
    if not folder.exists():
        return Check(what, True, f"{folder} will be created on first start")
    if not os.access(folder, os.W_OK | os.X_OK):
        return Check(what, False, f"{folder} is not writable by this user: fix its owner or mode")
    return Check(what, True, str(folder))


def _storage(config: Config) -> list[Check]:
    if config.storage.endpoint_url is None:
        from daemon.distribute.embedded import find_weed

        s = config.storage
        port = s.embedded_port or "PORT (picked on first start, then kept)"
        at = f"{s.embedded_listen}:{port}"
        detail = f"embedded SeaweedFS ({find_weed()}), S3 API on {at}"
        return [Check("storage", True, f"{detail}, run by `lipsyncd storage` (else the upload watcher)")]
    from botocore.exceptions import BotoCoreError, ClientError

    from daemon.distribute.s3 import make_client
    from daemon.distribute.storage import storage_settings

    client = make_client(storage_settings(config, None))
    try:
        client.head_bucket(Bucket=config.storage.bucket)
    except (BotoCoreError, ClientError) as exc:
        return [
            Check("storage", False, f"{config.storage.endpoint_url} bucket {config.storage.bucket!r}: {exc}")
        ]
    return [
        Check("storage", True, f"{config.storage.endpoint_url} bucket {config.storage.bucket!r} reachable")
    ]


def _links(config: Config) -> list[Check]:
    """Who can open the links; a loopback address works only on this machine, so say so."""
    from daemon.distribute.reach import reach

    where = reach(config)
    return [Check("links", True, where.sentence(), warn=where.local_only)]
