"""GPU-side choices checked on a CPU: provider options, the TensorRT cache folder's publish/sweep rules,
and IO binding giving the same outputs as session.run."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from daemon.app import gpu_for_slot
from daemon.render import accel
from daemon.render.accel import CPU, CUDA, TENSORRT, TrtPlan, provider_options
from daemon.render.model import LipSyncModel, _trt_build
from daemon.render.modelspec import ModelSpec
from tests.unit.test_model import dummy_expected, random_inputs, write_dummy


def test_cuda_options_name_the_device_and_let_cudnn_search() -> None:
    assert provider_options(CUDA, 3) == {
        "device_id": "3",
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
    }
    assert provider_options(CPU, 3) == {}


def test_tensorrt_options_put_both_caches_in_the_plan_folder(tmp_path: Path) -> None:
    profile = accel.batch_profile({"mel": (1, 80, 16), "face": (6, 96, 96)}, 64, 256)
    options = provider_options(TENSORRT, 1, TrtPlan(tmp_path / "f", fp16=True, profile=profile))
    assert options["device_id"] == "1"
    assert options["trt_engine_cache_enable"] == options["trt_timing_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path / "f")
    assert options["trt_fp16_enable"] == "True"
    assert options["trt_profile_min_shapes"] == "mel:1x1x80x16,face:1x6x96x96"
    assert options["trt_profile_opt_shapes"] == "mel:64x1x80x16,face:64x6x96x96"
    assert options["trt_profile_max_shapes"] == "mel:256x1x80x16,face:256x6x96x96"
    assert all(isinstance(v, str) for v in options.values())
    fp32 = provider_options(TENSORRT, 0, TrtPlan(tmp_path, fp16=False))
    assert fp32["trt_fp16_enable"] == "False"
    assert "trt_profile_min_shapes" not in fp32
    assert "trt_engine_cache_enable" not in provider_options(TENSORRT, 0)  # no plan, no cache


def test_cache_folder_changes_with_the_model_file(tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"a")
    first = accel.cache_folder(tmp_path / "trt", "w2l", "fp16", onnx_file)
    assert first.parent == tmp_path / "trt" / "w2l"
    assert first.name.startswith("fp16-")
    assert accel.cache_folder(tmp_path / "trt", "w2l", "fp16", onnx_file) == first
    onnx_file.write_bytes(b"bb")  # a re-import
    assert accel.cache_folder(tmp_path / "trt", "w2l", "fp16", onnx_file) != first


def test_a_build_is_published_whole_and_only_once(tmp_path: Path) -> None:
    final = tmp_path / "w2l" / "fp16-abc"
    building = accel.build_folder(final)
    (building / "engine.engine").write_bytes(b"x" * 100)
    assert not accel.is_ready(final)
    assert accel.publish(building, final)
    assert accel.is_ready(final)
    assert (final / "engine.engine").read_bytes() == b"x" * 100
    other = accel.build_folder(final)  # a second worker that built the same engine meanwhile
    assert not accel.publish(other, final)
    assert not list(final.parent.glob(".*publish*"))


def test_a_crash_mid_build_leaves_nothing_that_loads(tmp_path: Path) -> None:
    """A process killed while TensorRT wrote its engine: its build folder is removed at the next start and
    the final folder never appeared; a folder without READY (torn by hand) is removed too."""
    root = tmp_path / "w2l"
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead = root / f".fp16-abc.building-{int(child.stdout)}"
    dead.mkdir(parents=True)
    (dead / "half.engine").write_bytes(b"trunc")
    mine = accel.build_folder(root / "fp16-def")
    torn = root / "fp32-123"
    torn.mkdir()
    assert set(accel.sweep_stale_builds(root)) == {dead, torn}
    assert mine.is_dir()
    assert not (root / "fp16-abc").exists()


def test_trt_build_uses_a_published_folder_else_its_own(tmp_path: Path) -> None:
    write_dummy(tmp_path / "m", "batch")
    spec = ModelSpec.load(tmp_path / "m")
    path = spec.onnx_path(tmp_path / "m")
    first = _trt_build(spec, path, "fp16", tmp_path / "trt")
    assert first.building is not None
    assert first.plan.cache_dir == first.building
    assert first.plan.fp16
    assert first.plan.profile is not None  # a dynamic batch gets one profile up to the largest batch
    assert accel.publish(first.building, first.final)
    fixed = tmp_path / "fixed"
    write_dummy(fixed, 4)
    fixed_spec = ModelSpec.load(fixed)
    fixed_spec = dataclasses.replace(fixed_spec, batch=None)  # only the file says its batch
    assert _trt_build(fixed_spec, fixed_spec.onnx_path(fixed), "fp32", tmp_path / "trt").plan.profile is None
    again = _trt_build(spec, path, "fp16", tmp_path / "trt")
    assert again.building is None
    assert again.plan.cache_dir == first.final


@pytest.mark.parametrize("batch", [4, "batch"])
def test_io_binding_gives_what_session_run_gives(tmp_path: Path, batch: int | str) -> None:
    write_dummy(tmp_path, batch)
    plain = LipSyncModel.open(tmp_path, providers=[CPU], threads=1)
    assert plain._bound is None  # CPU: the plain call
    spec = ModelSpec.load(tmp_path)
    session = ort.InferenceSession(str(spec.onnx_path(tmp_path)), providers=[CPU])
    bound = LipSyncModel(session, spec, io_binding=True)
    for count in (1, 4, 7):  # the tail batch gets its own pre-allocated output
        mel, face = random_inputs(count, seed=count)
        expected = plain.infer(mel, face)
        np.testing.assert_array_equal(bound.infer(mel, face), expected)
        np.testing.assert_allclose(expected, dummy_expected(mel, face), atol=1e-5)
    first = bound.infer(*random_inputs(4, seed=1))
    bound.infer(*random_inputs(4, seed=2))
    np.testing.assert_array_equal(first, plain.infer(*random_inputs(4, seed=1)))  # not overwritten


def test_io_binding_per_thread(tmp_path: Path) -> None:
    write_dummy(tmp_path, "batch")
    spec = ModelSpec.load(tmp_path)
    session = ort.InferenceSession(str(spec.onnx_path(tmp_path)), providers=[CPU])
    model = LipSyncModel(session, spec, io_binding=True)
    errors: list[str] = []

    def work(seed: int) -> None:
        for i in range(20):
            mel, face = random_inputs(3, seed=seed * 100 + i)
            if not np.allclose(model.infer(mel, face), dummy_expected(mel, face), atol=1e-5):
                errors.append(f"thread {seed} run {i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_io_binding_only_on_gpu_providers() -> None:
    assert accel.binds_io(CUDA)
    assert accel.binds_io(TENSORRT)
    assert not accel.binds_io(CPU)


@pytest.mark.parametrize(
    ("gpus", "slots", "devices"), [([0, 1], 4, [0, 1, 0, 1]), ([3], 3, [3, 3, 3]), ([], 2, [0, 0])]
)
def test_workers_per_gpu_is_workers_times_gpus(gpus: list[int], slots: int, devices: list[int]) -> None:
    """render.workers = k x len(render.gpus) puts k workers on every GPU, round robin."""
    assert [gpu_for_slot(gpus, s) for s in range(slots)] == devices
    for gpu in gpus:
        assert devices.count(gpu) == slots // len(gpus)


def test_pid_of_this_process_is_alive() -> None:
    assert accel._alive(os.getpid())


@pytest.mark.filterwarnings("ignore:Specified provider 'TensorrtExecutionProvider':UserWarning")
def test_tensorrt_asked_but_not_loaded_publishes_nothing(tmp_path: Path) -> None:
    """This onnxruntime has no TensorRT: the session runs on the CPU and no empty folder is marked READY
    (a later real TensorRT session would then write its engine into a published folder)."""
    if TENSORRT in ort.get_available_providers():
        pytest.skip("TensorRT is available here")
    write_dummy(tmp_path / "m", "batch")
    model = LipSyncModel.open(tmp_path / "m", providers=[TENSORRT, CPU], trt_cache=tmp_path / "trt")
    assert model.provider == CPU
    assert model.largest_batch is None
    assert [p for p in (tmp_path / "trt").rglob("*") if p.is_dir() and p.parent != tmp_path / "trt"] == []
    mel, face = random_inputs(3)
    np.testing.assert_allclose(model.infer(mel, face), dummy_expected(mel, face), atol=1e-5)
