"""Importing a Wav2Lip checkpoint saved exactly like the public ones, and refusing broken ones.

The checkpoint is random (the real weights are not redistributable) but realistic: legacy non-zip
pickle, a dict with `state_dict` and optimizer entries, `module.` prefixes, BatchNorm statistics
gathered by running the net in training mode. The ONNX output is checked against a forward pass
written here from the published layer table with torch.nn.functional: it shares no code
with the importer's architecture.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from daemon.modelimport import (
    ImportReport,
    ModelImportError,
    file_kind,
    import_checkpoint,
    import_model,
    list_models,
)
from daemon.modelimport.wav2lip_arch import Wav2Lip
from daemon.modelimport.wav2lip_import import load_wav2lip
from daemon.render.modelspec import ModelSpec

State = dict[str, torch.Tensor]

# -- an independent forward pass -----------------------------------------
# ("c", stride, pad) conv block; ("t", stride, pad, output_padding) transposed; "r" residual k3 s1 p1
FACE_ENCODER: list[list[Any]] = [
    [("c", 1, 3)],
    [("c", 2, 1), "r", "r"],
    [("c", 2, 1), "r", "r", "r"],
    [("c", 2, 1), "r", "r"],
    [("c", 2, 1), "r", "r"],
    [("c", 2, 1), "r"],
    [("c", 1, 0), ("c", 1, 0)],
]
AUDIO_ENCODER: list[Any] = [("c", 1, 1), "r", "r", ("c", (3, 1), 1), "r", "r", ("c", 3, 1), "r", "r"]
AUDIO_ENCODER += [("c", (3, 2), 1), "r", ("c", 1, 0), ("c", 1, 0)]
FACE_DECODER: list[Any] = [[("c", 1, 0)], [("t", 1, 0, 0), "r"]] + [[("t", 2, 1, 1), "r", "r"]] * 5


def ref_block(x: torch.Tensor, sd: State, prefix: str, layer: Any) -> torch.Tensor:
    kind, stride, pad, *extra = ("c", 1, 1) if layer == "r" else layer
    w, b = sd[f"{prefix}.conv_block.0.weight"], sd[f"{prefix}.conv_block.0.bias"]
    if kind == "t":
        y = F.conv_transpose2d(x, w, b, stride, pad, output_padding=extra[0])
    else:
        y = F.conv2d(x, w, b, stride, pad)
    bn = f"{prefix}.conv_block.1"
    y = F.batch_norm(
        y, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"]
    )
    return F.relu(y + x if layer == "r" else y)


@torch.no_grad()
def reference_forward(sd: State, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    feats = []
    x = face
    for i, block in enumerate(FACE_ENCODER):
        for j, layer in enumerate(block):
            x = ref_block(x, sd, f"face_encoder_blocks.{i}.{j}", layer)
        feats.append(x)
    x = mel
    for i, layer in enumerate(AUDIO_ENCODER):
        x = ref_block(x, sd, f"audio_encoder.{i}", layer)
    for i, block in enumerate(FACE_DECODER):
        for j, layer in enumerate(block):
            x = ref_block(x, sd, f"face_decoder_blocks.{i}.{j}", layer)
        x = torch.cat([x, feats.pop()], dim=1)
    x = ref_block(x, sd, "output_block.0", ("c", 1, 1))
    return torch.sigmoid(F.conv2d(x, sd["output_block.1.weight"], sd["output_block.1.bias"]))


# -- a checkpoint saved like the public one --------------------------------------------------------


def realistic_random_wav2lip(seed: int = 0) -> Wav2Lip:
    """Random weights, BN affine randomised and BN statistics gathered from data (so they normalise)."""
    torch.manual_seed(seed)
    model = Wav2Lip()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the passes below
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.normal_(module.bias, 0.0, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 1, 80, 16) * 8 - 4, torch.rand(8, 6, 96, 96))
    return model.eval()


def save_like_public(state: State, path: Path, prefix: str = "module.") -> Path:
    checkpoint = {
        "state_dict": {prefix + k: v for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "global_step": 123,
        "global_epoch": 4,
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def state() -> State:
    return {k: v.clone() for k, v in realistic_random_wav2lip().state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(state: State, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_like_public(state, tmp_path_factory.mktemp("ckpt") / "wav2lip_gan.pth")


@pytest.fixture(scope="module")
def imported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ImportReport:
    """One import per session (export + both variants): the slow part of this file."""
    return import_checkpoint(checkpoint, tmp_path_factory.mktemp("models"), name=None, fp16=True, int8=True)


def test_saved_like_the_public_checkpoint(checkpoint: Path) -> None:
    assert checkpoint.read_bytes()[:2] == b"\x80\x02"  # legacy pickle, not a zip
    raw = torch.load(checkpoint, weights_only=True)
    assert all(k.startswith("module.") for k in raw["state_dict"])
    assert file_kind(checkpoint) == "torch"


def test_onnx_matches_an_independent_torch_forward(imported: ImportReport, state: State) -> None:
    session = ort.InferenceSession(str(imported.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    mel = rng.uniform(-4, 4, (3, 1, 80, 16)).astype(np.float32)  # batch 3: not the export's batch
    face = rng.uniform(0, 1, (3, 6, 96, 96)).astype(np.float32)
    got = session.run(["image"], {"mel": mel, "face": face})[0]
    expected = reference_forward(state, torch.from_numpy(mel), torch.from_numpy(face)).numpy()
    assert got.shape == (3, 3, 96, 96)
    assert float(expected.std()) > 0.05  # the comparison means something: outputs are spread out
    assert float(np.abs(got - expected).max()) <= 1e-4
    assert imported.onnx_vs_torch is not None
    assert imported.onnx_vs_torch <= 1e-4


def test_spec_and_onnx_file(imported: ImportReport, checkpoint: Path) -> None:
    spec = ModelSpec.load(imported.folder)
    assert spec == imported.spec
    assert (spec.name, spec.kind, spec.precision, spec.batch) == ("wav2lip_gan", "wav2lip", "fp32", None)
    assert spec.source == "wav2lip_gan.pth"
    assert spec.source_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert spec.variants == {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    model = onnx.load(str(imported.folder / "model.onnx"), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input
    }
    assert dims == {"mel": ["batch", 1, 80, 16], "face": ["batch", 6, 96, 96]}
    assert [o.name for o in model.graph.output] == ["image"]
    assert sorted(p.name for p in imported.files) == sorted(p.name for p in imported.folder.iterdir())
    assert not [p for p in imported.folder.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_variants_run_on_float32_and_their_error_is_reported(imported: ImportReport) -> None:
    fp16, int8 = imported.variant("fp16"), imported.variant("int8")
    assert 0 < fp16.max_abs_error < 0.02
    assert 0 < int8.max_abs_error < 0.5
    assert int8.mean_abs_error < 0.05
    text = "\n".join(imported.lines())
    assert "fp16 vs fp32: max abs error" in text
    assert "int8 vs fp32: max abs error" in text
    assert "fp32 ONNX vs PyTorch" in text
    assert "int8 vs fp32" in imported.spec.notes
    assert isinstance(imported.spec, ModelSpec)
    for precision in ("fp16", "int8"):
        path = imported.spec.onnx_path(imported.folder, precision)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(float)"]
        out = session.run(
            None, {"mel": np.zeros((2, 1, 80, 16), np.float32), "face": np.zeros((2, 6, 96, 96), np.float32)}
        )
        assert out[0].dtype == np.float32
        assert out[0].shape == (2, 3, 96, 96)


def test_list_models_and_name_clash(imported: ImportReport, checkpoint: Path) -> None:
    assert [s.name for s in list_models(imported.folder.parent)] == ["wav2lip_gan"]
    with pytest.raises(ModelImportError, match="already exists; pass --name"):
        import_checkpoint(checkpoint, imported.folder.parent, name=None, fp16=False, int8=False)


def test_bare_zip_state_dict_without_prefix_loads(state: State, tmp_path: Path) -> None:
    bare = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # old torch had none
    torch.save(bare, tmp_path / "bare.pth")
    assert file_kind(tmp_path / "bare.pth") == "torch"
    model = load_wav2lip(tmp_path / "bare.pth")
    assert torch.equal(model.state_dict()["output_block.1.weight"], state["output_block.1.weight"])


# -- refusals ---------------------------------------------------------------------------------------


def test_truncated_checkpoint_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pth"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(ModelImportError, match=r"cut\.pth is not a Wav2Lip checkpoint \("):
        import_checkpoint(cut, tmp_path / "models", name=None, fp16=False, int8=False)
    assert not any((tmp_path / "models").glob("*"))


def test_text_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "notes.pth"
    junk.write_text("these are not weights\n")
    with pytest.raises(ModelImportError, match=r"notes\.pth is not a Wav2Lip checkpoint"):
        import_checkpoint(junk, tmp_path / "models", name=None, fp16=False, int8=False)
    with pytest.raises(ModelImportError, match="neither a PyTorch checkpoint"):
        file_kind(junk)


def test_pickled_code_is_not_run(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": Path("/etc/passwd")}, evil)  # any class
    with pytest.raises(ModelImportError, match="Python objects besides tensors"):
        import_checkpoint(evil, tmp_path / "models", name=None, fp16=False, int8=False)


def _broken(state: State, tmp_path: Path, drop: str = "", add: str = "", reshape: str = "") -> Path:
    edited = dict(state)
    if drop:
        del edited[drop]
    if add:
        edited[add] = torch.zeros(3)
    if reshape:
        edited[reshape] = torch.zeros(7, 7)
    return save_like_public(edited, tmp_path / "broken.pth")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"drop": "face_decoder_blocks.3.1.conv_block.0.weight"}, "missing keys: face_decoder_blocks.3.1"),
        ({"add": "lip_discriminator.0.weight"}, "unexpected keys: lip_discriminator.0.weight"),
        (
            {"reshape": "output_block.1.bias"},
            r"wrong shapes: output_block.1.bias is \(7, 7\), expected \(3,\)",
        ),
    ],
)
def test_mismatched_keys_are_named(state: State, tmp_path: Path, edit: dict[str, str], message: str) -> None:
    path = _broken(state, tmp_path, **edit)
    with pytest.raises(
        ModelImportError, match=r"broken\.pth does not match the Wav2Lip checkpoint architecture"
    ):
        import_checkpoint(path, tmp_path / "models", name="x", fp16=False, int8=False)
    with pytest.raises(ModelImportError, match=message):
        load_wav2lip(path)


def test_import_model_sends_wav2lip_checkpoints_to_the_wav2lip_importer(state: State, tmp_path: Path) -> None:
    path = _broken(state, tmp_path, drop="audio_encoder.0.conv_block.0.bias")
    with pytest.raises(ModelImportError, match=r"missing keys: audio_encoder.0.conv_block.0.bias"):
        import_model(path, tmp_path / "models", name=None, fp16=False, int8=False)


def test_bad_model_names_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    for name in ("../up", "baseline", "detectors", "", "a b"):
        with pytest.raises(ModelImportError, match="name"):
            import_checkpoint(checkpoint, tmp_path, name=name, fp16=False, int8=False)


def test_the_daemon_side_never_imports_torch() -> None:
    code = (
        "import sys, daemon.modelimport, daemon.render.detectors, daemon.render.modelspec;"
        "sys.exit('torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
