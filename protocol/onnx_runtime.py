"""One ONNX Runtime session recipe for every place that runs the artifact's graphs: the server's encoder and
exact top-k (``serving/``), the export's checks and encode-cost timing (``export/``) and the scale benchmark
(``loadtest/``), so that a latency measured offline is measured under the options the server runs with.

Sequential execution, one inter-op thread, ``threads`` intra-op threads, every graph optimisation, warnings
only. ONNX Runtime is imported inside the functions (the module costs nothing to import).
"""
from __future__ import annotations

import os
from typing import Any


def session_options(threads: int = 1) -> Any:
    """``onnxruntime.SessionOptions`` with the server's settings."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def session(model: str | os.PathLike | bytes, threads: int = 1, providers: list[Any] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``model`` (a path or serialized bytes), CPU unless ``providers``."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=session_options(threads),
                                providers=providers or ["CPUExecutionProvider"])


__all__ = ["session", "session_options"]
