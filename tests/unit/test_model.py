"""The ONNX runner (real onnxruntime, CPU), the face tensors, and the built-in baseline model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from skimage import data
from structlog.testing import capture_logs

from daemon.render import baseline as baseline_module
from daemon.render.baseline import JAW_DROP, TOP_STILL, ensure_baseline, write_baseline
from daemon.render.model import LipSyncModel, choose_providers, prepare_faces, to_images
from daemon.render.modelspec import ModelSpec

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def astronaut_crop() -> np.ndarray:
    image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    face: np.ndarray = cv2.resize(image[65:171, 176:272], (96, 96))
    return face


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> LipSyncModel:
    folder = tmp_path_factory.mktemp("baseline")
    write_baseline(folder)
    return LipSyncModel.open(folder, providers=CPU)


def flat_mel(levels: list[float]) -> np.ndarray:
    return np.stack([np.full((1, 80, 16), level, np.float32) for level in levels])


def dummy_model(batch: int | str, elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """image = face[:, 3:6] * 0.5 + mean(mel) per sample: each output depends only on its own inputs."""
    nodes = [
        helper.make_node("Slice", ["face", "starts", "ends", "axes"], ["ref"]),
        helper.make_node("Mul", ["ref", "half"], ["ref_half"]),
        helper.make_node("ReduceMean", ["mel"], ["level"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Add", ["ref_half", "level"], ["image"]),
    ]
    dtype = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    inits = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [3]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [6]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        onnx.numpy_helper.from_array(np.array(0.5, dtype), "half"),
    ]
    graph = helper.make_graph(
        nodes,
        "dummy",
        [
            helper.make_tensor_value_info("mel", elem, [batch, 1, 80, 16]),
            helper.make_tensor_value_info("face", elem, [batch, 6, 96, 96]),
        ],
        [helper.make_tensor_value_info("image", elem, [batch, 3, 96, 96])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def dummy_expected(mel: np.ndarray, face: np.ndarray) -> np.ndarray:
    out: np.ndarray = face[:, 3:6] * 0.5 + mel.mean(axis=(1, 2, 3), keepdims=True)
    return out


def random_inputs(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mel = rng.uniform(-4, 4, (count, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0, 1, (count, 6, 96, 96)).astype(np.float32)
    return mel, face


# --- providers -------------------------------------------------------------------------------------


def test_choose_providers_on_this_cpu_build() -> None:
    providers, reason = choose_providers("auto", openvino=False)
    assert providers == CPU
    assert reason == (
        "CUDAExecutionProvider not available in this onnxruntime build; "
        "using CPU (the openvino package is not installed)"
    )


def test_auto_picks_openvino_on_a_cpu_box_where_it_imports() -> None:
    providers, reason = choose_providers("auto", CPU, openvino=True)
    assert providers == ["OpenVINO", *CPU]
    assert reason.endswith("using OpenVINO on the CPU (the openvino package is installed)")
    assert choose_providers("cpu", CPU, openvino=True)[0] == CPU  # onnxruntime's CPU, asked for
    assert choose_providers("openvino", CPU, openvino=True) == (["OpenVINO", *CPU], "OpenVINO requested")
    providers, reason = choose_providers("openvino", CPU, openvino=False)
    assert providers == CPU
    assert "does not import (pip install openvino)" in reason


def test_a_gpu_provider_wins_over_openvino() -> None:
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", gpu, openvino=True)[0] == gpu[1:]
    assert choose_providers("tensorrt", gpu, openvino=True)[0] == gpu
    assert choose_providers("tensorrt", CPU, openvino=True)[0] == ["OpenVINO", *CPU]


def test_choose_providers_with_gpu_builds() -> None:
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", gpu)[0] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cuda", gpu)[0] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("tensorrt", gpu)[0] == gpu
    assert choose_providers("cpu", gpu)[0] == CPU
    providers, reason = choose_providers("tensorrt", gpu[1:])
    assert providers == gpu[1:]
    assert reason == "TensorrtExecutionProvider not available in this onnxruntime build; using CUDA"


def test_choose_providers_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown execution provider 'rocm'"):
        choose_providers("rocm")


# --- face tensors ----------------------------------------------------------------------------------


def test_prepare_faces_layout() -> None:
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(3)]
    stacked = prepare_faces(crops)
    assert stacked.shape == (3, 6, 96, 96)
    assert stacked.dtype == np.float32
    for i, crop in enumerate(crops):
        scaled = crop.astype(np.float32).transpose(2, 0, 1) / 255.0
        assert np.all(stacked[i, :3, 48:] == 0)
        np.testing.assert_allclose(stacked[i, :3, :48], scaled[:, :48], rtol=0, atol=1e-7)
        np.testing.assert_allclose(stacked[i, 3:], scaled, rtol=0, atol=1e-7)
    assert stacked[0, 0, 0, 0] == np.float32(crops[0][0, 0, 0]) / 255  # channel 0 stays B: no RGB swap


def test_to_images_round_trips_and_clips(astronaut_crop: np.ndarray) -> None:
    stacked = prepare_faces([astronaut_crop, astronaut_crop])
    images = to_images(stacked[:, 3:])
    assert len(images) == 2
    assert images[0].dtype == np.uint8
    assert images[0].shape == (96, 96, 3)
    assert np.array_equal(images[1], astronaut_crop)
    wild = np.full((1, 3, 96, 96), 1.3, np.float32)
    wild[0, 0] = -0.2
    clipped = to_images(wild)[0]
    assert clipped[..., 0].max() == 0
    assert clipped[..., 1].min() == 255


# --- the runner ------------------------------------------------------------------------------------


def write_dummy(folder: Path, batch: int | str, *, fp16: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(dummy_model(batch), folder / "model.onnx")
    variants = {}
    if fp16:
        onnx.save(dummy_model(batch, TensorProto.FLOAT16), folder / "model.fp16.onnx")
        variants = {"fp16": "model.fp16.onnx"}
    ModelSpec(
        name="dummy", kind="wav2lip", batch=batch if isinstance(batch, int) else None, variants=variants
    ).save(folder)


@pytest.mark.parametrize("count", [1, 4, 10])
def test_fixed_batch_model_is_chunked_and_padded(tmp_path: Path, count: int) -> None:
    write_dummy(tmp_path, 4)
    model = LipSyncModel.open(tmp_path, providers=CPU, threads=1)
    assert model.batch == 4
    mel, face = random_inputs(count)
    out = model.infer(mel, face)
    assert out.shape == (count, 3, 96, 96)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, dummy_expected(mel, face), atol=1e-5)


def test_fixed_batch_is_read_from_the_file_when_the_spec_omits_it(tmp_path: Path) -> None:
    onnx.save(dummy_model(4), tmp_path / "model.onnx")
    ModelSpec(name="dummy", kind="wav2lip").save(tmp_path)
    model = LipSyncModel.open(tmp_path, providers=CPU)
    assert model.batch == 4
    mel, face = random_inputs(6)
    np.testing.assert_allclose(model.infer(mel, face), dummy_expected(mel, face), atol=1e-5)


def test_fixed_batch_file_refuses_other_batches_so_padding_is_real(tmp_path: Path) -> None:
    import onnxruntime as ort

    onnx.save(dummy_model(4), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=CPU)
    mel, face = random_inputs(3)
    with pytest.raises(Exception, match="dimension"):
        session.run(None, {"mel": mel, "face": face})


def test_dynamic_model_runs_any_batch_in_one_go(tmp_path: Path) -> None:
    write_dummy(tmp_path, "batch")
    model = LipSyncModel.open(tmp_path, providers=CPU)
    assert model.batch is None
    mel, face = random_inputs(9)
    np.testing.assert_allclose(model.infer(mel, face), dummy_expected(mel, face), atol=1e-5)
    assert model.infer(mel[:0], face[:0]).shape == (0, 3, 96, 96)


def test_fp16_file_takes_and_gives_float32(tmp_path: Path) -> None:
    write_dummy(tmp_path, 4, fp16=True)
    model = LipSyncModel.open(tmp_path, providers=CPU, precision="fp16")
    mel, face = random_inputs(5)
    out = model.infer(mel, face)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, dummy_expected(mel, face), atol=2e-3)


def test_open_logs_the_provider_in_use(tmp_path: Path) -> None:
    write_dummy(tmp_path, "batch")
    with capture_logs() as logs:
        model = LipSyncModel.open(tmp_path, providers=CPU)
    assert model.provider == "CPUExecutionProvider"
    events = [e for e in logs if e["event"] == "execution_provider"]
    assert len(events) == 1
    assert events[0]["provider"] == "CPUExecutionProvider"


def test_idle_model_threads_leave_the_cores_to_decode_and_encode(tmp_path: Path) -> None:
    """Spinning onnxruntime threads cost 1080p renders on 2 cores about 12% of their speed (README)."""
    write_dummy(tmp_path, "batch")
    model = LipSyncModel.open(tmp_path, providers=CPU)
    options = model.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_plain_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no model.json in"):
        LipSyncModel.open(tmp_path, providers=CPU)
    write_dummy(tmp_path, "batch")
    with pytest.raises(ValueError, match="has no fp16 file; it has: fp32"):
        LipSyncModel.open(tmp_path, providers=CPU, precision="fp16")
    model = LipSyncModel.open(tmp_path, providers=CPU)
    with pytest.raises(ValueError, match=r"expected mel \(B,1,80,16\)"):
        model.infer(np.zeros((2, 80, 16), np.float32), np.zeros((2, 6, 96, 96), np.float32))


# --- the baseline model ----------------------------------------------------------------------------


def test_baseline_files_and_graph(tmp_path: Path) -> None:
    spec = write_baseline(tmp_path)
    assert spec == ModelSpec.load(tmp_path)
    assert (spec.name, spec.kind, spec.batch) == ("baseline", "baseline", None)
    model = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["mel", "face"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("count", [1, 7])
def test_baseline_runs_at_batch_1_and_7(baseline: LipSyncModel, count: int) -> None:
    mel, face = random_inputs(count, seed=count)
    out = baseline.infer(mel, face)
    assert out.shape == (count, 3, 96, 96)
    assert out.dtype == np.float32
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_baseline_silence_keeps_the_reference(baseline: LipSyncModel, astronaut_crop: np.ndarray) -> None:
    face = prepare_faces([astronaut_crop])
    out = baseline.infer(flat_mel([-4.0]), face)
    np.testing.assert_allclose(out, face[:, 3:], atol=1e-6)
    assert np.array_equal(to_images(out)[0], astronaut_crop)


def test_baseline_opens_more_when_louder(baseline: LipSyncModel, astronaut_crop: np.ndarray) -> None:
    levels = [-4.0, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 1.0]
    face = prepare_faces([astronaut_crop] * len(levels))
    out = baseline.infer(flat_mel(levels), face)
    change = np.abs(out - face[:, 3:]).mean(axis=(1, 2, 3))
    assert change[0] == pytest.approx(0, abs=1e-7)
    assert change[1] < 1e-3
    assert np.all(np.diff(change[1:7]) > 1e-3)  # typical speech range: strictly opening
    assert change[7] >= change[6] - 1e-7
    assert np.array_equal(out[:, :, :TOP_STILL], face[:, 3:, :TOP_STILL])  # eyes, nose: bit for bit


def striped_face(row: int) -> np.ndarray:
    """A grey 96x96 crop with one bright horizontal line at `row`: an edge below the mouth to follow.

    Bright, so that the dark inner-mouth shade cannot be mistaken for it."""
    crop = np.full((96, 96, 3), 160, np.uint8)
    crop[row] = 250
    return crop


def line_row(image: np.ndarray, column: int = 48) -> float:
    """Sub-pixel row of the bright line: the brightness-weighted mean row of one column."""
    brightness = np.clip(image[:, column].astype(float).mean(axis=1) - 160.0, 0, None)
    return float((brightness * np.arange(96)).sum() / brightness.sum())


def test_baseline_moves_the_chin_down_with_loudness(baseline: LipSyncModel) -> None:
    levels = [-4.0, -2.5, -2.0, -1.5, -1.0, -0.5]
    face = prepare_faces([striped_face(80)] * len(levels))
    rows = [line_row(image) for image in to_images(baseline.infer(flat_mel(levels), face))]
    assert rows[0] == pytest.approx(80.0, abs=1e-6)  # silence: nothing moves
    assert np.all(np.diff(rows) > 0.5), rows  # every louder step drops it further
    assert rows[-1] - rows[0] == pytest.approx(JAW_DROP, abs=1.0), rows  # full loudness: the full drop
    sides = [line_row(image, column=4) for image in to_images(baseline.infer(flat_mel(levels), face))]
    assert sides == pytest.approx([80.0] * len(levels), abs=1e-6)  # the crop's edges never move


def test_baseline_parts_the_lips_with_a_dark_gap(baseline: LipSyncModel) -> None:
    """Just below the mouth line the (bright) face darkens more as the jaw opens; above it, nothing."""
    levels = [-4.0, -2.5, -2.0, -1.5, -1.0, -0.5]
    face = prepare_faces([striped_face(90)] * len(levels))
    out = np.stack(to_images(baseline.infer(flat_mel(levels), face))).astype(float)
    gap = out[:, 68:86, 40:56].mean(axis=(1, 2, 3))  # the whole mouth, so the growing gap counts
    assert gap[0] == 160.0, gap
    assert np.all(np.diff(gap) < -2.0), gap
    darkest_row = out[-1, 68:86, 40:56].mean(axis=(1, 2)).min()
    assert darkest_row < 70.0, darkest_row  # a clearly dark opening at full loudness (face: 160)
    corners = out[:, 68:86, 16:20].mean(axis=(1, 2, 3))
    assert np.all(corners > 150.0), corners  # the lips stay closed at the corners of the mouth


def test_baseline_frames_do_not_affect_each_other(baseline: LipSyncModel, astronaut_crop: np.ndarray) -> None:
    levels = [-1.0, -4.0, -0.5, -2.0]
    crops = [astronaut_crop, striped_face(80), np.flipud(astronaut_crop).copy(), striped_face(75)]
    together = baseline.infer(flat_mel(levels), prepare_faces(crops))
    for i, (level, crop) in enumerate(zip(levels, crops, strict=True)):
        alone = baseline.infer(flat_mel([level]), prepare_faces([crop]))
        np.testing.assert_allclose(together[i], alone[0], atol=1e-6)


def test_baseline_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_baseline(first)
    write_baseline(second)
    assert (first / "model.onnx").read_bytes() == (second / "model.onnx").read_bytes()


def test_an_older_baseline_on_disk_is_replaced(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    fresh = (tmp_path / "model.onnx").read_bytes()
    (tmp_path / "model.onnx").write_bytes(dummy_model("batch").SerializeToString())  # "last version's"
    ensure_baseline(tmp_path)
    assert (tmp_path / "model.onnx").read_bytes() == fresh
    before = (tmp_path / "model.onnx").stat().st_mtime_ns
    ensure_baseline(tmp_path)  # up to date: left alone
    assert (tmp_path / "model.onnx").stat().st_mtime_ns == before


def test_a_baseline_written_by_this_source_is_not_built_again_to_compare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_baseline(tmp_path)
    fresh = (tmp_path / "model.onnx").read_bytes()
    with monkeypatch.context() as patch:  # the stamp matches: no graph is built (no onnx import, ~1.5 s)
        patch.setattr(baseline_module, "build_graph", lambda: pytest.fail("built the graph again"))
        ensure_baseline(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not the baseline")  # the stamp no longer matches the file
    ensure_baseline(tmp_path)
    assert (tmp_path / "model.onnx").read_bytes() == fresh
    (tmp_path / "written-by.txt").write_text("another version's source\n")  # an upgrade: compared again
    monkeypatch.setattr(baseline_module, "build_graph", lambda: dummy_model("batch"))
    ensure_baseline(tmp_path)
    assert (tmp_path / "model.onnx").read_bytes() == dummy_model("batch").SerializeToString()


def test_baseline_listens_to_the_frames_own_columns(
    baseline: LipSyncModel, astronaut_crop: np.ndarray
) -> None:
    now_loud = np.full((1, 1, 80, 16), -4.0, np.float32)
    now_loud[..., :4] = -1.0
    later_loud = np.full((1, 1, 80, 16), -1.0, np.float32)
    later_loud[..., :4] = -4.0
    face = prepare_faces([astronaut_crop, astronaut_crop])
    out = baseline.infer(np.concatenate([now_loud, later_loud]), face)
    assert np.abs(out[0] - face[0, 3:]).max() > 0.3
    np.testing.assert_allclose(out[1], face[1, 3:], atol=1e-6)
