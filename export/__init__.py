"""Turning a finished training run into a serving artifact (ONNX encoder + item table + manifest).

    python -m export <run-dir> [--out artifacts/serving]     build the artifact, point ``latest`` at it
    python -m export.verify <artifact-dir>                   check it against the torch model

The server never imports this package, nor this package the server: both use the artifact schema in
``protocol.artifact`` (file names, manifest fields, version, checksums).
"""

from export.artifact import DEFAULT_ROOT, build_artifact
from export.onnx_export import EXPORTERS, EncoderInfo, ExportError, export_encoder

__all__ = ["DEFAULT_ROOT", "EXPORTERS", "EncoderInfo", "ExportError", "build_artifact", "export_encoder"]
