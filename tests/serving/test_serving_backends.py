"""Backends: every searcher returns the same top-k as exact numpy search; the CPU backend as built."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.artifact import load_artifact
from serving.backends import (
    FaissCpuSearcher,
    FaissHnswSearcher,
    IndexSpec,
    NumpySearcher,
    create_backend,
    cuda_status,
    exact_topk,
)


def _data(n: int = 500, d: int = 16, b: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((b, d)).astype(np.float32)


def assert_same_topk(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    """Same ids in the same order, scores equal up to float32 rounding."""
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a[1], b[1])


def test_exact_topk_orders_by_score_then_id() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.9]], dtype=np.float32)
    vals, ids = exact_topk(scores, 4)
    assert ids.tolist() == [[2, 5, 1, 3]]  # internal ids = column + 1; ties -> smaller id first
    np.testing.assert_allclose(vals, [[0.9, 0.9, 0.5, 0.5]], rtol=1e-6)


@pytest.mark.parametrize("k", [1, 10, 499, 500, 800])
def test_faiss_cpu_equals_numpy_exact(k: int) -> None:
    items, queries = _data()
    ref = NumpySearcher(items).search(queries, k)
    got = FaissCpuSearcher(items, threads=1).search(queries, k)
    assert got[1].shape == (len(queries), min(k, len(items)))
    assert got[1].min() >= 1 and got[1].max() <= len(items)
    assert_same_topk(got, ref)


def test_hnsw_is_close_to_exact_and_always_returns_k_valid_items() -> None:
    items, queries = _data(n=3000, d=16, b=64, seed=1)
    hnsw = FaissHnswSearcher(items, threads=1, m=16, ef_search=64)
    assert 0.9 <= hnsw.recall_at_10 <= 1.0
    ref = NumpySearcher(items).search(queries, 10)
    scores, ids = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), ref[1].tolist())])
    assert recall >= 0.9
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, ids - 1, axis=1), rtol=1e-5, atol=1e-5)
    _, deep = hnsw.search(queries[:4], 700)  # k far above ef_search: still k distinct valid ids
    assert deep.shape == (4, 700) and deep.min() >= 1 and deep.max() <= len(items)
    assert all(len(set(row)) == 700 for row in deep.tolist())
    assert hnsw.describe()["type"] == "IndexHNSWFlat" and hnsw.describe()["recall_at_10_vs_exact"] >= 0.9


def test_hnsw_rows_the_graph_cannot_fill_come_from_the_exact_scan() -> None:
    items, queries = _data(n=400, d=8, b=3, seed=2)
    hnsw = FaissHnswSearcher(items, threads=1, m=8, ef_search=16)
    real = hnsw.index

    class Holes:  # the graph leaves the last 3 places of row 1 empty (-1), as FAISS does when it runs dry
        ntotal = real.ntotal

        def search(self, q, k, params=None):
            scores, rows = real.search(q, k, params=params)
            rows[1, -3:] = -1
            return scores, rows

    hnsw.index = Holes()
    scores, ids = hnsw.search(queries, 10)
    exact = NumpySearcher(items).search(queries[1:2], 10)
    assert ids.min() >= 1
    assert_same_topk((scores[1:2], ids[1:2]), exact)


def test_cpu_backend_with_hnsw_index(artifact_v1: Path) -> None:
    art = load_artifact(artifact_v1)
    backend = create_backend(art, "cpu", threads=1, index=IndexSpec("hnsw", hnsw_m=8, hnsw_ef_search=32))
    info = backend.describe()["index"]
    assert info["type"] == "IndexHNSWFlat" and info["m"] == 8 and info["ef_search"] == 32
    q = backend.encode(np.ones((2, art.max_len), dtype=np.int64), np.zeros(2, dtype=np.int64))
    _, ids = backend.search(q, 10)
    assert ids.shape == (2, 10) and ids.min() >= 1 and ids.max() <= art.num_items


def test_cpu_backend_from_artifact(artifact_v1: Path) -> None:
    art = load_artifact(artifact_v1)
    backend = create_backend(art, "cpu", threads=1, index=IndexSpec(scoring="faiss"))
    info = backend.describe()
    assert info["encoder"]["providers"] == ["CPUExecutionProvider"]
    assert info["index"]["type"] == "IndexFlatIP" and info["device"] == "cpu"
    assert info["index"]["chosen_because"] == "scoring=faiss (setting)"
    hist = np.zeros((3, art.max_len), dtype=np.int64)
    hist[:, -3:] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    q = backend.encode(hist, np.array([0, 1, 2]))
    assert q.shape == (3, art.dim) and q.dtype == np.float32
    np.testing.assert_allclose(backend.score_all(q), q @ art.items.T, rtol=1e-6)
    assert_same_topk(backend.search(q, 20), exact_topk(q @ art.items.T, 20))
    cand = np.array([[3, 1, 2], [9, 8, 7], [1, 1, 1]])
    np.testing.assert_allclose(backend.score_batch(q, cand), np.einsum("bd,bcd->bc", q, art.items[cand - 1]),
                               rtol=1e-6)
    backend.warmup([1, 2, 5], art.max_len)


def test_auto_device_without_cuda_is_cpu(artifact_v1: Path) -> None:
    status = cuda_status()
    if any(status.values()):
        pytest.skip("a CUDA runtime is present")
    backend = create_backend(load_artifact(artifact_v1), "auto", threads=1)
    assert backend.describe()["device"] == "cpu"
    with pytest.raises(RuntimeError, match="device=cuda"):
        create_backend(load_artifact(artifact_v1), "cuda", threads=1)


def test_cpu_server_path_never_imports_torch(artifact_v1: Path) -> None:
    code = (
        "import sys\n"
        "from serving.config import Settings\n"
        "from serving.engine import load_state\n"
        "from serving.app import create_app\n"
        f"s = Settings(artifact_path={str(artifact_v1)!r}, device='auto')\n"
        "state = load_state(s)\n"
        "create_app(s, state=state)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok', state.backend.name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


# ------------------------------------------------------------------------------------------------ GPU


def _faiss_gpu() -> bool:
    return cuda_status()["faiss_gpu"]


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _faiss_gpu(), reason="needs faiss-gpu and a CUDA GPU")
@pytest.mark.parametrize("k", [1, 10, 500, 2048, 2100])
def test_faiss_gpu_equals_numpy_exact(k: int) -> None:
    from serving.backends import FaissGpuSearcher

    items, queries = _data(n=3000, d=32)
    assert_same_topk(FaissGpuSearcher(items).search(queries, k), NumpySearcher(items).search(queries, k))


@pytest.mark.gpu
@pytest.mark.skipif(not _torch_cuda(), reason="needs torch with CUDA")
@pytest.mark.parametrize("k", [1, 10, 500, 3000])
def test_torch_cuda_equals_numpy_exact(k: int) -> None:
    from serving.backends import TorchCudaSearcher

    items, queries = _data(n=3000, d=32)
    assert_same_topk(TorchCudaSearcher(items).search(queries, k), NumpySearcher(items).search(queries, k))


@pytest.mark.gpu
@pytest.mark.skipif(not (_faiss_gpu() or _torch_cuda()), reason="needs a CUDA GPU")
def test_cuda_backend_reports_what_really_runs(artifact_v1: Path) -> None:
    art = load_artifact(artifact_v1)
    gpu = create_backend(art, "cuda", threads=1)
    cpu = create_backend(art, "cpu", threads=1)
    info = gpu.describe()
    assert info["encoder"]["providers"] == gpu.encoder.session.get_providers()
    assert info["device"] == "cuda" or info["encoder"]["providers"][0] == "CUDAExecutionProvider"
    hist = np.zeros((4, art.max_len), dtype=np.int64)
    hist[:, -2:] = [[1, 2], [3, 4], [5, 6], [7, 8]]
    users = np.array([0, 1, 2, 3])
    q_gpu, q_cpu = gpu.encode(hist, users), cpu.encode(hist, users)
    np.testing.assert_allclose(q_gpu, q_cpu, rtol=1e-4, atol=1e-5)
    assert_same_topk(gpu.search(q_cpu, 50), cpu.search(q_cpu, 50))
