"""Imported face detectors: S3FD from a checkpoint saved like the public `s3fd.pth`, and YuNet's loader.

The S3FD weights are random (the real file is not ours to ship), so it finds no real faces: these
tests check the conversion (raw head outputs, ONNX vs torch at a size other than the export's), the
runtime decoding against a line-by-line port of the reference decoder, NMS, and the plumbing.
YuNet: without the real `face_detection_yunet_*.onnx` (not shipped in any package here) only the
loader's refusals can be tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from daemon.modelimport import ImportReport, ModelImportError, import_model, import_yunet, list_detectors
from daemon.modelimport.s3fd_arch import OUTPUTS, S3FD
from daemon.render.detectors import (
    DetectorError,
    DetectorSpec,
    S3fdDetector,
    YunetDetector,
    decode_s3fd,
    detector_factories,
    detector_folder,
    load_yunet,
    nms,
)
from daemon.render.faces import builtin_detectors, detector_by_name
from daemon.samples import astronaut_bgr
from tests.functional.test_onnx_import import dummy_wav2lip


@pytest.fixture(scope="module")
def s3fd_model() -> S3FD:
    torch.manual_seed(0)
    model = S3FD()
    with torch.no_grad():
        for norm in (model.conv3_3_norm, model.conv4_3_norm, model.conv5_3_norm):
            norm.weight.uniform_(2.0, 12.0)  # trained L2Norm scales are not constant either
    return model.eval()


@pytest.fixture(scope="module")
def s3fd_import(s3fd_model: S3FD, tmp_path_factory: pytest.TempPathFactory) -> ImportReport:
    """Saved like the public file (a bare state_dict, legacy pickle), imported through the dispatcher."""
    path = tmp_path_factory.mktemp("ckpt") / "s3fd.pth"
    torch.save(s3fd_model.state_dict(), path, _use_new_zipfile_serialization=False)
    return import_model(path, tmp_path_factory.mktemp("models"), name=None, fp16=False, int8=False)


def test_state_dict_keys_are_the_public_ones(s3fd_model: S3FD) -> None:
    state = s3fd_model.state_dict()
    assert len(state) == 65
    assert tuple(state["conv4_3_norm.weight"].shape) == (512,)
    assert tuple(state["fc6.weight"].shape) == (1024, 512, 3, 3)
    assert tuple(state["conv3_3_norm_mbox_conf.weight"].shape) == (4, 256, 3, 3)
    assert tuple(state["conv7_2_mbox_loc.weight"].shape) == (4, 256, 3, 3)
    assert sum(p.numel() for p in s3fd_model.parameters()) == 22_459_110


def test_raw_heads_match_torch(s3fd_import: ImportReport, s3fd_model: S3FD) -> None:
    folder = s3fd_import.folder
    assert folder.name == "s3fd"
    assert folder.parent.name == "detectors"
    assert s3fd_import.onnx_vs_torch is not None
    assert s3fd_import.onnx_vs_torch <= 1e-4
    image = np.random.default_rng(1).uniform(-120, 150, (1, 3, 120, 184)).astype(np.float32)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": image})
    with torch.no_grad():
        expected = s3fd_model(torch.from_numpy(image))
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == tuple(e.shape)
        assert float(np.abs(g - e.numpy()).max()) <= 1e-4


def reference_detect(olist: list[torch.Tensor]) -> np.ndarray:
    """The reference `detect()` loop (face_detection/detection/sfd/detect.py), cell by cell."""
    olist = list(olist)
    for i in range(len(olist) // 2):
        olist[i * 2] = torch.softmax(olist[i * 2], dim=1)
    boxes = []
    for i in range(len(olist) // 2):
        ocls, oreg = olist[i * 2], olist[i * 2 + 1]
        stride = 2 ** (i + 2)
        for _, hindex, windex in zip(*np.where(ocls[:, 1, :, :].numpy() > 0.05), strict=True):
            axc, ayc = stride / 2 + windex * stride, stride / 2 + hindex * stride
            loc = oreg[0, :, hindex, windex].reshape(1, 4)
            priors = torch.tensor([[axc, ayc, stride * 4.0, stride * 4.0]])
            box = torch.cat(
                (
                    priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:],
                    priors[:, 2:] * torch.exp(loc[:, 2:] * 0.2),
                ),
                1,
            )
            box[:, :2] -= box[:, 2:] / 2
            box[:, 2:] += box[:, :2]
            boxes.append([*box[0].tolist(), float(ocls[0, 1, hindex, windex])])
    return np.array(boxes, dtype=np.float32)


def test_decoding_matches_the_reference(s3fd_model: S3FD) -> None:
    image = np.random.default_rng(2).uniform(-120, 150, (1, 3, 96, 128)).astype(np.float32)
    with torch.no_grad():
        outputs = s3fd_model(torch.from_numpy(image))
    ours = decode_s3fd([o.numpy() for o in outputs])
    theirs = reference_detect(outputs)
    assert len(ours) == len(theirs) > 100  # random weights: scores near 0.5, so most cells pass 0.05
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)


def test_nms_keeps_the_best_of_each_cluster() -> None:
    dets = np.array(
        [
            [10, 10, 50, 50, 0.9],
            [12, 12, 52, 52, 0.8],  # overlaps the first: dropped
            [100, 100, 140, 140, 0.7],
            [60, 10, 100, 50, 0.95],  # touches nobody much: kept, and best
        ],
        np.float32,
    )
    assert nms(dets, 0.3).tolist() == [3, 0, 2]
    assert nms(np.zeros((0, 5), np.float32), 0.3).tolist() == []


def test_detector_runs_through_the_registry(s3fd_import: ImportReport) -> None:
    models_dir = s3fd_import.folder.parent.parent
    factories = {**builtin_detectors(), **detector_factories(["CPUExecutionProvider"])}
    detector = detector_by_name("s3fd", models_dir, factories)
    assert isinstance(detector, S3fdDetector)
    assert detector.name == "s3fd"
    frame = np.ascontiguousarray(np.tile(astronaut_bgr(), (2, 3, 1))[:900, :1400])  # bigger than max_side
    detector.threshold = 0.0  # random weights: take every box, to check scaling and clamping
    boxes = detector.detect(frame)
    assert boxes
    assert all(0 <= b.x1 < b.x2 <= 1400 and 0 <= b.y1 < b.y2 <= 900 for b in boxes)
    assert max(b.x2 for b in boxes) > 640  # boxes were scaled back from the 640 px copy
    assert [s.name for s in list_detectors(models_dir)] == ["s3fd"]
    assert DetectorSpec.load(s3fd_import.folder).outputs == list(OUTPUTS)


def test_missing_detector_says_how_to_import(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="import one with `lipsyncd model import FILE`"):
        detector_factories()["s3fd"](tmp_path)


def test_yunet_loader_refuses_what_is_not_yunet(tmp_path: Path) -> None:
    junk = tmp_path / "face_detection_yunet_2023mar.onnx"
    junk.write_bytes(b"not a network")
    with pytest.raises(DetectorError, match=r"is not an OpenCV YuNet face detector .*OpenCV said: "):
        load_yunet(junk)
    with pytest.raises(ModelImportError, match="is not an OpenCV YuNet face detector"):
        import_yunet(junk, tmp_path / "models")
    other = dummy_wav2lip(tmp_path / "wav2lip.onnx")  # a valid ONNX file, but not YuNet
    with pytest.raises(DetectorError, match=r"wav2lip.onnx is not an OpenCV YuNet face detector"):
        YunetDetector(other)
    with pytest.raises(DetectorError, match="not found"):
        load_yunet(tmp_path / "missing.onnx")
    assert not detector_folder(tmp_path / "models", "yunet").exists()


def test_a_yunet_looking_file_goes_to_the_yunet_importer(tmp_path: Path) -> None:
    """Outputs named like YuNet's (cls_8, obj_8, ...) route to the YuNet check, which OpenCV then runs."""
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])
    names = ["cls_8", "obj_8", "bbox_8", "kps_8"]
    nodes = [helper.make_node("Identity", ["input"], [name]) for name in names]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, 64, 64]) for name in names]
    graph = helper.make_graph(nodes, "fake_yunet", [image], outputs)
    path = tmp_path / "face_detection_yunet_fake.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelImportError, match="is not an OpenCV YuNet face detector"):
        import_model(path, tmp_path / "models", name=None, fp16=False, int8=False)
