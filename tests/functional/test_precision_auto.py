"""`render.precision: auto` end to end on a tiny Wav2Lip-style ONNX file: a plain import makes the int8
variant on a VNNI CPU and stores its error; opening with auto picks it and the model_loaded line says why;
an error over the bound keeps fp32; doctor says the same, one line per model.

The CPU flags are injected (LIPSYNCD_CPU_FLAGS), so these pass on any CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnxruntime as ort
import pytest
import structlog
from structlog.testing import capture_logs

from daemon.cli import EXIT_OK, main
from daemon.config import Config, PathsConfig, RenderConfig
from daemon.doctor import _precisions, _providers
from daemon.modelimport import import_model
from daemon.modelimport.calibration import batches
from daemon.render import openvino_runtime
from daemon.render.model import LipSyncModel
from daemon.render.modelspec import SPEC_NAME, ModelSpec
from daemon.render.precision import CPU_FLAGS_ENV, MAX_MEAN_ABS_ERROR
from daemon.render.registry import OPENERS, ModelPool
from daemon.samples import speech_like, write_audio, write_face_clip
from tests.functional.test_onnx_import import dummy_wav2lip
from tests.functional.test_pipeline import render


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/tiny, imported without flags on a CPU that says it has avx512_vnni (and no CUDA)."""
    root = tmp_path_factory.mktemp("auto")
    src = dummy_wav2lip(root / "tiny.onnx", batch=4, out_name="image")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CPU_FLAGS_ENV, "sse2 avx2 avx512_vnni")
        import_model(src, root / "models")
    return root / "models"


def loaded(models: Path, flags: str, monkeypatch: pytest.MonkeyPatch) -> MutableMapping[str, Any]:
    monkeypatch.setenv(CPU_FLAGS_ENV, flags)
    pool = ModelPool(models, providers="cpu", precision="auto", threads=1)
    with capture_logs() as logs:
        pool.get("tiny")
    return next(line for line in logs if line["event"] == "model_loaded")


def test_a_plain_import_on_a_vnni_cpu_makes_int8_and_stores_its_error(models: Path) -> None:
    spec = json.loads((models / "tiny" / SPEC_NAME).read_text())
    assert spec["variants"] == {"int8": "model.int8.onnx"}  # no fp16: no GPU provider in this build
    assert 0 < spec["checks"]["int8"]["mean_abs_error"] < spec["checks"]["int8"]["max_abs_error"]


def test_auto_picks_int8_and_the_log_line_says_why(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = loaded(models, "avx2 avx512_vnni", monkeypatch)
    assert line["precision"] == "int8"
    assert "this CPU has avx512_vnni" in str(line["precision_reason"])


def test_auto_keeps_fp32_without_vnni(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = loaded(models, "sse2 avx2", monkeypatch)
    assert line["precision"] == "fp32"
    assert "none of amx_int8, avx512_vnni, avx_vnni" in str(line["precision_reason"])


def test_an_int8_error_over_the_bound_keeps_fp32(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "models"
    (copy / "tiny").mkdir(parents=True)
    for file in (models / "tiny").iterdir():
        (copy / "tiny" / file.name).write_bytes(file.read_bytes())
    spec = json.loads((copy / "tiny" / SPEC_NAME).read_text())
    spec["checks"]["int8"]["mean_abs_error"] = 0.02
    (copy / "tiny" / SPEC_NAME).write_text(json.dumps(spec))
    line = loaded(copy, "avx512_vnni", monkeypatch)
    assert line["precision"] == "fp32"
    assert "is 0.0200 > 0.0039" in str(line["precision_reason"])
    doctor = _precisions(Config(paths=PathsConfig(models=copy), render=RenderConfig(providers="cpu")))
    assert [(c.what, c.ok) for c in doctor] == [("precision tiny", True)]
    assert "auto picks fp32" in doctor[0].detail


def test_a_model_imported_before_openvino_keeps_running_int8_in_onnxruntime(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade must not slow an imported model down: with no int8 error stored under OpenVINO, the
    int8 that onnxruntime runs soundly is kept there, and the line says to import again for OpenVINO."""
    copy = tmp_path / "models"
    (copy / "tiny").mkdir(parents=True)
    for file in (models / "tiny").iterdir():
        (copy / "tiny" / file.name).write_bytes(file.read_bytes())
    spec = json.loads((copy / "tiny" / SPEC_NAME).read_text())
    spec["checks"] = {k: v for k, v in spec["checks"].items() if not k.endswith("@openvino")}
    (copy / "tiny" / SPEC_NAME).write_text(json.dumps(spec))
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx512_vnni")
    pool = ModelPool(copy, providers="openvino", precision="auto", threads=1)
    with capture_logs() as logs:
        pool.get("tiny")
    line = next(line for line in logs if line["event"] == "model_loaded")
    assert (line["precision"], line["provider"]) == ("int8", "CPUExecutionProvider")
    assert "in onnxruntime rather than OpenVINO" in line["precision_reason"]
    assert "import the model again with --overwrite" in line["precision_reason"]
    config = Config(paths=PathsConfig(models=copy), render=RenderConfig(providers="openvino"))
    assert _precisions(config)[0].detail.endswith("runs in onnxruntime's CPU provider")
    # render.precision named: the model opens in OpenVINO as asked, and doctor says where it runs
    named = ModelPool(copy, providers="openvino", precision="int8", threads=1)
    with capture_logs() as logs:
        named.get("tiny")
    line = next(line for line in logs if line["event"] == "model_loaded")
    assert (line["precision"], line["provider"]) == ("int8", openvino_runtime.OPENVINO)
    int8 = Config(paths=PathsConfig(models=copy), render=RenderConfig(providers="openvino", precision="int8"))
    assert _precisions(int8)[0].detail.endswith("; runs in OpenVINO)")


def test_doctor_says_what_auto_picks_for_each_model(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx512_vnni")
    config = Config(paths=PathsConfig(models=models), render=RenderConfig(providers="cpu"))
    (check,) = _precisions(config)
    assert check.what == "precision tiny"
    assert check.detail.startswith("auto picks int8: this CPU has avx512_vnni")
    fp32 = RenderConfig(providers="cpu", precision="fp32")
    explicit = Config(paths=PathsConfig(models=models), render=fp32)
    assert _precisions(explicit)[0].detail.startswith("render.precision is fp32 (auto picks int8")


def test_a_plain_import_without_vnni_makes_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "sse2 avx2")
    report = import_model(dummy_wav2lip(tmp_path / "plain.onnx", out_name="image"), tmp_path / "models")
    assert isinstance(report.spec, ModelSpec)
    assert report.spec.variants == {}
    assert report.variants == ()


@pytest.mark.parametrize(
    ("flags", "options", "made"),
    [
        ("avx512_vnni", ["--no-variants"], {}),  # skipped although auto would pick int8 here
        ("sse2 avx2", ["--int8"], {"int8": "model.int8.onnx"}),  # forced although auto would not pick it
    ],
)
def test_cli_flags_skip_or_force_variants(
    flags: str, options: list[str], made: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, flags)
    src = dummy_wav2lip(tmp_path / "tiny.onnx", batch=4, out_name="image")
    config = tmp_path / "lipsyncd.yaml"
    paths = {"models": str(tmp_path / "models"), "state": str(tmp_path / "state")}
    config.write_text(json.dumps({"paths": paths}))  # JSON is YAML
    try:
        assert main(["model", "import", str(src), *options, "--config", str(config)]) == EXIT_OK
    finally:
        structlog.reset_defaults()  # main() pointed structlog at pytest's captured stderr
    assert ModelSpec.load(tmp_path / "models" / "tiny").variants == made


# --- OpenVINO: the CPU runtime when the openvino package is installed --------------------------------


def test_a_plain_import_stores_the_int8_error_under_openvino_too(models: Path) -> None:
    checks = ModelSpec.load(models / "tiny").checks
    assert 0 < checks["int8@openvino"]["mean_abs_error"] <= MAX_MEAN_ABS_ERROR
    assert checks["fp32@openvino"]["mean_abs_error"] < 1e-5  # the same graph, in another runtime


def test_openvino_runs_the_int8_within_the_bound_of_onnxruntimes_fp32(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2 avx512_vnni")
    pool = ModelPool(models, providers="auto", precision="auto", threads=1)
    with capture_logs() as logs:
        model = pool.get("tiny")
    line = next(line for line in logs if line["event"] == "model_loaded")
    assert (line["provider"], line["precision"]) == ("OpenVINO", "int8")
    assert str(line["reason"]).endswith("using OpenVINO on the CPU (the openvino package is installed)")
    assert "int8 variant's mean error under OpenVINO against fp32" in str(line["precision_reason"])
    assert isinstance(model, LipSyncModel)
    fp32 = ort.InferenceSession(str(models / "tiny" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = batches(16, 4, 2000, ("mel", "face"))  # the importer's held-out inputs
    diffs = [np.abs(model.infer(f["mel"], f["face"]) - fp32.run(None, f)[0]).mean() for f in feeds]
    assert 0 < float(np.mean(diffs)) <= MAX_MEAN_ABS_ERROR  # > 0: the int8 file ran, not fp32


def test_a_render_through_the_pipeline_under_openvino_int8(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx512_vnni")
    video = write_face_clip(tmp_path / "clip.mp4", 1.0, 25)
    audio = write_audio(tmp_path / "a.wav", speech_like(1.0))
    outputs = {}
    for providers in ("openvino", "cpu"):
        model = ModelPool(models, providers=providers, precision="auto", threads=1).get("tiny")
        assert isinstance(model, LipSyncModel)
        (tmp_path / providers).mkdir()
        out, result = render(tmp_path / providers, model, video, audio)
        assert (result.frames, result.faceless_frames) == (25, 0)
        outputs[model.provider] = np.stack(list(frames(out)))
    # OpenVINO's int8 render looks like onnxruntime's int8 render: within two 8-bit levels on average
    diff = np.abs(outputs["OpenVINO"].astype(int) - outputs["CPUExecutionProvider"].astype(int)).mean()
    assert diff < 2


def frames(path: Path) -> Iterator[np.ndarray]:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="bgr24")


def test_doctor_names_the_runtime(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx512_vnni")
    (check,) = _precisions(
        Config(paths=PathsConfig(models=models), render=RenderConfig(providers="openvino"))
    )
    assert check.detail.startswith(
        "auto picks int8: this CPU has avx512_vnni and the int8 variant's mean error"
    )
    assert check.detail.endswith("; runs in OpenVINO")


def test_musetalk_stays_on_onnxruntime_under_openvino(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ModelSpec(name="mt", kind="musetalk").save(tmp_path / "mt")
    asked: list[list[str]] = []

    def opener(folder: Path, *, providers: list[str], **_: Any) -> Any:
        asked.append(providers)
        return type("Opened", (), {"provider": providers[0]})()

    monkeypatch.setitem(OPENERS, "musetalk", opener)
    pool = ModelPool(tmp_path, providers="openvino", precision="auto", threads=1)
    assert pool.providers == ["OpenVINO", "CPUExecutionProvider"]
    pool.get("mt")
    assert asked == [["CPUExecutionProvider"]]  # and the face detector gets the same list
    assert pool.onnxruntime_providers == ["CPUExecutionProvider"]


def test_doctor_names_openvino_and_fails_when_asked_for_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (check,) = _providers(Config(render=RenderConfig(providers="openvino")))
    assert check.ok
    assert "; using OpenVINO (OpenVINO requested); openvino 20" in check.detail
    monkeypatch.setattr(openvino_runtime, "available", lambda: False)
    (check,) = _providers(Config(render=RenderConfig(providers="openvino")))
    assert not check.ok
    assert "the openvino package does not import (pip install openvino); using CPU" in check.detail
