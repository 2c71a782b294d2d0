"""GPU checks of an exported artifact (skipped without CUDA): ORT's CUDA provider and FAISS on the GPU."""

from __future__ import annotations

import numpy as np
import pytest

from export.onnx_export import ort_encode, ort_session
from export.verify import compare_topk, encoder_input, faiss_topk
from protocol import eval_examples, pad_left
from serving.artifact import load_artifact

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["hgn", "gru4rec"])
def artifact_and_batch(request, student_artifacts, export_ds):
    art = load_artifact(student_artifacts[request.param])
    inputs, _ = eval_examples(export_ds, "test")
    rows = np.arange(len(inputs), dtype=np.int64)
    hist = encoder_input(art, pad_left(inputs, art.max_len + 5))
    return art, hist, rows + 1


def test_ort_cuda_provider_is_active_and_agrees_with_cpu(artifact_and_batch):
    art, hist, users = artifact_and_batch
    cuda = ort_session(art.encoder_path, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cuda.get_providers()[0] == "CUDAExecutionProvider", (
        f"ONNX Runtime fell back to {cuda.get_providers()}; "
        "is onnxruntime-gpu installed (make venv on a GPU host)?"
    )
    cpu = ort_session(art.encoder_path)
    for start in range(0, len(hist), 256):
        sl = slice(start, start + 256)
        got, want = ort_encode(cuda, hist[sl], users[sl]), ort_encode(cpu, hist[sl], users[sl])
        assert np.abs(got - want).max() < 1e-3


def test_faiss_gpu_topk_equals_cpu(artifact_and_batch):
    faiss = pytest.importorskip("faiss")
    assert hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0, (
        "faiss has no GPU support (faiss-gpu)"
    )
    art, hist, users = artifact_and_batch
    queries = ort_encode(ort_session(art.encoder_path), hist, users)
    gpu, cpu = faiss_topk(art.items, queries, 20, gpu=True), faiss_topk(art.items, queries, 20)
    scores = np.pad(
        queries.astype(np.float64) @ art.items.T.astype(np.float64), ((0, 0), (1, 0))
    )  # column = id
    slack = 1e-5 * (1 + np.abs(scores).max(axis=1))  # float32 summation order only
    identical, near_tie, differ = compare_topk(gpu, cpu, scores, slack)
    assert differ == 0 and identical >= 0.99 * len(queries), (identical, near_tie, differ)
