"""The models directory: which models exist, and one open ONNX session per model, shared by all jobs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from daemon.render.baseline import ensure_baseline
from daemon.render.family import LipSyncFamily
from daemon.render.model import LipSyncModel, choose_providers
from daemon.render.modelspec import BASELINE, SPEC_NAME, ModelSpec
from daemon.render.modelspec import available_models as available_models  # where it was before
from daemon.render.musetalk import MuseTalkModel
from daemon.render.openvino_runtime import OPENVINO
from daemon.render.precision import GPU_PROVIDERS, Choice, choose, cpu_flags

log = structlog.get_logger(__name__)

# kind (model.json) -> the family adapter that opens it; the only place that knows the families
OPENERS: dict[str, Callable[..., LipSyncFamily]] = {
    "baseline": LipSyncModel.open,
    "wav2lip": LipSyncModel.open,
    "musetalk": MuseTalkModel.open,
}
RENDERABLE = frozenset(OPENERS)


PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ModelEntry:
    """One model as `model list` and `doctor` show it."""

    name: str
    family: str  # model.json's kind: baseline, wav2lip, musetalk
    variants: tuple[str, ...]  # precisions `render.precision` may pick; () for the weightless baseline
    source: str = ""  # the file or folder it was imported from

    @property
    def variants_text(self) -> str:
        return ",".join(self.variants) if self.variants else "built-in"


def model_entries(models_dir: Path) -> list[ModelEntry]:
    """Every model by name with its family and variants; the baseline even before it is written.
    A spec that cannot be read is logged and left out."""
    entries = {BASELINE: ModelEntry(BASELINE, BASELINE, ())}
    for name in available_models(models_dir):
        folder = models_dir / name
        if not (folder / SPEC_NAME).is_file():
            continue
        try:
            spec = ModelSpec.load(folder)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("model_spec_unreadable", folder=str(folder), error=str(exc))
            continue
        entries[name] = ModelEntry(name, spec.kind, _variants(spec), spec.source)
    return sorted(entries.values(), key=lambda entry: entry.name)


def _variants(spec: ModelSpec) -> tuple[str, ...]:
    """The precisions a model can render in: for a multi-graph model (MuseTalk), those every graph has."""
    if spec.kind == BASELINE:
        return ()
    if spec.graphs:
        have = set.intersection(*(set(files) for files in spec.graphs.values()))
    else:
        have = {spec.precision, *spec.variants}
    return tuple(sorted(have, key=lambda p: PRECISIONS.index(p) if p in PRECISIONS else len(PRECISIONS)))


class ModelPool:
    """Opens each model once, on first use. The baseline is (re)generated if missing or out of date."""

    def __init__(
        self,
        models_dir: Path,
        *,
        providers: str,
        precision: str | None,
        threads: int,
        device_id: int = 0,
        trt_cache: Path | None = None,
    ):
        self.models_dir = models_dir
        self.providers, self.provider_reason = choose_providers(providers)
        if self.providers[0] in GPU_PROVIDERS:
            _preload_cuda_libraries()
        self.precision = precision
        self.threads = threads
        self.device_id = device_id
        self.trt_cache = trt_cache  # <paths.state>/trt-cache: TensorRT engines built once, kept across starts
        self._open: dict[str, LipSyncFamily] = {}
        self._lock = threading.Lock()

    @property
    def onnxruntime_providers(self) -> list[str]:
        """The providers for onnxruntime sessions (the face detector, MuseTalk): OpenVINO is not one."""
        return [p for p in self.providers if p != OPENVINO]

    def get(self, name: str) -> LipSyncFamily:
        with self._lock:
            if name not in self._open:
                self._open[name] = self._load(name)
            return self._open[name]

    def _load(self, name: str) -> LipSyncFamily:
        folder = self.models_dir / name
        if name == BASELINE:
            ensure_baseline(folder)  # an upgrade brings the new look without deleting anything
        if not (folder / SPEC_NAME).exists():
            raise LookupError(f"no model named {name!r} in {self.models_dir}; see `lipsyncd model list`")
        opener = OPENERS[_renderable_kind(name, folder)]
        choice = self._precision(name, folder)
        # the engine cache is wired for the one-graph families; MuseTalk's four graphs build at each start
        cache = {"trt_cache": self.trt_cache} if opener == LipSyncModel.open and self.trt_cache else {}
        providers = self.providers if takes_openvino(opener, choice) else self.onnxruntime_providers
        model: LipSyncFamily = opener(
            folder,
            providers=providers,
            precision=choice.precision,
            threads=self.threads,
            device_id=self.device_id,
            **cache,
        )
        log.info(
            "model_loaded",
            model=name,
            provider=model.provider,
            reason=self.provider_reason,
            precision=choice.precision or "model's own",
            precision_reason=choice.reason,
        )
        return model

    def _precision(self, name: str, folder: Path) -> Choice:
        if name == BASELINE:
            return Choice(None, "the built-in baseline has one precision")
        return precision_choice(ModelSpec.load(folder), self.precision, self.providers[0])


def precision_choice(spec: ModelSpec, setting: str | None, provider: str) -> Choice:
    """The variant to open (None: the spec's own) and why: render.precision, or auto's choice."""
    if setting != "auto":
        return Choice(setting, f"render.precision is {setting or 'null (as imported)'}")
    return choose(spec, provider, cpu_flags())


def takes_openvino(opener: Any, choice: Choice) -> bool:
    """Whether the model gets OpenVINO when it is the provider: the one-graph families only (MuseTalk's four
    graphs are not wired to it; no error under OpenVINO is measured for them), and not an int8 that auto
    kept on onnxruntime. (`==`: a bound method is a new object at each lookup, so `is` never holds.)"""
    return bool(opener == LipSyncModel.open) and not choice.onnxruntime_only


def _renderable_kind(name: str, folder: Path) -> str:
    kind = ModelSpec.load(folder).kind
    if kind not in RENDERABLE:
        raise LookupError(f"model {name!r} in {folder} is of kind {kind!r}, which this version cannot render")
    return kind


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* wheels only once they are preloaded (1.21+)."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # noqa: BLE001 - the session will say what is missing, more precisely
            log.warning("cuda_preload_failed", error=str(exc))
