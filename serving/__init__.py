"""HTTP serving of exported SSI students: ONNX Runtime encoder + FAISS item index, micro-batched.

Run with ``python -m serving`` (``--help`` lists the settings) or ``uvicorn --factory serving.app:create_app``
(``uvicorn serving.app:app`` works too: the app is built on first access, not at import).
"""
import os

# One BLAS thread per server process unless told otherwise, set before numpy loads OpenBLAS: the CPU
# scoring path is one matmul per batch on the event-loop thread, and idle BLAS threads would spin on the
# cores the loop and the other workers need. More cores = more processes (uvicorn --workers).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
