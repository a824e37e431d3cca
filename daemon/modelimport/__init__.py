"""`lipsyncd model import`: Wav2Lip checkpoints and ONNX files, S3FD and YuNet detectors, variants.

torch is imported only inside the functions that convert PyTorch checkpoints, so importing this
package (or anything the daemon imports at run time) never loads it.
"""

from daemon.modelimport.api import (
    file_kind,
    import_checkpoint,
    import_model,
    list_detectors,
    list_models,
)
from daemon.modelimport.detector_import import import_s3fd, import_yunet
from daemon.modelimport.errors import ModelImportError
from daemon.modelimport.onnx_import import import_onnx, inspect_wav2lip_onnx
from daemon.modelimport.report import ImportReport, VariantCheck

__all__ = [
    "ImportReport",
    "ModelImportError",
    "VariantCheck",
    "file_kind",
    "import_checkpoint",
    "import_model",
    "import_onnx",
    "import_s3fd",
    "import_yunet",
    "inspect_wav2lip_onnx",
    "list_detectors",
    "list_models",
]
