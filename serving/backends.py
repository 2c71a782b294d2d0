"""Inference backends behind one small interface: ``encode`` (ONNX Runtime) and ``search`` / ``score``.

- CPU: ORT ``CPUExecutionProvider`` with a small intra-op thread count + exact search by one matmul + top-k
  per batch in ONNX Runtime (``serving.scoring.OrtSearcher``) or numpy (``MatmulSearcher``), or FAISS
  ``IndexFlatIP``, chosen per artifact by the
  ``scoring`` setting (``serving.scoring.choose_scoring``), or the approximate index the artifact carries
  (``FaissArtifactSearcher``: IVF or HNSW built and measured at export, read with ``faiss.read_index``).
- CUDA: ORT ``CUDAExecutionProvider`` (checked with ``session.get_providers()``, never assumed) +
  a FAISS GPU flat index (k capped at 2048; larger fetches fall back to an exact matmul).
- CUDA without faiss-gpu: torch on CUDA for search (exact top-k by matmul). torch is imported lazily
  in that backend only; the CPU path never imports it.
- ``NumpySearcher`` (= ``MatmulSearcher``): exact top-k in numpy, the reference every backend must agree
  with (higher score first, ties by the smaller id).

All searchers return internal item ids (1..N, row i of the item table is id i + 1).
Only the batching worker thread calls a backend once it is serving (FAISS GPU indexes are not
thread-safe); warm-up runs before the backend is handed to the worker.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protocol import ann, onnx_runtime
from serving.artifact import Artifact, ArtifactError
from serving.scoring import (
    MATMUL_MAX_ITEMS,
    FusedOrtRanker,
    MatmulSearcher,
    OrtSearcher,
    choose_scoring,
    settle_ties,
    topk,
)

log = logging.getLogger("serving.backends")
FAISS_GPU_K_CAP = 2048


# --------------------------------------------------------------------------------------------- encoder


class OrtEncoder:
    """The artifact's ONNX encoder in an ONNX Runtime session: (B, L) histories [+ users] -> (B, D)."""

    def __init__(self, artifact: Artifact, use_cuda: bool, threads: int) -> None:
        import onnxruntime as ort

        providers: list[Any] = ["CPUExecutionProvider"]
        if use_cuda:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            self.session = onnx_runtime.session(artifact.encoder_path, threads, providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own types (Fail, InvalidGraph, ...)
            raise ArtifactError(f"{artifact.encoder_path}: ONNX Runtime cannot load it ({_short(e)})") from None
        self.providers: list[str] = list(self.session.get_providers())
        self.on_cuda = self.providers[0] == "CUDAExecutionProvider"
        self.version = ort.__version__
        self.uses_user = artifact.uses_user
        self.output_name = artifact.encoder["output_name"]
        self.dim = artifact.dim
        self.path = artifact.encoder_path

    def encode(self, history: np.ndarray, users: np.ndarray) -> np.ndarray:
        """(B, L) int64 left-padded histories and (B,) int64 model user ids (0 = anonymous) -> (B, D)."""
        feeds = {"history": np.ascontiguousarray(history, dtype=np.int64)}
        if self.uses_user:
            feeds["user"] = np.ascontiguousarray(users, dtype=np.int64)
        (out,) = self.session.run([self.output_name], feeds)
        return np.ascontiguousarray(out, dtype=np.float32)

    def check_output(self, history: np.ndarray, users: np.ndarray) -> None:
        """Run once and check the real output shape against the item table (warm-up)."""
        try:
            out = self.encode(history, users)
        except Exception as e:  # noqa: BLE001 - any failure here means the graph is unusable
            raise ArtifactError(f"{self.path}: encoder failed on a ({history.shape[0]}, {history.shape[1]}) "
                                f"batch ({_short(e)})") from None
        if out.shape != (history.shape[0], self.dim):
            raise ArtifactError(f"{self.path}: ONNX output shape {tuple(out.shape)} does not match "
                                f"({history.shape[0]}, {self.dim}) (batch, items.npy dim)")
        if not np.isfinite(out).all():
            raise ArtifactError(f"{self.path}: encoder produced NaN or infinite values during warm-up")

    def describe(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", "version": self.version, "providers": self.providers}


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


# ------------------------------------------------------------------------------------------- searchers


class Searcher(Protocol):
    """Top-k by inner product over the item table."""

    index_type: str
    device: str
    supports_mask: bool  # True: search_masked(queries, k, exclude) scores excluded items -inf (no over-fetch)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, D) float32 queries -> (scores (B, k) float32, internal ids (B, k) int64), best first."""
        ...

    def describe(self) -> dict[str, Any]: ...


def exact_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of (B, N) scores by value, ties broken by the smaller id. Returns (scores, internal ids)."""
    return topk(scores, k)


NumpySearcher = MatmulSearcher  # exact top-k by a float32 matmul in numpy: the reference, and the CPU default


class FaissCpuSearcher:
    """FAISS ``IndexFlatIP`` (exact inner product) on the CPU; rows re-sorted by ``scoring.topk``'s rule
    (ties: smaller id first), so that it answers exactly as the matmul path."""

    index_type = "IndexFlatIP"
    device = "cpu"
    supports_mask = False

    def __init__(self, items: np.ndarray, threads: int) -> None:
        import faiss

        faiss.omp_set_num_threads(threads)
        self.index = faiss.IndexFlatIP(items.shape[1])
        self.index.add(items)
        self.items = items
        self.version = faiss.__version__

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores, rows = self.index.search(q, min(k + 1, self.index.ntotal))  # one more: see settle_ties
        return settle_ties(scores, rows.astype(np.int64) + 1, k, q, self.items)

    def describe(self) -> dict[str, Any]:
        return {"type": self.index_type, "library": f"faiss {self.version}", "device": self.device,
                "ntotal": int(self.index.ntotal)}


@dataclass(frozen=True)
class IndexSpec:
    """How the CPU ranks the whole catalogue: ``artifact`` (the default) = the index the artifact carries (built
    and measured at export, read with ``faiss.read_index``; exact search when the artifact carries an exact one or
    none), ``flat`` = exact search whatever it carries; for exact search, the scoring path
    (``serving.scoring.choose_scoring``: auto | ort | matmul | faiss)."""

    kind: str = "artifact"
    scoring: str = "auto"
    matmul_max_items: int = MATMUL_MAX_ITEMS
    fuse: bool = True  # scoring ort on the CPU: the encoder and the top-k in one ONNX Runtime session


class FaissArtifactSearcher:
    """The artifact's own FAISS index (``index.faiss``: IVF or HNSW by inner product), read with
    ``faiss.read_index``, never rebuilt; its search knob (``nprobe`` / ``efSearch``) set from the manifest with
    ``faiss.ParameterSpace``.

    Approximate: its recall@10 against exact search, measured at export on held-out queries, is in the manifest
    and shown by ``/model``. A fetch deeper than an HNSW's ``efSearch`` (over-fetch for seen items) searches with
    ``efSearch`` raised to the fetch; rows the index cannot fill (an IVF probe that reaches fewer than k items)
    are answered by the exact scan."""

    device = "cpu"
    supports_mask = False

    def __init__(self, path: Path, entry: dict[str, Any], items: np.ndarray, threads: int) -> None:
        import faiss

        faiss.omp_set_num_threads(threads)
        self.faiss, self.path, self.entry = faiss, path, entry
        t0 = time.perf_counter()
        try:
            index = faiss.read_index(str(path))
        except Exception as e:  # noqa: BLE001 - faiss raises RuntimeError with a C++ message for any bad file
            raise ArtifactError(f"{path}: not a readable FAISS index ({_short(e)})") from None
        self.read_s = time.perf_counter() - t0
        n, d = items.shape
        if index.ntotal != n or index.d != d:
            raise ArtifactError(f"{path}: index holds {index.ntotal} x {index.d} vectors, items.npy is {n} x {d}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ArtifactError(f"{path}: index metric {index.metric_type} is not inner product")
        self.kind = str(entry["kind"])
        self.params = dict(entry["params"])
        for name, value in self.params.items():
            try:
                ann.set_knob(index, name, value)
            except Exception as e:  # noqa: BLE001 - ParameterSpace raises RuntimeError for a knob the index lacks
                raise ArtifactError(f"{path}: cannot set index.params {name}={value} ({_short(e)})") from None
        self.index = index
        self.index_type = type(faiss.downcast_index(index)).__name__
        self.ef_search = ann.get_knob(index, "efSearch") if self.kind == "hnsw" else None
        self.exact = MatmulSearcher(items)
        self.version = faiss.__version__

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ef_search is not None and k > self.ef_search:
            scores, rows = self.index.search(q, k, params=self.faiss.SearchParametersHNSW(efSearch=k))
        else:
            scores, rows = self.index.search(q, k)
        short = (rows < 0).any(axis=1)
        if short.any():
            scores[short], ids = self.exact.search(q[short], k)
            rows[short] = ids - 1
        return scores, rows.astype(np.int64) + 1

    def describe(self) -> dict[str, Any]:
        e = self.entry
        return {"type": self.index_type, "library": f"faiss {self.version}", "device": self.device,
                "ntotal": int(self.index.ntotal), "kind": self.kind, "factory": e["factory"], "params": self.params,
                "recall_at_10_vs_exact": e["recall_at_10"], "recall_queries": e["queries"],
                "recall_target": e.get("recall_target"), "query_source": e["query_source"],
                "build_s_at_export": e["build_s"], "loaded": f"{self.path.name} by faiss.read_index in "
                f"{self.read_s:.3f}s (not rebuilt)"}


class FaissGpuSearcher:
    """A FAISS flat inner-product index on GPU 0. k above 2048 falls back to an exact CPU matmul."""

    index_type = "GpuIndexFlatIP"
    device = "cuda"
    supports_mask = False

    def __init__(self, items: np.ndarray) -> None:
        import faiss

        self.resources = faiss.StandardGpuResources()
        cpu = faiss.IndexFlatIP(items.shape[1])
        cpu.add(items)
        self.index = faiss.index_cpu_to_gpu(self.resources, 0, cpu)
        self.fallback = NumpySearcher(items)
        self.version = faiss.__version__

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        if k + 1 > FAISS_GPU_K_CAP:
            return self.fallback.search(queries, k)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores, rows = self.index.search(q, min(k + 1, self.index.ntotal))  # one more: see settle_ties
        return settle_ties(scores, rows.astype(np.int64) + 1, k, q, self.fallback.items)

    def describe(self) -> dict[str, Any]:
        return {"type": self.index_type, "library": f"faiss {self.version}", "device": self.device,
                "ntotal": int(self.index.ntotal), "k_cap": FAISS_GPU_K_CAP}


class TorchCudaSearcher:
    """Exact top-k by a matmul on CUDA with torch (for GPU machines without faiss-gpu)."""

    index_type = "exact-matmul"
    device = "cuda"
    supports_mask = False

    def __init__(self, items: np.ndarray) -> None:
        import torch  # lazily: only this backend needs torch

        self.torch = torch
        self.items = torch.from_numpy(items).to("cuda")
        self.version = torch.__version__

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        k = min(k, self.items.shape[0])
        with torch.inference_mode():
            q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to("cuda")
            vals, idx = torch.topk(q @ self.items.T, k, dim=1)
        return vals.cpu().numpy(), idx.cpu().numpy().astype(np.int64) + 1

    def describe(self) -> dict[str, Any]:
        return {"type": self.index_type, "library": f"torch {self.version}", "device": self.device,
                "ntotal": int(self.items.shape[0])}


# ------------------------------------------------------------------------------------------- backend


@dataclass
class Backend:
    """One encoder plus one searcher over the same item table."""

    name: str
    encoder: OrtEncoder
    searcher: Searcher
    items: np.ndarray  # (N, D) float32 host copy, for candidate scoring and full-catalogue scores
    scoring: str = ""  # why this searcher ranks the catalogue (serving.scoring.choose_scoring), for /model
    fused: FusedOrtRanker | None = None  # encoder + exact top-k in one ORT call (scoring ort, fuse on)

    @property
    def on_cuda(self) -> bool:
        """True when the encoder or the index runs on a GPU."""
        return self.encoder.on_cuda or self.searcher.device == "cuda"

    def encode(self, history: np.ndarray, users: np.ndarray) -> np.ndarray:
        return self.encoder.encode(history, users)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.searcher.search(queries, k)

    def score(self, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Scores of one (D,) query for (C,) internal candidate ids: dot products with those rows."""
        return self.items[candidates - 1] @ query

    def score_batch(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(B, D) queries, (B, C) internal ids -> (B, C) scores."""
        return np.einsum("bd,bcd->bc", queries, self.items[candidates - 1])

    def score_all(self, queries: np.ndarray) -> np.ndarray:
        """(B, D) queries -> (B, N) scores over the whole item table."""
        return queries @ self.items.T

    def warmup(self, batch_sizes: list[int], max_len: int) -> None:
        """Run every batch shape once through encode and search; checks the encoder's real output."""
        for b in sorted(set(batch_sizes)):
            hist = np.zeros((b, max_len), dtype=np.int64)
            hist[:, -1] = 1 + (np.arange(b) % len(self.items))
            users = np.zeros(b, dtype=np.int64)
            self.encoder.check_output(hist, users)
            q = self.encode(hist, users)
            self.search(q, min(10, len(self.items)))
            if self.fused is not None:
                self.fused.rank(hist, users, 10, [np.zeros(0, dtype=np.int64)] * b)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.searcher.device, "encoder": self.encoder.describe(),
                "index": {**self.searcher.describe(), **({"chosen_because": self.scoring} if self.scoring else {})},
                "fused_encoder_topk": self.fused is not None}


def cuda_status() -> dict[str, bool]:
    """What the installed wheels can do on CUDA. torch is imported only when a CUDA driver is present."""
    import onnxruntime as ort

    out = {"ort_cuda": "CUDAExecutionProvider" in ort.get_available_providers(), "faiss_gpu": False,
           "torch_cuda": False}
    try:
        import faiss

        out["faiss_gpu"] = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception as e:  # noqa: BLE001 - faiss missing or a broken GPU runtime: no faiss GPU
        log.debug("faiss GPU unavailable: %r", e)
    if not out["faiss_gpu"] and _cuda_driver_present():
        out["torch_cuda"] = _torch_cuda_available()
    return out


def _cuda_driver_present() -> bool:
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


def _torch_cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch  # lazily: only on a machine with a CUDA driver

    return bool(torch.cuda.is_available())


def create_backend(artifact: Artifact, device: str = "auto", threads: int = 1,
                   index: IndexSpec = IndexSpec()) -> Backend:
    """Pick and build the backend for ``device`` (auto | cpu | cuda).

    auto and cuda prefer ORT CUDA + FAISS GPU, then torch on CUDA for search; auto falls back to the
    CPU backend when nothing runs on CUDA, cuda raises RuntimeError instead.
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if device == "cpu":
        return _cpu_backend(artifact, threads, index)
    status = cuda_status()
    if not any(status.values()):
        return _no_cuda(artifact, device, threads, index, "no CUDA-capable onnxruntime, faiss or torch found")
    encoder = OrtEncoder(artifact, use_cuda=status["ort_cuda"], threads=threads)
    if status["faiss_gpu"]:
        searcher: Searcher = FaissGpuSearcher(artifact.items)
    elif status["torch_cuda"]:
        searcher = TorchCudaSearcher(artifact.items)
    else:
        searcher, _ = _cpu_searcher(artifact, threads, index)
    if not encoder.on_cuda and searcher.device != "cuda":
        return _no_cuda(artifact, device, threads, index, f"ONNX Runtime providers in use: {encoder.providers}")
    if artifact.index_path is not None and searcher.device == "cuda":
        log.info("the artifact's %s index is a CPU index; the GPU flat index (exact) ranks on CUDA",
                 (artifact.index or {}).get("factory"))
    if status["ort_cuda"] and not encoder.on_cuda:
        log.warning("CUDAExecutionProvider is installed but not active (%s); encoder on CPU", encoder.providers)
    name = f"{'ort-cuda' if encoder.on_cuda else 'ort-cpu'}+{searcher.describe()['library'].split()[0]}-{searcher.device}"
    return Backend(name=name, encoder=encoder, searcher=searcher, items=artifact.items)


def _no_cuda(artifact: Artifact, device: str, threads: int, index: IndexSpec, why: str) -> Backend:
    if device == "cuda":
        raise RuntimeError(f"device=cuda but nothing runs on CUDA here ({why}); use --device cpu or auto")
    return _cpu_backend(artifact, threads, index)


def _cpu_searcher(artifact: Artifact, threads: int, index: IndexSpec = IndexSpec()) -> tuple[Searcher, str]:
    """The CPU searcher for ``index`` and the artifact, and why it was chosen."""
    items, entry = artifact.items, artifact.index
    if index.kind == "artifact" and artifact.index_path is not None and entry is not None:
        try:
            searcher = FaissArtifactSearcher(artifact.index_path, entry, items, threads)
        except ImportError:
            log.warning("faiss is not installed; the artifact's %s index is not used, exact matmul search instead",
                        entry["factory"])
            return MatmulSearcher(items), f"faiss not installed: exact matmul instead of the artifact's {entry['factory']}"
        log.info("artifact index %s (%s): recall@10 against exact %.4f on %s queries at export",
                 entry["factory"], entry["params"], entry["recall_at_10"], entry["queries"])
        return searcher, f"index=artifact: the artifact's {entry['factory']} ({entry.get('chosen_because', '')})"
    path, why = choose_scoring(index.scoring, len(items), index.matmul_max_items)
    if index.kind == "flat":
        where = "index=flat (setting): exact"
    elif entry is None:
        where = "index=artifact: the artifact records no index (exported before indexes travelled): exact"
    else:
        where = f"index=artifact: the artifact's index is exact ({entry.get('chosen_because', 'flat')})"
    why = f"{why}; {where}"
    if path == "faiss":
        try:
            return FaissCpuSearcher(items, threads), why
        except ImportError:
            log.warning("faiss is not installed; using exact numpy matmul search")
            return MatmulSearcher(items), f"faiss not installed: exact matmul; {where}"
    if path == "ort":
        try:
            return OrtSearcher(items, threads), why
        except ImportError:  # onnx (which builds the scoring graph) is not installed
            log.warning("onnx is not installed; exact numpy matmul search instead of the ONNX Runtime top-k")
            return MatmulSearcher(items), f"onnx not installed: exact numpy matmul; {where}"
    return MatmulSearcher(items), why


def _cpu_backend(artifact: Artifact, threads: int, index: IndexSpec = IndexSpec()) -> Backend:
    encoder = OrtEncoder(artifact, use_cuda=False, threads=threads)
    searcher, why = _cpu_searcher(artifact, threads, index)
    fused = None
    if index.fuse and isinstance(searcher, OrtSearcher):
        try:
            fused = FusedOrtRanker(artifact.encoder_path, encoder.output_name, encoder.uses_user, artifact.items,
                                   threads)
        except Exception as e:  # noqa: BLE001 - onnx/ORT raise their own types; two sessions still answer
            log.warning("cannot fuse the encoder with the top-k graph (%s); two ONNX Runtime calls per batch",
                        _short(e))
    return Backend(name=f"ort-cpu+{searcher.describe()['library'].split()[0]}-cpu", encoder=encoder,
                   searcher=searcher, items=artifact.items, scoring=why, fused=fused)
