"""`render.precision: auto`: the choice from provider, CPU flags and the spec's stored errors; its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.render.modelspec import ModelSpec
from daemon.render.precision import CPU_FLAGS_ENV, MAX_MEAN_ABS_ERROR, choose, cpu_flags

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
VNNI = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
AVX2 = frozenset({"sse4_2", "avx2", "fma"})


def spec(kind: str = "wav2lip", **errors: float | None) -> ModelSpec:
    """A spec with a variant per keyword; its stored mean error, or none stored when None."""
    variants = {p: f"model.{p}.onnx" for p in errors}
    checks = {p: {"max_abs_error": 4 * e, "mean_abs_error": e} for p, e in errors.items() if e is not None}
    return ModelSpec(name="m", kind=kind, variants=variants, checks=checks)


def test_vnni_cpu_picks_int8_within_the_bound_and_says_why() -> None:
    choice = choose(spec(int8=0.0011, fp16=0.00001), CPU, VNNI)
    assert choice.precision == "int8"
    assert choice.reason == (
        "int8: this CPU has avx512_vnni and the int8 variant's mean error against fp32 is 0.0011 <= 0.0039"
    )


@pytest.mark.parametrize("flag", ["avx_vnni", "amx_int8"])
def test_other_int8_instructions_count_too(flag: str) -> None:
    choice = choose(spec(int8=0.001), CPU, AVX2 | {flag})
    assert (choice.precision, flag in choice.reason) == ("int8", True)


def test_cpu_without_vnni_stays_fp32_even_with_an_int8_variant() -> None:
    choice = choose(spec(int8=0.001), CPU, AVX2)
    assert choice.precision == "fp32"
    assert "none of amx_int8, avx512_vnni, avx_vnni" in choice.reason


def test_a_variant_over_the_bound_is_not_picked() -> None:
    choice = choose(spec(int8=0.02), CPU, VNNI)
    assert choice.precision == "fp32"
    assert "mean error against fp32 is 0.0200 > 0.0039" in choice.reason


def test_the_bound_is_one_8_bit_level_and_inclusive() -> None:
    assert pytest.approx(1 / 255) == MAX_MEAN_ABS_ERROR
    assert choose(spec(int8=MAX_MEAN_ABS_ERROR), CPU, VNNI).precision == "int8"
    assert choose(spec(int8=MAX_MEAN_ABS_ERROR * 1.01), CPU, VNNI).precision == "fp32"


def test_a_spec_from_an_older_import_without_errors_is_not_picked() -> None:
    choice = choose(spec(int8=None), CPU, VNNI)
    assert choice.precision == "fp32"
    assert "not stored" in choice.reason
    assert "import the model again" in choice.reason


def test_no_int8_variant_says_to_import_again() -> None:
    choice = choose(spec(fp16=0.0001), CPU, VNNI)
    assert choice.precision == "fp32"
    assert "has no int8 variant" in choice.reason


def test_gpu_provider_picks_fp16_within_the_bound_else_fp32() -> None:
    assert choose(spec(fp16=0.00002, int8=0.001), CUDA, VNNI).precision == "fp16"
    assert "CUDAExecutionProvider runs half precision" in choose(spec(fp16=0.00002), CUDA, VNNI).reason
    assert choose(spec(fp16=0.01), CUDA, VNNI).precision == "fp32"
    assert choose(spec(int8=0.001), CUDA, VNNI).precision == "fp32"  # int8 is slower on CUDA


def test_musetalk_stays_fp32_on_a_cpu_and_says_why() -> None:
    graphs = {"unet": {"fp32": "unet.onnx", "fp16": "unet.fp16.onnx"}}
    choice = choose(ModelSpec(name="mt", kind="musetalk", graphs=graphs), CPU, VNNI)
    assert choice.precision == "fp32"
    assert "int8 is not offered for MuseTalk" in choice.reason


def test_the_baseline_keeps_its_own() -> None:
    assert choose(ModelSpec(name="baseline", kind="baseline"), CPU, VNNI).precision is None


def test_cpu_flags_from_cpuinfo_or_the_test_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_vnni avx512_bf16\nbugs\t\t: spectre_v1\n")
    monkeypatch.delenv(CPU_FLAGS_ENV, raising=False)
    assert cpu_flags(info) == {"fpu", "sse2", "avx512_vnni", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2,amx_int8")
    assert cpu_flags(info) == {"avx2", "amx_int8"}


def test_old_spec_without_checks_still_loads(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text('{"name": "old", "kind": "wav2lip", "variants": {"int8": "x.onnx"}}')
    assert ModelSpec.load(tmp_path).checks == {}


# --- under OpenVINO: only an error measured under OpenVINO counts ------------------------------------

OPENVINO = "OpenVINO"


def under_openvino(int8: float | None, onnxruntime: float = 0.0005) -> ModelSpec:
    """A spec whose int8 was checked in onnxruntime (ONNXRUNTIME) and, unless None, in OpenVINO (INT8)."""
    checked = spec(int8=onnxruntime)
    if int8 is None:
        return checked
    ov = {"int8@openvino": {"max_abs_error": 4 * int8, "mean_abs_error": int8}}
    return ModelSpec(name="m", kind="wav2lip", variants=checked.variants, checks={**checked.checks, **ov})


def test_openvino_picks_int8_by_its_own_error_and_says_so() -> None:
    choice = choose(under_openvino(0.0012), OPENVINO, VNNI)
    assert choice.precision == "int8"
    assert choice.reason == (
        "int8: this CPU has avx512_vnni and the int8 variant's mean error under OpenVINO against fp32 "
        "is 0.0012 <= 0.0039"
    )


def test_openvino_over_the_bound_keeps_int8_in_onnxruntime_where_that_is_sound() -> None:
    """OpenVINO's own int8 error counts for OpenVINO; onnxruntime's sound int8 still beats any fp32."""
    choice = choose(under_openvino(0.02, onnxruntime=0.0005), OPENVINO, VNNI)
    assert (choice.precision, choice.onnxruntime_only) == ("int8", True)
    assert "in onnxruntime rather than OpenVINO" in choice.reason
    assert "under OpenVINO against fp32 is 0.0200 > 0.0039" in choice.reason
    both_over = choose(under_openvino(0.02, onnxruntime=0.03), OPENVINO, VNNI)
    assert (both_over.precision, both_over.onnxruntime_only) == ("fp32", False)
    assert "under OpenVINO against fp32 is 0.0200 > 0.0039" in both_over.reason


def test_openvino_without_a_stored_openvino_error_keeps_onnxruntime_int8_and_says_import_again() -> None:
    """A model imported before the openvino package was installed keeps the int8 it ran in before."""
    choice = choose(under_openvino(None), OPENVINO, VNNI)
    assert (choice.precision, choice.onnxruntime_only) == ("int8", True)
    assert "under OpenVINO against fp32 was not stored (imported without the openvino" in choice.reason
    assert "import the model again with --overwrite" in choice.reason
    no_checks = ModelSpec(name="m", kind="wav2lip", variants={"int8": "model.int8.onnx"})
    assert choose(no_checks, OPENVINO, VNNI).precision == "fp32"  # nothing measured at all


def test_openvino_on_a_cpu_without_vnni_stays_fp32() -> None:
    assert choose(under_openvino(0.001), OPENVINO, AVX2).precision == "fp32"
