"""Search indexes by inner product from FAISS's own tooling: factory strings, their search knob, recall against exact.

Shared by ``export/`` (builds the index that travels in the artifact and measures it), ``serving/`` (reads it
back with ``faiss.read_index`` and sets its knob) and ``loadtest/scale.py`` (the catalogue-scale benchmark), so
that "recall@10 against exact" means one thing everywhere. Nothing here is an ANN of its own: every index is
``faiss.index_factory(d, factory, METRIC_INNER_PRODUCT)``, its knob is set with ``faiss.ParameterSpace``, and it
is saved with ``faiss.write_index``. FAISS is imported inside the functions (numpy only at import).

Kinds (``kind_of``): ``flat`` (exact: ``Flat``), ``ivf`` (``IVFn,Flat``, knob ``nprobe``), ``ivfpq``
(``IVFn,PQm...``, knob ``nprobe``), ``hnsw`` (``HNSWm[,Flat]``, knob ``efSearch``). An IVF's coarse quantizer may
itself be a graph (``IVFn_HNSW32,Flat``, FAISS's guideline above ~1M rows for faster assignment), but
``ivf_factory`` keeps the exact one: by inner product the graph quantizer capped recall@10 at .91 on 10^6
student-like rows (nprobe 512 of 4000) where the flat quantizer goes on rising (loadtest/results/scale-*.md).
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

KNOBS = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch", "flat": None}
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
EF_SEARCHES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
TRAIN_PER_LIST = 64  # IVF training rows per list (FAISS warns below 39; its own cap is 256)
HNSW_QUANTIZER_MIN_ITEMS = 10**12  # ivf_factory's HNSW coarse quantizer from here: off (below)


def kind_of(factory: str) -> str:
    """``flat`` | ``ivf`` | ``ivfpq`` | ``hnsw`` for a factory string; ValueError for any other."""
    f = factory.replace(" ", "")
    if f in ("Flat", "IDMap,Flat"):
        return "flat"
    if re.match(r"^HNSW\d+(,Flat)?$", f):
        return "hnsw"
    if re.match(r"^IVF\d+(_HNSW\d+)?,Flat$", f):
        return "ivf"
    if re.match(r"^IVF\d+(_HNSW\d+)?,PQ\d+(x\d+)?(fs)?$", f):
        return "ivfpq"
    raise ValueError(f"index factory string {factory!r} is not one of Flat, IVFn[_HNSWm],Flat, IVFn[_HNSWm],PQm[xb], "
                     "HNSWm[,Flat]")


def knob_values(kind: str, factory: str) -> tuple[int, ...]:
    """The values of the kind's knob to sweep, ascending (nprobe capped at the list count)."""
    if kind in ("ivf", "ivfpq"):
        nlist = nlist_of(factory)
        return tuple(v for v in NPROBES if v <= nlist) or (nlist,)
    if kind == "hnsw":
        return EF_SEARCHES
    return ()


def nlist_of(factory: str) -> int:
    m = re.match(r"^IVF(\d+)", factory.replace(" ", ""))
    return int(m.group(1)) if m else 0


def ivf_lists(n: int, per_sqrt: float = 4.0) -> int:
    """IVF list count for ``n`` rows: ``per_sqrt * sqrt(n)`` (FAISS's guideline: 4..16 sqrt(N)), at least 1."""
    return max(1, round(per_sqrt * math.sqrt(n)))


def pq_subquantizers(d: int) -> int:
    """PQ subquantizers for ``d`` dims: the divisor of d nearest d / 3 (about 3 dims per byte-sized code)."""
    divisors = [m for m in range(1, d + 1) if d % m == 0]
    return min(divisors, key=lambda m: (abs(m - d / 3), -m))


def ivf_factory(n: int, d: int, pq: bool = False, per_sqrt: float = 4.0) -> str:
    """``IVF<lists>[_HNSW32],Flat`` or ``...,PQ<m>`` for ``n`` rows of ``d`` dims."""
    quantizer = "_HNSW32" if n >= HNSW_QUANTIZER_MIN_ITEMS else ""
    return f"IVF{ivf_lists(n, per_sqrt)}{quantizer}," + (f"PQ{pq_subquantizers(d)}" if pq else "Flat")


@dataclass
class Built:
    index: Any  # a faiss.Index
    factory: str
    kind: str
    knob: str | None
    train_s: float
    add_s: float
    train_rows: int

    @property
    def build_s(self) -> float:
        return self.train_s + self.add_s


def build(factory: str, items: np.ndarray, train_per_list: int = TRAIN_PER_LIST, seed: int = 0,
          quantizer: Any = None) -> Built:
    """``faiss.index_factory(d, factory, METRIC_INNER_PRODUCT)``, trained on a sample of ``train_per_list`` rows
    per IVF list (all rows when fewer), then every row added (row i = item i + 1). Times both steps.

    ``quantizer``: a trained coarse quantizer of the same list count (another IVF's, ``coarse_quantizer``) that
    this IVF takes a copy of, so that its training is only the codec's (FAISS skips a trained quantizer)."""
    import faiss

    kind = kind_of(factory)
    items = np.ascontiguousarray(items, dtype=np.float32)
    index = faiss.index_factory(items.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if quantizer is not None:
        ivf = faiss.extract_index_ivf(index)
        if quantizer.ntotal != ivf.nlist or quantizer.d != ivf.d:
            raise ValueError(f"quantizer of {quantizer.ntotal} x {quantizer.d} for {factory}")
        copy = faiss.clone_index(quantizer)
        copy.this.disown()  # the IVF owns (and frees) its quantizer
        ivf.quantizer = copy
        ivf.own_fields = True
    if kind == "ivfpq":  # the factory turns on polysemous training (Hamming filtering, unused here): minutes at 10^7
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    t0 = time.perf_counter()
    rows = 0
    if not index.is_trained:
        want = max(nlist_of(factory), 1) * train_per_list
        if kind == "ivfpq":
            want = max(want, 256 * 64)  # PQ codebooks of 256 centroids need a few thousand rows
        if want < len(items):
            sample = items[np.sort(np.random.default_rng(seed).choice(len(items), size=want, replace=False))]
        else:
            sample = items
        rows = len(sample)
        index.train(sample)
    t1 = time.perf_counter()
    index.add(items)
    t2 = time.perf_counter()
    return Built(index, factory, kind, KNOBS[kind], t1 - t0, t2 - t1, rows)


def coarse_quantizer(index: Any) -> Any:
    """The trained coarse quantizer of an IVF index (for ``build(..., quantizer=)``)."""
    import faiss

    return faiss.extract_index_ivf(index).quantizer


def set_knob(index: Any, knob: str | None, value: int | None) -> None:
    """Set the search knob (``nprobe`` / ``efSearch``) with ``faiss.ParameterSpace``; no-op for exact indexes."""
    if knob is None or value is None:
        return
    import faiss

    faiss.ParameterSpace().set_index_parameter(index, knob, int(value))


def get_knob(index: Any, knob: str | None) -> int | None:
    import faiss

    if knob == "nprobe":
        return int(faiss.extract_index_ivf(index).nprobe)
    if knob == "efSearch":
        return int(faiss.downcast_index(index).hnsw.efSearch)
    return None


def query_rows(num_users: int, limit: int, seed: int = 0) -> np.ndarray:
    """Which users' test histories serve as queries: every row when there are at most ``limit``, else ``limit``
    rows drawn without replacement (``seed``), in ascending order. Export tunes an index on the even positions
    of this list and measures it on the odd ones (held out); a test can draw the same users again."""
    rows = np.arange(num_users, dtype=np.int64)
    if num_users > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
    return rows


def exact_ids(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) row numbers of the exact top-k by inner product (``faiss.knn``: blocked BLAS, no copy of items)."""
    import faiss

    _, ids = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(items, dtype=np.float32),
                       k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def recall_at_k(got: np.ndarray, want: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |top-k found ∩ exact top-k| / k (row numbers; -1 in ``got`` never matches)."""
    got, want = np.asarray(got)[:, :k], np.asarray(want)[:, :k]
    if len(want) == 0 or k == 0:
        return 1.0
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, want))
    return hits / (k * len(want))


def tune(index: Any, knob: str | None, values: Sequence[int], queries: np.ndarray, want: np.ndarray,
         target: float, k: int = 10) -> tuple[int | None, float, list[dict[str, float]]]:
    """The smallest knob value (a monotone sweep, ascending) whose recall@k against ``want`` reaches ``target``:
    (value, its recall, every step tried). When none reaches it: the last value and its recall."""
    if knob is None:
        _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        r = recall_at_k(got, want, k)
        return None, r, [{"value": 0, "recall": r}]
    steps: list[dict[str, float]] = []
    value, r = None, 0.0
    for value in values:
        set_knob(index, knob, value)
        _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        r = recall_at_k(got, want, k)
        steps.append({"value": int(value), "recall": r})
        if r >= target:
            break
    return value, r, steps


def single_query_ms(index: Any, queries: np.ndarray, k: int, max_queries: int = 1000,
                    max_seconds: float = 20.0, min_queries: int = 100) -> np.ndarray:
    """Milliseconds of each one-query search (``queries`` in order), stopping after ``max_queries`` or once
    ``max_seconds`` are spent (but not before ``min_queries``)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out: list[float] = []
    start = time.perf_counter()
    for i in range(min(max_queries, len(q))):
        t0 = time.perf_counter()
        index.search(q[i:i + 1], k)
        out.append(1e3 * (time.perf_counter() - t0))
        if i + 1 >= min_queries and time.perf_counter() - start > max_seconds:
            break
    return np.asarray(out)


def serialized_bytes(index: Any) -> int:
    """Size of ``faiss.serialize_index(index)``: what ``write_index`` puts on disk."""
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def describe(built_or_index: Any) -> str:
    """A short human name for an index object (its class)."""
    import faiss

    return type(faiss.downcast_index(built_or_index)).__name__
