"""Backends: every searcher returns the same top-k as exact numpy search; the CPU backend as built."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol import ann
from serving.artifact import ArtifactError, load_artifact
from serving.backends import (
    FaissArtifactSearcher,
    FaissCpuSearcher,
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


def _written_index(tmp_path: Path, factory: str, items: np.ndarray, params: dict) -> tuple[Path, dict]:
    """An index as export writes it (``protocol.ann.build`` + ``faiss.write_index``) and its manifest entry."""
    import faiss

    built = ann.build(factory, items)
    path = tmp_path / "index.faiss"
    faiss.write_index(built.index, str(path))
    entry = {"kind": built.kind, "factory": factory, "file": path.name, "params": params, "recall_at_10": 0.9,
             "queries": 10, "query_source": "test", "build_s": built.build_s}
    return path, entry


def test_artifact_hnsw_index_is_close_to_exact_and_always_returns_k_valid_items(tmp_path: Path) -> None:
    items, queries = _data(n=3000, d=16, b=64, seed=1)
    path, entry = _written_index(tmp_path, "HNSW16", items, {"efSearch": 64})
    hnsw = FaissArtifactSearcher(path, entry, items, threads=1)
    ref = NumpySearcher(items).search(queries, 10)
    scores, ids = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), ref[1].tolist())])
    assert recall >= 0.9
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, ids - 1, axis=1), rtol=1e-5, atol=1e-5)
    _, deep = hnsw.search(queries[:4], 700)  # k far above efSearch (over-fetch): still k distinct valid ids
    assert deep.shape == (4, 700) and deep.min() >= 1 and deep.max() <= len(items)
    assert all(len(set(row)) == 700 for row in deep.tolist())
    info = hnsw.describe()
    assert info["type"] == "IndexHNSWFlat" and info["params"] == {"efSearch": 64} and "not rebuilt" in info["loaded"]


def test_artifact_index_rows_it_cannot_fill_come_from_the_exact_scan(tmp_path: Path) -> None:
    items, queries = _data(n=400, d=8, b=3, seed=2)
    path, entry = _written_index(tmp_path, "IVF8,Flat", items, {"nprobe": 1})
    ivf = FaissArtifactSearcher(path, entry, items, threads=1)
    real = ivf.index

    class Holes:  # the probe leaves the last 3 places of row 1 empty (-1), as FAISS does when its lists run dry
        ntotal = real.ntotal

        def search(self, q, k, params=None):
            scores, rows = real.search(q, k)
            rows[1, -3:] = -1
            return scores, rows

    ivf.index = Holes()
    scores, ids = ivf.search(queries, 10)
    exact = NumpySearcher(items).search(queries[1:2], 10)
    assert ids.min() >= 1
    assert_same_topk((scores[1:2], ids[1:2]), exact)


def test_artifact_index_that_does_not_match_the_items_is_an_artifact_error(tmp_path: Path) -> None:
    items, _ = _data(n=400, d=8)
    path, entry = _written_index(tmp_path, "IVF8,Flat", items, {"nprobe": 2})
    with pytest.raises(ArtifactError, match=r"index\.faiss: index holds 400 x 8 vectors, items.npy is 399 x 8"):
        FaissArtifactSearcher(path, entry, items[:-1], threads=1)
    with pytest.raises(ArtifactError, match=r"cannot set index.params efSearch=3"):
        FaissArtifactSearcher(path, {**entry, "params": {"efSearch": 3}}, items, threads=1)


def test_cpu_backend_from_artifact(artifact_v1: Path) -> None:
    art = load_artifact(artifact_v1)
    backend = create_backend(art, "cpu", threads=1, index=IndexSpec(scoring="faiss"))
    info = backend.describe()
    assert info["encoder"]["providers"] == ["CPUExecutionProvider"]
    assert info["index"]["type"] == "IndexFlatIP" and info["device"] == "cpu"
    assert info["index"]["chosen_because"].startswith("scoring=faiss (setting); index=artifact: the artifact records "
                                                      "no index")
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
