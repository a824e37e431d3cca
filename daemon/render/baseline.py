"""The built-in `baseline` model: a weightless ONNX graph that obeys the model contract.

It is a placeholder, not a learned model. It opens the presenter's own jaw in proportion to speech
loudness so that the product runs end to end, and the audio-video alignment can be seen, before anyone
imports real Wav2Lip weights. Output = the reference crop (face channels 3..5, the unmasked crop) warped
vertically: everything below the mouth line slides down by up to JAW_DROP px, smoothly (a smoothstep
ramp around the mouth line, a soft horizontal falloff, back to no motion at the crop's bottom edge), so
the chin moves and the lips part. Where the warp stretches the face (the parted lips), a dark
inner-mouth shade is blended in, in proportion to the stretch. The displacement and the shade are fixed
96x96 fields scaled by one number per frame, the openness; the warp is a vertical
resampling (two GatherElements and a lerp).

Loudness = the mean of the mel window's first 4 columns (the window starts at the frame's own time, so
these columns are the frame's audio: the mouth moves at lag 0), over all 80 bands, on the normalised
dB scale [-4, 4]. Calibration, measured on espeak-ng speech peaking at -6 dBFS: that mean sits around
-2.5..-1 while words are spoken, white noise at -60 dBFS gives about -3 and digital silence -4. So
openness = clip((loudness - QUIET) / (LOUD - QUIET), 0, 1) with QUIET = -3 and LOUD = -0.5.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog

from daemon.files import write_atomic
from daemon.render.modelspec import ONNX_NAME, SPEC_NAME, ModelSpec

if TYPE_CHECKING:  # onnx itself is imported only to build the graph: it takes ~1.5 s (ml_dtypes)
    import onnx

log = structlog.get_logger(__name__)

STAMP_NAME = "written-by.txt"  # the source that wrote model.onnx, its size, mtime: a match skips a rebuild

OPSET = 17
SIZE = 96
NOW_COLUMNS = 4  # 80 mel columns/s: 4 columns = 50 ms, about one video frame at 20-30 fps
QUIET, LOUD = -3.0, -0.5  # normalised-dB loudness mapped to openness 0 and 1 (see the module docstring)
CENTRE_X = 48.0  # the mouth's middle in a padded 96x96 crop (Haar box on the astronaut)
MOUTH_LINE = 71.5  # the reference row where the lips part (between the astronaut's teeth)
JAW_DROP = 9.0  # downward shift in px at full loudness, under the middle of the mouth
JAW_HALF_WIDTH = 24.0  # horizontal falloff exp(-(dx / w)^4): flat under the mouth, gone by the cheeks
RAMP_PER_PX = 1.6  # the shift rises over RAMP_PER_PX * shift rows: peak stretch 1.5 / 1.6, never a fold
RAMP_MIN = 2.0  # rows; keeps the ramp finite where the shift is ~0
MOUTH_HALF_WIDTH = 24.0  # the shade fades as 1 - (dx / w)^2: the lips stay together at the corners
TOP_STILL = 64  # rows above this are copied untouched (the ramp starts below 68 even at full shift)
SETTLE = (88.0, 96.0)  # rows where the shift eases back to 0, so the crop's bottom edge never moves
SHADE_GAIN = 1.0  # shade alpha = clip(SHADE_GAIN * stretch, 0, SHADE_MAX); stretch = 1 - d source / d row
SHADE_MAX = 0.92  # a little of the lips' own texture stays visible through the shade
MOUTH_BGR = (0.08, 0.10, 0.25)  # dark red-brown inner mouth, BGR in [0, 1]


def write_baseline(folder: Path) -> ModelSpec:
    """Write model.onnx and model.json for the built-in model into `folder`; return the spec."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = source_stamp()
    write_atomic(folder / ONNX_NAME, build_graph().SerializeToString())
    spec = ModelSpec(
        name="baseline",
        kind="baseline",
        notes="Built-in placeholder, not a learned model: drops the jaw of the face itself with loudness.",
    )
    spec.save(folder)
    _save_stamp(folder, stamp)
    return spec


def ensure_baseline(folder: Path) -> None:
    """(Re)write the built-in model if it is missing or was written by another version of this file."""
    stamp = source_stamp()
    if _stamped(folder, stamp):  # written by this very source: no need to build the graph to compare
        return
    try:
        current = (folder / ONNX_NAME).read_bytes() == build_graph().SerializeToString()
        current = current and (folder / SPEC_NAME).is_file()
    except FileNotFoundError:
        current = False
    if current:
        _save_stamp(folder, stamp)
        return
    try:
        write_baseline(folder)
    except OSError as exc:
        if not (folder / SPEC_NAME).is_file():
            raise
        log.warning("baseline_not_updated", folder=str(folder), error=str(exc), using="the older baseline")


def source_stamp() -> str:
    """This file's bytes and the onnx version: the graph written depends on nothing else."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return f"{digest} onnx-{importlib.metadata.version('onnx')}"


def _stamped(folder: Path, stamp: str) -> bool:
    try:
        onnx_file = (folder / ONNX_NAME).stat()
        written = (folder / STAMP_NAME).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return False
    here = f"{stamp} {onnx_file.st_size} {onnx_file.st_mtime_ns}\n"
    return written == here and (folder / SPEC_NAME).is_file()


def _save_stamp(folder: Path, stamp: str) -> None:
    """After model.onnx is known current; a stamp that cannot be written only costs the next start time."""
    try:
        onnx_file = (folder / ONNX_NAME).stat()
        write_atomic(folder / STAMP_NAME, f"{stamp} {onnx_file.st_size} {onnx_file.st_mtime_ns}\n")
    except OSError as exc:
        log.warning("baseline_stamp_not_written", folder=str(folder), error=str(exc))


def build_graph() -> onnx.ModelProto:
    """The baseline as an ONNX model: mel (B,1,80,16), face (B,6,96,96) -> image (B,3,96,96) in [0,1]."""
    import onnx
    from onnx import helper

    nodes = _openness_nodes() + _warp_nodes() + _compose_nodes()
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
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])


def _openness_nodes() -> list[onnx.NodeProto]:
    from onnx import helper

    node = helper.make_node
    return [
        node("Slice", ["mel", "now_start", "now_end", "last_axis"], ["mel_now"]),
        node("ReduceMean", ["mel_now"], ["loudness"], axes=[1, 2, 3], keepdims=1),
        node("Sub", ["loudness", "quiet"], ["above_quiet"]),
        node("Div", ["above_quiet", "loud_range"], ["open_raw"]),
        node("Clip", ["open_raw", "zero", "one"], ["openness"]),
    ]


def _warp_nodes() -> list[onnx.NodeProto]:
    """Per column, the shift rises with a smoothstep from 0 above the mouth line to its full value below.

    shift = openness * drop(x); ramp = max(RAMP_PER_PX * shift, RAMP_MIN); t = clip((y - MOUTH_LINE) /
    ramp + OFFSET, 0, 1); output row y shows reference row y - shift * smoothstep(t) * settle(y). The
    ramp grows with the shift so the gap's height does too; OFFSET centres the split on MOUTH_LINE.
    """
    from onnx import TensorProto, helper

    node = helper.make_node
    return [
        node("Mul", ["openness", "drop"], ["shift"]),  # (B,1,1,96)
        node("Mul", ["shift", "ramp_per_px"], ["ramp_raw"]),
        node("Max", ["ramp_raw", "ramp_min"], ["ramp"]),
        node("Div", ["below_line", "ramp"], ["t_raw0"]),  # (1,1,96,1) / (B,1,1,96) -> (B,1,96,96)
        node("Add", ["t_raw0", "offset"], ["t_raw"]),
        node("Clip", ["t_raw", "zero", "one"], ["t"]),
        node("Mul", ["t", "t"], ["t2"]),
        node("Mul", ["t", "two"], ["t_twice"]),
        node("Sub", ["three", "t_twice"], ["three_less"]),
        node("Mul", ["t2", "three_less"], ["rise"]),
        node("Mul", ["shift", "settle"], ["shift_settled"]),
        node("Mul", ["rise", "shift_settled"], ["displacement"]),
        node("Sub", ["rows", "displacement"], ["source_row"]),
        node("Floor", ["source_row"], ["row0_f"]),
        node("Sub", ["source_row", "row0_f"], ["frac"]),
        node("Cast", ["row0_f"], ["row0_1"], to=TensorProto.INT64),
        node("Add", ["row0_1", "one_int"], ["row1_raw"]),
        node("Min", ["row1_raw", "last_row"], ["row1_1"]),
        node("Slice", ["face", "ref_start", "ref_end", "channel_axis"], ["reference"]),
        node("Slice", ["reference", "top_rows", "all_rows", "row_axis"], ["lower_face"]),
        node("Shape", ["lower_face"], ["ref_shape"]),
        node("Expand", ["row0_1", "ref_shape"], ["row0"]),
        node("Expand", ["row1_1", "ref_shape"], ["row1"]),
        node("GatherElements", ["lower_face", "row0"], ["upper"], axis=2),
        node("GatherElements", ["lower_face", "row1"], ["lower"], axis=2),
        node("Sub", ["lower", "upper"], ["step"]),
        node("Mul", ["step", "frac"], ["step_part"]),
        node("Add", ["upper", "step_part"], ["warped"]),
    ]


def _compose_nodes() -> list[onnx.NodeProto]:
    """stretch = 6 t (1 - t) * shift / ramp (the smoothstep's slope); alpha = clip(stretch * gain, 0, max);
    image = clip(warped + (MOUTH - warped) * alpha, 0, 1): the parted lips darken like an open mouth."""
    from onnx import helper

    node = helper.make_node
    return [
        node("Sub", ["one", "t"], ["t_rest"]),
        node("Mul", ["t", "t_rest"], ["bell"]),
        node("Div", ["shift_settled", "ramp"], ["slope"]),
        node("Mul", ["bell", "slope"], ["bell_slope"]),
        node("Mul", ["bell_slope", "shade_gain"], ["alpha_raw"]),  # shade_gain includes the 6
        node("Mul", ["alpha_raw", "lens"], ["alpha_lens"]),
        node("Clip", ["alpha_lens", "zero", "shade_max"], ["alpha"]),
        node("Sub", ["mouth", "warped"], ["towards_mouth"]),
        node("Mul", ["towards_mouth", "alpha"], ["darken"]),
        node("Add", ["warped", "darken"], ["mixed"]),
        node("Clip", ["mixed", "zero", "one"], ["lower_image"]),
        node("Slice", ["reference", "zero_int", "top_rows", "row_axis"], ["upper_face"]),
        node("Concat", ["upper_face", "lower_image"], ["image"], axis=2),
    ]


def jaw_drop() -> np.ndarray:
    """(96,) the downward shift in px at full openness, per column."""
    xs = np.arange(SIZE, dtype=np.float64)
    return JAW_DROP * np.exp(-(((xs - CENTRE_X) / JAW_HALF_WIDTH) ** 4))


def settle_rows() -> np.ndarray:
    """(96,) 1 down to SETTLE[0], easing to 0 at SETTLE[1]: the shift's weight per row."""
    u = np.clip((np.arange(SIZE, dtype=np.float64) - SETTLE[0]) / (SETTLE[1] - SETTLE[0]), 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * u)


def _constants() -> list[onnx.TensorProto]:
    from onnx import numpy_helper

    rows = np.arange(TOP_STILL, SIZE, dtype=np.float32)  # the warp works on rows TOP_STILL.. only
    xs = np.arange(SIZE, dtype=np.float64)
    floats = {
        "quiet": QUIET,
        "loud_range": LOUD - QUIET,
        "zero": 0.0,
        "one": 1.0,
        "two": 2.0,
        "three": 3.0,
        "ramp_per_px": RAMP_PER_PX,
        "ramp_min": RAMP_MIN,
        "offset": 0.5 - 0.5 / RAMP_PER_PX,  # the steepest row, t = 0.5, shows reference row MOUTH_LINE
        "shade_gain": 6.0 * SHADE_GAIN,
        "shade_max": SHADE_MAX,
    }
    arrays = {
        "drop": jaw_drop().reshape(1, 1, 1, SIZE),
        "lens": np.clip(1 - ((xs - CENTRE_X) / MOUTH_HALF_WIDTH) ** 2, 0, 1).reshape(1, 1, 1, SIZE),
        "settle": settle_rows()[TOP_STILL:].reshape(1, 1, -1, 1),
        "rows": (rows - TOP_STILL).reshape(1, 1, -1, 1),  # GatherElements indexes the lower rows
        "below_line": (rows - MOUTH_LINE).reshape(1, 1, -1, 1),
        "mouth": np.array(MOUTH_BGR, np.float32).reshape(1, 3, 1, 1),
    }
    ints = {
        "now_start": [0],
        "now_end": [NOW_COLUMNS],
        "last_axis": [3],
        "ref_start": [3],
        "ref_end": [6],
        "channel_axis": [1],
        "one_int": 1,
        "last_row": SIZE - 1 - TOP_STILL,
        "zero_int": [0],
        "top_rows": [TOP_STILL],
        "all_rows": [SIZE],
        "row_axis": [2],
    }
    tensors = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in floats.items()]
    tensors += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    return tensors + [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
