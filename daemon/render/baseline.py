"""The built-in `baseline` model: a weightless ONNX graph that obeys the model contract (DESIGN.md 4).

It is a placeholder, not a learned model. It opens a drawn "mouth" in proportion to speech loudness so
that the product runs end to end, and the audio-video alignment can be seen, before anyone imports real
Wav2Lip weights. Output = the reference crop (face channels 3..5) with a dark, soft-edged ellipse in
the lower middle whose height grows with loudness.

Loudness = the mean of the mel window's first 4 columns (the window starts at the frame's own time, so
these columns are the frame's audio: the mouth moves at lag 0), over all 80 bands, on the normalised
dB scale [-4, 4]. Calibration, measured on espeak-ng speech peaking at -6 dBFS: that mean sits around
-2.5..-1 while words are spoken, white noise at -60 dBFS gives about -3 and digital silence -4. So
openness = clip((loudness - QUIET) / (LOUD - QUIET), 0, 1) with QUIET = -3 and LOUD = -0.5.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from daemon.render.modelspec import ONNX_NAME, ModelSpec

OPSET = 17
SIZE = 96
NOW_COLUMNS = 4  # 80 mel columns/s: 4 columns = 50 ms, about one video frame at 20-30 fps
QUIET, LOUD = -3.0, -0.5  # normalised-dB loudness mapped to openness 0 and 1 (see the module docstring)
CENTRE_X, CENTRE_Y = 48.0, 72.0  # where the mouth sits in a padded 96x96 crop (Haar box on the astronaut)
HALF_WIDTH = (13.0, 16.0)  # ellipse semi-axes in px at openness 0 and 1
HALF_HEIGHT = (1.0, 11.0)
EDGE = 6.0  # sigmoid sharpness on the ellipse equation: an edge about 2 px wide
FADE_IN = 4.0  # alpha is scaled by clip(FADE_IN * openness, 0, 1): exactly the reference crop at silence
MOUTH_BGR = (0.08, 0.10, 0.25)  # dark red-brown, BGR in [0, 1]


def write_baseline(folder: Path) -> ModelSpec:
    """Write model.onnx and model.json for the built-in model into `folder`; return the spec."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / ONNX_NAME, build_graph().SerializeToString())
    spec = ModelSpec(
        name="baseline",
        kind="baseline",
        notes="Built-in placeholder, not a learned model: draws a mouth that opens with loudness.",
    )
    spec.save(folder)
    return spec


def _write_atomic(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as out:
        out.write(payload)
    os.replace(tmp, path)


def build_graph() -> onnx.ModelProto:
    """The baseline as an ONNX model: mel (B,1,80,16), face (B,6,96,96) -> image (B,3,96,96) in [0,1]."""
    nodes = _openness_nodes() + _ellipse_nodes() + _compose_nodes()
    graph = helper.make_graph(
        nodes,
        "lipsyncd_baseline",
        [_tensor("mel", [1, 80, 16]), _tensor("face", [6, SIZE, SIZE])],
        [_tensor("image", [3, SIZE, SIZE])],
        initializer=_constants(),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lipsyncd")
    model.ir_version = 8  # readable by onnxruntime >= 1.10
    onnx.checker.check_model(model, full_check=True)
    return model


def _tensor(name: str, dims: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])


def _openness_nodes() -> list[onnx.NodeProto]:
    node = helper.make_node
    return [
        node("Slice", ["mel", "now_start", "now_end", "last_axis"], ["mel_now"]),
        node("ReduceMean", ["mel_now"], ["loudness"], axes=[1, 2, 3], keepdims=1),
        node("Sub", ["loudness", "quiet"], ["above_quiet"]),
        node("Div", ["above_quiet", "loud_range"], ["open_raw"]),
        node("Clip", ["open_raw", "zero", "one"], ["openness"]),
    ]


def _ellipse_nodes() -> list[onnx.NodeProto]:
    """r2 = dx^2 / a^2 + dy^2 / b^2, with the semi-axes a and b growing linearly with openness."""
    node = helper.make_node
    return [
        node("Mul", ["openness", "width_gain"], ["width_grow"]),
        node("Add", ["width_grow", "width_base"], ["half_width"]),
        node("Mul", ["openness", "height_gain"], ["height_grow"]),
        node("Add", ["height_grow", "height_base"], ["half_height"]),
        node("Mul", ["half_width", "half_width"], ["width_sq"]),
        node("Mul", ["half_height", "half_height"], ["height_sq"]),
        node("Div", ["dx_sq", "width_sq"], ["r2_x"]),
        node("Div", ["dy_sq", "height_sq"], ["r2_y"]),
        node("Add", ["r2_x", "r2_y"], ["r2"]),
    ]


def _compose_nodes() -> list[onnx.NodeProto]:
    """alpha = sigmoid(EDGE * (1 - r2)) * fade; image = clip(ref * (1 - alpha) + MOUTH * alpha, 0, 1)."""
    node = helper.make_node
    return [
        node("Sub", ["one", "r2"], ["inside"]),
        node("Mul", ["inside", "edge"], ["edge_logit"]),
        node("Sigmoid", ["edge_logit"], ["soft"]),
        node("Mul", ["openness", "fade_in"], ["fade_raw"]),
        node("Clip", ["fade_raw", "zero", "one"], ["fade"]),
        node("Mul", ["soft", "fade"], ["alpha"]),
        node("Slice", ["face", "ref_start", "ref_end", "channel_axis"], ["reference"]),
        node("Sub", ["mouth", "reference"], ["towards_mouth"]),
        node("Mul", ["towards_mouth", "alpha"], ["shift"]),
        node("Add", ["reference", "shift"], ["mixed"]),
        node("Clip", ["mixed", "zero", "one"], ["image"]),
    ]


def _constants() -> list[onnx.TensorProto]:
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    floats = {
        "quiet": QUIET,
        "loud_range": LOUD - QUIET,
        "zero": 0.0,
        "one": 1.0,
        "width_base": HALF_WIDTH[0],
        "width_gain": HALF_WIDTH[1] - HALF_WIDTH[0],
        "height_base": HALF_HEIGHT[0],
        "height_gain": HALF_HEIGHT[1] - HALF_HEIGHT[0],
        "edge": EDGE,
        "fade_in": FADE_IN,
    }
    arrays = {
        "dx_sq": ((xs - CENTRE_X) ** 2)[None, None],
        "dy_sq": ((ys - CENTRE_Y) ** 2)[None, None],
        "mouth": np.array(MOUTH_BGR, np.float32).reshape(1, 3, 1, 1),
    }
    ints = {
        "now_start": [0],
        "now_end": [NOW_COLUMNS],
        "last_axis": [3],
        "ref_start": [3],
        "ref_end": [6],
        "channel_axis": [1],
    }
    tensors = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in floats.items()]
    tensors += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    return tensors + [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
