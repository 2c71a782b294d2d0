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


def direct_run(session: Any) -> Any:
    """``session.run`` without its per-call Python checks, for CPU sessions whose feeds the caller builds itself:
    ``InferenceSession.run`` checks the feed names, graph capture and OrtValue ownership in Python before it calls
    the binding, a few microseconds a call, several times that on a cold CPU (``loadtest/README.md``, issue 27
    part 4). The binding's ``run(output_names, feeds, run_options)`` still checks names, types and shapes in C++.
    Falls back to ``session.run`` when the binding is not where it has been (``_sess``) since ONNX Runtime 1.0."""
    inner = getattr(session, "_sess", None)
    run = getattr(inner, "run", None)
    if run is None:
        return session.run
    return lambda output_names, feeds: run(output_names, feeds, None)


__all__ = ["direct_run", "session", "session_options"]
