"""HTTP serving of exported SSI students: ONNX Runtime encoder + FAISS item index, micro-batched.

Run with ``python -m serving`` (``--help`` lists the settings) or ``uvicorn serving.app:app``.
"""
