"""Importing Wav2Lip-style ONNX files made by other tools: each naming convention, fixed or dynamic
batch, the variants, and clear refusals of files that do not fit the contract.

The files are small stand-ins built here with onnx.helper (a conv on the face, plus the mean of the
mel window, through a sigmoid): the importer only cares about the graph's inputs, outputs and that
onnxruntime runs it, which these exercise with real onnxruntime sessions.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from daemon.modelimport import ModelImportError, file_kind, import_model, import_onnx, inspect_wav2lip_onnx
from daemon.render.modelspec import ModelSpec
from daemon.render.precision import CPU_FLAGS_ENV

Dims = list[int | str | None]
MEL: Dims = ["B", 1, 80, 16]
FACE: Dims = ["B", 6, 96, 96]
IMAGE: Dims = ["B", 3, 96, 96]


def _dims(dims: Dims, batch: int | str | None) -> Dims:
    return [batch if d == "B" else d for d in dims]


def dummy_wav2lip(
    path: Path,
    mel_name: str = "mel",
    face_name: str = "face",
    *,
    batch: int | str | None = "batch",
    face_first: bool = False,
    mel_dims: Dims = MEL,
    face_dims: Dims = FACE,
    out_dims: Dims = IMAGE,
    out_name: str = "output",
    extra_input: bool = False,
    extra_output: bool = False,
    elem: int = TensorProto.FLOAT,
    scale: float = 1.0,
) -> Path:
    """image = sigmoid(scale * (conv3x3(face -> 3 ch) + mean(mel))), with the given names and shapes."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 6, 3, 3], rng.normal(0, 0.1, 162).tolist())
    factor = helper.make_tensor("k", TensorProto.FLOAT, [], [scale])
    nodes = [
        helper.make_node("Conv", [face_name, "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", [mel_name], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Add", ["c", "m"], ["s"]),
        helper.make_node("Mul", ["s", "k"], ["z"]),
        helper.make_node("Sigmoid", ["z"], [out_name]),
    ]
    inputs = [
        helper.make_tensor_value_info(mel_name, elem, _dims(mel_dims, batch)),
        helper.make_tensor_value_info(face_name, elem, _dims(face_dims, batch)),
    ]
    inputs = inputs[::-1] if face_first else inputs
    if extra_input:
        inputs.append(helper.make_tensor_value_info("speaker", TensorProto.FLOAT, [1, 8]))
    outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, _dims(out_dims, batch))]
    if extra_output:
        nodes.append(helper.make_node("Identity", ["m"], ["energy"]))
        outputs.append(helper.make_tensor_value_info("energy", TensorProto.FLOAT, [batch, 1, 1, 1]))
    graph = helper.make_graph(nodes, "dummy", inputs, outputs, [weight, factor])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(
    ("mel_name", "face_name", "face_first", "batch"),
    [
        ("mel", "face", False, "batch"),
        ("mel", "vid", True, None),  # unknown batch dim, face declared first
        ("mel_spectrogram", "video_frames", False, 4),  # a fixed batch
        ("source", "target", False, "N"),
        ("target", "source", True, 1),  # the names mean nothing: the shapes decide
    ],
)
def test_each_naming_is_accepted(
    tmp_path: Path, mel_name: str, face_name: str, face_first: bool, batch: int | str | None
) -> None:
    src = dummy_wav2lip(tmp_path / "exported.onnx", mel_name, face_name, batch=batch, face_first=face_first)
    report = import_onnx(src, tmp_path / "models", name="tool", fp16=False, int8=False)
    spec = ModelSpec.load(tmp_path / "models" / "tool")
    assert (spec.mel_input, spec.face_input, spec.output) == (mel_name, face_name, "output")
    assert spec.batch == (batch if isinstance(batch, int) else None)
    assert (spec.kind, spec.source, spec.variants) == ("wav2lip", "exported.onnx", {})
    assert report.onnx_vs_torch is None
    assert report.spec == spec
    rows = spec.batch or 3
    session = ort.InferenceSession(str(spec.onnx_path(tmp_path / "models" / "tool")))
    feeds = {
        mel_name: np.zeros((rows, 1, 80, 16), np.float32),
        face_name: np.zeros((rows, 6, 96, 96), np.float32),
    }
    assert session.run([spec.output], feeds)[0].shape == (rows, 3, 96, 96)


def test_fixed_batch_variants_are_made_and_checked(tmp_path: Path) -> None:
    src = dummy_wav2lip(tmp_path / "fixed.onnx", "mel_spectrogram", "video_frames", batch=4)
    report = import_model(src, tmp_path / "models", name=None, fp16=True, int8=True)
    spec = report.spec
    assert isinstance(spec, ModelSpec)
    assert spec.name == "fixed"
    assert spec.batch == 4
    assert spec.variants == {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    assert report.variant("fp16").max_abs_error < 0.01
    assert report.variant("int8").max_abs_error < 0.1
    assert any("int8 vs fp32" in line for line in report.lines())
    feeds = {
        "mel_spectrogram": np.zeros((4, 1, 80, 16), np.float32),
        "video_frames": np.ones((4, 6, 96, 96), np.float32),
    }
    for precision in ("fp16", "int8"):
        session = ort.InferenceSession(str(spec.onnx_path(report.folder, precision)))
        assert session.run(None, feeds)[0].shape == (4, 3, 96, 96)


def test_output_outside_unit_range_is_noted(tmp_path: Path) -> None:
    # a negated sigmoid spans [-1, 0]: append a Mul after the renamed sigmoid output
    src = dummy_wav2lip(tmp_path / "wide.onnx")
    model = onnx.load(str(src))
    model.graph.node[-1].output[0] = "sig"
    model.graph.initializer.append(helper.make_tensor("minus", TensorProto.FLOAT, [], [-1.0]))
    model.graph.node.append(helper.make_node("Mul", ["sig", "minus"], ["output"]))
    onnx.save(model, str(src))
    report = import_onnx(src, tmp_path / "models", name=None, fp16=False, int8=False)
    assert any("not [0, 1]" in note for note in report.notes)
    assert "not [0, 1]" in report.spec.notes


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"extra_input": True}, "it has 3 inputs"),
        ({"mel_dims": ["B", 1, 80, 32]}, "its inputs are not one mel window and one face stack"),
        ({"face_dims": ["B", 3, 96, 96]}, "its inputs are not one mel window and one face stack"),
        ({"mel_dims": ["B", 80, 16]}, "its inputs are not one mel window and one face stack"),
        ({"out_dims": ["B", 3, 128, 128]}, r"its output is not one \(B, 3, 96, 96\) image"),
        ({"extra_output": True}, r"its output is not one \(B, 3, 96, 96\) image"),
        ({"elem": TensorProto.DOUBLE}, "mel is not float32"),
    ],
)
def test_misfits_are_refused_clearly(tmp_path: Path, options: dict[str, object], message: str) -> None:
    src = dummy_wav2lip(tmp_path / "odd.onnx", **options)  # type: ignore[arg-type]
    with pytest.raises(ModelImportError) as caught:
        import_onnx(src, tmp_path / "models", name=None, fp16=False, int8=False)
    text = str(caught.value)
    assert "odd.onnx does not fit the Wav2Lip contract" in text
    assert re.search(message, text), text
    assert "Expected inputs: a mel window (B, 1, 80, 16) and a face stack (B, 6, 96, 96)" in text
    assert "Found inputs:" in text
    assert not (tmp_path / "models" / "odd").exists()


def test_declared_shapes_that_lie_are_caught_by_the_smoke_run(tmp_path: Path) -> None:
    src = dummy_wav2lip(tmp_path / "liar.onnx")
    model = onnx.load(str(src))
    # the weights now expect 5 input channels, whatever the declared face input says
    model.graph.initializer[0].CopyFrom(helper.make_tensor("w", TensorProto.FLOAT, [3, 5, 3, 3], [0.0] * 135))
    onnx.save(model, str(src))
    assert inspect_wav2lip_onnx(src).face_input == "face"  # the declared ports fit...
    with pytest.raises(ModelImportError, match=r"liar.onnx could not be run by onnxruntime"):
        import_onnx(src, tmp_path / "models", name=None, fp16=False, int8=False)


def test_not_an_onnx_file(tmp_path: Path) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"\x08\x07garbage that is not protobuf" * 10)
    with pytest.raises(ModelImportError, match="neither a PyTorch checkpoint"):
        file_kind(junk)
    with pytest.raises(ModelImportError, match=r"model\.onnx is not an ONNX model"):
        import_onnx(junk, tmp_path / "models", name="x", fp16=False, int8=False)


def test_plain_import_needs_no_scikit_image(tmp_path: Path) -> None:
    """scikit-image (the calibration photo) is an import extra: only --fp16/--int8 need it; a plain import
    on a VNNI CPU (which would make int8) without it says so and imports fp32 only."""
    src = dummy_wav2lip(tmp_path / "plain.onnx")
    code = (
        "import sys; sys.modules['skimage'] = None\n"
        "from pathlib import Path\n"
        "from daemon.modelimport import import_model\n"
        f"print(import_model(Path({str(src)!r}), Path({str(tmp_path / 'models')!r})).notes)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, CPU_FLAGS_ENV: "avx512_vnni"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "scikit-image is not installed" in done.stdout
    assert ModelSpec.load(tmp_path / "models" / "plain").variants == {}
