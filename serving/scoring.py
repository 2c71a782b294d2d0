"""Exact top-k scoring on the CPU: one matmul + top-k per batch, in ONNX Runtime (``OrtSearcher``) or numpy
(``MatmulSearcher``), or FAISS; and which path to use.

Three exact paths rank the whole catalogue by inner product:

- ``ort``: one ONNX Runtime call per batch of a small graph built at load (``scoring_graph``): ``MatMul`` with
  the item table (a constant of the graph, packed once by ORT's MLAS GEMM), the excluded items set to -inf
  (``ScatterElements``), ``TopK``. Needs the ``onnx`` package to build the graph (else ``matmul``);
- ``matmul``: ``queries @ items.T`` for the whole batch in one numpy BLAS call, then a partial top-k per row
  (``topk``): the item table is read (and, from two rows on, packed again by the BLAS) once per batch;
- ``faiss``: FAISS ``IndexFlatIP``, which scans the table once per query below its BLAS threshold (20
  queries), and keeps a heap per query.

All give the same answer (``topk``'s rule: higher score first, ties by the smaller item id, at the k-th
place too: ONNX ``TopK`` puts the lower index first among equals; ``FaissCpuSearcher`` fetches one more item,
re-sorts its rows by the same rule and scores again the rare row whose k-th place is tied with what lies
beyond, ``settle_ties``); scores agree up to float32 rounding (the paths sum in different orders), so the
choice is about speed only. It is made per artifact by ``choose_scoring`` from the ``scoring`` setting:
``ort``, ``matmul`` or ``faiss`` as asked; ``auto`` (the default) takes ``ort`` for a catalogue of at most
``matmul_max_items`` items (default 262,144) and FAISS above it, where the (batch, N) score matrix and the
per-row selection get large. The measurements are in ``loadtest/README.md`` (``python -m serving.scoring
ARTIFACT`` repeats them on any machine). GPU backends keep their FAISS GPU (or torch) index, and an artifact
that carries an approximate index (``index=artifact``, ``serving.backends.FaissArtifactSearcher``) is
searched with it.

``/eval`` does not go through any of them: it scores every item (``Backend.score_all``) and ranks with the
protocol's pessimistic ties, so its metrics do not depend on this choice.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from protocol import onnx_runtime
from serving.config import MATMUL_MAX_ITEMS  # auto: matmul up to this many items (see the module docstring)


def select_topk(vals: np.ndarray, k: int, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of ``vals`` (B, M): (values (B, k), labels (B, k)), best first.

    ``labels`` (B, M) name the columns (default: the column index); ties are broken by the smaller label,
    also for the last place: when a group of equal values straddles the k-th place, the smallest labels of
    the group are kept (as FAISS's heaps and a stable sort do)."""
    b, m = vals.shape
    k = min(k, m)
    if labels is None:
        labels = np.broadcast_to(np.arange(m, dtype=np.int64), (b, m))
    if k <= 0 or b == 0:
        return np.zeros((b, 0), dtype=vals.dtype), np.zeros((b, 0), dtype=np.int64)
    if b == 1 and k < m:  # one row (an idle server's batch): the same steps on 1-D arrays, fewer numpy calls
        top_1, lab_1 = _select_row(vals[0], k, labels[0])
        return top_1[None, :], lab_1[None, :]
    if k < m:
        part = np.argpartition(vals, m - k, axis=1)[:, m - k:]
        top = np.take_along_axis(vals, part, axis=1)
        lab = np.take_along_axis(labels, part, axis=1)
        kth = top.min(axis=1)
        at_least = vals >= kth[:, None]
        if np.count_nonzero(at_least) > b * k:  # a tie at the k-th place in some row: keep its smallest labels
            for r in np.flatnonzero(np.count_nonzero(at_least, axis=1) > k).tolist():
                row, t = vals[r], kth[r]
                above = np.flatnonzero(row > t)
                equal = np.flatnonzero(row == t)
                equal = equal[np.argsort(labels[r, equal], kind="stable")][: k - len(above)]
                cols = np.concatenate([above, equal])
                top[r], lab[r] = row[cols], labels[r, cols]
    else:
        top, lab = np.array(vals, copy=True), np.array(labels, dtype=np.int64, copy=True)
    order = np.lexsort((lab, -top), axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(lab, order, axis=1)


def _select_row(row: np.ndarray, k: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``select_topk`` of one row (1-D), k < len(row)."""
    part = np.argpartition(row, len(row) - k)[len(row) - k:]
    top, lab = row[part], labels[part]
    t = top.min()
    if np.count_nonzero(row >= t) > k:  # a tie at the k-th place: keep the smallest labels of the tied group
        above = np.flatnonzero(row > t)
        equal = np.flatnonzero(row == t)
        equal = equal[np.argsort(labels[equal], kind="stable")][: k - len(above)]
        cols = np.concatenate([above, equal])
        top, lab = row[cols], labels[cols]
    order = np.lexsort((lab, -top))
    return top[order], lab[order]


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of ``scores`` (B, N): (scores (B, k) float32, internal ids (B, k) int64 = column + 1);
    best first, ties by the smaller id (``select_topk``)."""
    vals, cols = select_topk(scores, k)
    return vals.astype(np.float32, copy=False), cols + 1


def sort_rows(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a top-k answer re-sorted by ``topk``'s rule (score descending, then id ascending)."""
    order = np.lexsort((ids, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def settle_ties(scores: np.ndarray, ids: np.ndarray, k: int, queries: np.ndarray,
                items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An index's top ``k + 1`` (or top N) per row -> the top ``k`` by ``topk``'s rule.

    Rows are re-sorted (score descending, id ascending). A row whose k-th score is above its last fetched
    one holds every item tied with its k-th: it is exact. A row where they are equal may miss tied items
    with smaller ids (an index keeps an arbitrary part of a tie at its boundary, FAISS's BLAS path for
    one): it is scored again over the whole table, in numpy."""
    scores, ids = sort_rows(scores, ids)
    fetched = scores.shape[1]
    if fetched > k:
        redo = np.flatnonzero(scores[:, k - 1] == scores[:, fetched - 1])
        scores, ids = scores[:, :k].copy(), ids[:, :k].copy()
        if len(redo):
            exact = topk(np.ascontiguousarray(queries[redo], dtype=np.float32) @ items.T, k)
            scores[redo], ids[redo] = exact
    return scores, ids


BLOCK = 16  # items per block of the blocked top-k
BLOCKED_MIN_BLOCKS_PER_K = 4  # blocked top-k when the catalogue has at least this many blocks per asked item
BLOCKED_MIN_BATCH = 4  # ... and the batch has at least this many rows (below, one argpartition is cheaper)


class MatmulSearcher:
    """Exact top-k by one float32 BLAS matmul per batch, then a blocked top-k (numpy).

    The item table is stored transposed with its columns in block-interleaved order: item ``j * BLOCK + l``
    is column ``l * nb + j`` (``nb`` blocks), so that the scores of one batch, seen as (B, BLOCK, nb), give
    every block's best score with one vectorised max over the middle axis. The k-th largest block maximum
    ``t`` bounds the k-th largest score from below (k blocks each hold an item scoring >= t), so the top k
    lie in the blocks whose maximum is >= t: about k blocks of 16 items instead of the whole catalogue go
    through the exact selection (``select_topk``, ties by the smaller id). Measured on the Beauty table
    (12,101 x 51, k = 10): 1.5x faster than one argpartition over all items at batch 8, 2.2x at batch 32;
    slower below batch 4 (fixed costs), where one argpartition over all items is used instead.

    ``search_masked``: the caller's excluded items get a score of -inf before the top-k, so a request that
    leaves out its seen items needs no over-fetch."""

    index_type = "exact-matmul"
    device = "cpu"
    supports_mask = True

    def __init__(self, items: np.ndarray) -> None:
        self.items = items
        n, d = items.shape
        self.n = n
        self.nb = -(-n // BLOCK)
        width = self.nb * BLOCK
        cols = np.arange(n, dtype=np.int64)
        self.position = (cols % BLOCK) * self.nb + cols // BLOCK  # item column -> column in the stored table
        self.items_t = np.zeros((d, width), dtype=np.float32)
        self.items_t[:, self.position] = items.T
        self.label = np.empty(width, dtype=np.int64)  # stored column -> item column (padding: n, n+1, ...)
        self.label[self.position] = cols
        self.padding = np.setdiff1d(np.arange(width), self.position)
        self.label[self.padding] = n + np.arange(len(self.padding))
        self.block_lane = np.arange(BLOCK, dtype=np.int64)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(B, D) float32 queries -> (B, nb * BLOCK) float32 scores in the stored column order (padding -inf)."""
        s = np.ascontiguousarray(queries, dtype=np.float32) @ self.items_t
        if len(self.padding):
            s[:, self.padding] = -np.inf
        return s

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._topk(self.scores(queries), min(k, self.n))

    def search_masked(self, queries: np.ndarray, k: int, exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each row with ``exclude[i]`` (internal ids) scored -inf; rows may end in -inf entries
        when fewer than k items are left (the caller drops them)."""
        s = self.scores(queries)
        if len(exclude) == 1:  # one row: no row index to build
            if len(exclude[0]):
                s[0, self.position[exclude[0] - 1]] = -np.inf
        else:
            rows = [np.full(len(e), i, dtype=np.int64) for i, e in enumerate(exclude) if len(e)]
            if rows:
                s[np.concatenate(rows), self.position[np.concatenate([e for e in exclude if len(e)]) - 1]] = -np.inf
        return self._topk(s, min(k, self.n))

    def _topk(self, s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        b = s.shape[0]
        if k <= 0 or b == 0:
            return np.zeros((b, 0), dtype=np.float32), np.zeros((b, 0), dtype=np.int64)
        nb = self.nb
        if nb < BLOCKED_MIN_BLOCKS_PER_K * k or b < BLOCKED_MIN_BATCH:  # select over every item
            if b == 1 and k < s.shape[1]:
                top, lab = _select_row(s[0], k, self.label)
                return top[None, :], lab[None, :] + 1
            vals, cols = select_topk(s, k, np.broadcast_to(self.label, s.shape))
            return vals, cols + 1
        s3 = s.reshape(b, BLOCK, nb)
        block_max = s3.max(axis=1)  # (B, nb)
        t = np.partition(block_max, nb - k, axis=1)[:, nb - k]  # the k-th largest block maximum of each row
        rows, blocks = np.nonzero(block_max >= t[:, None])
        count = np.bincount(rows, minlength=b)
        start = np.zeros(b, dtype=np.int64)
        np.cumsum(count[:-1], out=start[1:])
        slot = np.arange(len(rows)) - start[rows]
        width = int(count.max())
        vals = np.full((b, width, BLOCK), -np.inf, dtype=np.float32)
        labels = np.full((b, width, BLOCK), np.iinfo(np.int64).max, dtype=np.int64)
        vals[rows, slot] = s3[rows, :, blocks]
        labels[rows, slot] = blocks[:, None] * BLOCK + self.block_lane  # item column of block j, lane l
        top, cols = select_topk(vals.reshape(b, -1), k, labels.reshape(b, -1))
        return top, cols + 1

    def describe(self) -> dict[str, Any]:
        return {"type": self.index_type, "library": f"numpy {np.__version__}", "device": self.device,
                "ntotal": self.n, "topk": f"blocked ({BLOCK} items per block)"}


SCORING_OPSET = 17  # ONNX opset of the scoring graph (TopK's tie rule and ScatterElements are as in opset 11+)


def scoring_graph(items: np.ndarray) -> bytes:
    """The ONNX model of ``OrtSearcher``: ``(query (B, D), exclude (B, E) int64, k (1,) int64) -> (scores (B, k),
    ids (B, k))``. Column 0 of the table is a zero vector (padding, always excluded), column ``j`` item ``j``, so a
    column index is an internal id. ``onnx`` only builds the graph; ONNX Runtime runs it."""
    from onnx import TensorProto, helper, numpy_helper

    n, d = items.shape
    table = np.zeros((d, n + 1), dtype=np.float32)
    table[:, 1:] = items.T
    minus_inf = helper.make_tensor("minus_inf", TensorProto.FLOAT, [1], [-np.inf])
    nodes = [
        helper.make_node("MatMul", ["query", "items_t"], ["all_scores"]),
        helper.make_node("Shape", ["exclude"], ["exclude_shape"]),
        helper.make_node("ConstantOfShape", ["exclude_shape"], ["excluded_scores"], value=minus_inf),
        helper.make_node("ScatterElements", ["all_scores", "exclude", "excluded_scores"], ["masked"], axis=1),
        helper.make_node("TopK", ["masked", "k"], ["scores", "ids"], axis=1, largest=1, sorted=1),
    ]
    graph = helper.make_graph(
        nodes, "exact_top_k",
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, ["batch", d]),
         helper.make_tensor_value_info("exclude", TensorProto.INT64, ["batch", "excluded"]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "k"]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "k"])],
        [numpy_helper.from_array(table, "items_t")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", SCORING_OPSET)])
    model.ir_version = 8  # readable by every onnxruntime the project supports (>= 1.19)
    return model.SerializeToString()


class OrtSearcher:
    """Exact top-k in one ONNX Runtime call per batch: the matmul with the item table, the excluded items scored
    -inf (``ScatterElements``), then ``TopK``, all in C++.

    The item table is a constant of the graph, so ONNX Runtime's MLAS packs it for its GEMM once, at load
    (numpy's BLAS packs the whole table again on every call of two rows or more). ``TopK`` returns ties in
    index order (the ONNX rule: "the element with the lower index appears first"), which is ``topk``'s rule:
    higher score first, ties by the smaller id, at the k-th place too. Measured against ``MatmulSearcher`` in
    ``loadtest/README.md`` (``python -m serving.scoring ARTIFACT``). Needs the ``onnx`` package to build the
    graph (``scoring_graph``); without it the backend falls back to ``MatmulSearcher``.

    ``search_masked``: as ``MatmulSearcher``'s (rows may end in -inf entries, id 0 among them, when fewer than
    k items are left; the caller drops them)."""

    index_type = "exact-ort"
    device = "cpu"
    supports_mask = True

    def __init__(self, items: np.ndarray, threads: int = 1) -> None:
        import onnxruntime as ort

        self.session = onnx_runtime.session(scoring_graph(items), threads)
        self.run = onnx_runtime.direct_run(self.session)
        self.items = items
        self.n = len(items)
        self.version = ort.__version__
        self._k = {}  # k -> its (1,) int64 input, made once per k
        self._none = _NONE_EXCLUDED
        self.outputs = ["scores", "ids"]

    def _k_input(self, k: int) -> np.ndarray:
        return k_input(self._k, k)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        b = len(queries)
        return self._run(queries, k, self._none if b == 1 else np.zeros((b, 1), dtype=np.int64))

    def search_masked(self, queries: np.ndarray, k: int, exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each row with ``exclude[i]`` (internal ids) scored -inf."""
        return self._run(queries, k, exclude_matrix(exclude))

    def _run(self, queries: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = len(queries)
        k = min(k, self.n)
        if k <= 0 or b == 0:
            return np.zeros((b, 0), dtype=np.float32), np.zeros((b, 0), dtype=np.int64)
        q = queries if queries.dtype == np.float32 and queries.flags.c_contiguous else np.ascontiguousarray(
            queries, dtype=np.float32)
        scores, ids = self.run(self.outputs, {"query": q, "exclude": exclude, "k": self._k_input(k)})
        return scores, ids

    def describe(self) -> dict[str, Any]:
        return {"type": self.index_type, "library": f"onnxruntime {self.version}", "device": self.device,
                "ntotal": self.n, "topk": "ONNX TopK (ties: lower index first)"}


_NONE_EXCLUDED = np.zeros((1, 1), dtype=np.int64)  # one row, nothing excluded but the padding column 0


def exclude_matrix(exclude: list[np.ndarray]) -> np.ndarray:
    """The ``exclude`` input of the scoring graph: (B, 1 + longest) int64, row ``i`` = 0 (the padding column,
    always excluded) then ``exclude[i]``, padded with 0."""
    if len(exclude) == 1:
        e = exclude[0]
        if not len(e):
            return _NONE_EXCLUDED
        ex = np.zeros((1, len(e) + 1), dtype=np.int64)
        ex[0, 1:] = e
        return ex
    ex = np.zeros((len(exclude), 1 + max(map(len, exclude), default=0)), dtype=np.int64)
    for i, e in enumerate(exclude):
        ex[i, 1:1 + len(e)] = e  # the rest stays 0: the padding column, excluded anyway
    return ex


def k_input(cache: dict[int, np.ndarray], k: int) -> np.ndarray:
    """The (1,) int64 ``k`` input of the scoring graph, made once per k."""
    arr = cache.get(k)
    if arr is None:
        arr = cache[k] = np.array([k], dtype=np.int64)
    return arr


FUSED_PREFIX = "topk/"  # the scoring graph's names inside the fused graph


def fused_graph(encoder: str | Any, query_name: str, items: np.ndarray) -> bytes:
    """The artifact's encoder followed by ``scoring_graph`` in one ONNX model: ``(history[, user], topk/exclude,
    topk/k) -> (query, topk/scores, topk/ids)``. The encoder's output feeds the scoring graph's ``query``; the
    scoring graph takes the encoder's opset and IR version (``onnx.compose.merge_models`` needs them equal). Raises
    what ``onnx`` raises when the encoder cannot be merged (the caller then keeps the two sessions)."""
    import onnx
    from onnx import compose

    enc = onnx.load(str(encoder))
    opset = max((o.version for o in enc.opset_import if o.domain in ("", "ai.onnx")), default=SCORING_OPSET)
    sc = onnx.load_from_string(scoring_graph(items))
    for o in sc.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(opset, 11)
    sc.ir_version = enc.ir_version
    sc = compose.add_prefix(sc, FUSED_PREFIX)
    merged = compose.merge_models(
        enc, sc, io_map=[(query_name, FUSED_PREFIX + "query")],
        outputs=[query_name, FUSED_PREFIX + "scores", FUSED_PREFIX + "ids"])
    return merged.SerializeToString()


class FusedOrtRanker:
    """The encoder and ``OrtSearcher``'s exact top-k in one ONNX Runtime session: one ``run`` per batch instead of
    two (``fused_graph``). It gives the query vectors too (candidate lists are scored from them), and the same
    answers as the two sessions (the same graphs; ``tests/serving/test_serving_scoring.py``).

    Why: at a moderate rate each request finds the CPU's caches cold, and every ORT call pays its fixed cost
    (input checks, output allocation, the executor's set-up) again; one call instead of two per batch was
    measured in ``loadtest/README.md`` (issue 27 part 4)."""

    def __init__(self, encoder_path: Any, query_name: str, uses_user: bool, items: np.ndarray,
                 threads: int = 1) -> None:
        self.session = onnx_runtime.session(fused_graph(encoder_path, query_name, items), threads)
        self.run = onnx_runtime.direct_run(self.session)
        self.n = len(items)
        self.uses_user = uses_user  # the encoder's inputs: "history" (B, L) int64 [, "user" (B,) int64]
        self.outputs = [query_name, FUSED_PREFIX + "scores", FUSED_PREFIX + "ids"]
        self._k: dict[int, np.ndarray] = {}

    def rank(self, history: np.ndarray, users: np.ndarray, k: int,
             exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, L) int64 histories, (B,) int64 users, k, the excluded internal ids per row -> (queries (B, D)
        float32, scores (B, k'), ids (B, k')) with ``k' = min(k, N)``, best first (as ``OrtSearcher``)."""
        feeds = {"history": history, FUSED_PREFIX + "exclude": exclude_matrix(exclude),
                 FUSED_PREFIX + "k": k_input(self._k, max(1, min(k, self.n)))}
        if self.uses_user:
            feeds["user"] = users
        queries, scores, ids = self.run(self.outputs, feeds)
        return queries, scores, ids


def choose_scoring(setting: str, num_items: int, max_items: int = MATMUL_MAX_ITEMS) -> tuple[str, str]:
    """(``ort`` | ``matmul`` | ``faiss``, why) for a CPU flat index, by the ``scoring`` setting and the catalogue
    size."""
    if setting in ("ort", "matmul", "faiss"):
        return setting, f"scoring={setting} (setting)"
    if num_items <= max_items:
        return "ort", (f"scoring=auto: {num_items} items <= matmul_max_items {max_items}, one matmul + top-k per "
                       "batch in ONNX Runtime")
    return "faiss", f"scoring=auto: {num_items} items > matmul_max_items {max_items}, FAISS IndexFlatIP"


# --------------------------------------------------------------------------------------- measurement


def _median_us(fns: list[Any], reps: int) -> list[float]:
    """Median microseconds of each function, the calls interleaved (so that a noisy neighbour slows all alike)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[j].append(time.perf_counter() - t0)
    return [1e6 * sorted(t)[len(t) // 2] for t in times]


def measure(items: np.ndarray, batch_sizes: tuple[int, ...] = (1, 8, 32), k: int = 10, reps: int = 200,
            seed: int = 0) -> list[dict[str, Any]]:
    """Median microseconds per batch of the three exact paths on ``items``, 1 thread, calls interleaved, queries
    near item vectors (the table's own scale): ONNX Runtime (``OrtSearcher``), numpy matmul + top-k
    (``MatmulSearcher``) and FAISS IndexFlatIP; also checks that they give the same top-k."""
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    mm = MatmulSearcher(items)
    ort_searcher = OrtSearcher(items, threads=1)
    rows = []
    for b in batch_sizes:
        q = (items[rng.choice(len(items), size=b)] + 0.1 * rng.standard_normal((b, items.shape[1]))).astype(np.float32)
        a = mm.search(q, k)
        f_scores, f_rows = index.search(q, k)
        same = bool((sort_rows(f_scores, f_rows.astype(np.int64) + 1)[1] == a[1]).all()
                    and (ort_searcher.search(q, k)[1] == a[1]).all())
        t_ort, t_mm, t_faiss = _median_us([lambda q=q: ort_searcher.search(q, k), lambda q=q: mm.search(q, k),
                                           lambda q=q: index.search(q, k)], reps)
        rows.append({"batch": b, "ort_us": t_ort, "matmul_us": t_mm, "faiss_us": t_faiss,
                     "faiss_over_matmul": t_faiss / t_mm, "matmul_over_ort": t_mm / t_ort, "same_topk": same})
    return rows


def identity_graph(d: int) -> bytes:
    """An ONNX model of one ``Identity`` node on a (batch, d) float input: what any ONNX Runtime call costs."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", d])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", SCORING_OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def measure_cold(encoder_path: Any, query_name: str, uses_user: bool, items: np.ndarray, max_len: int,
                 num_users: int = 0, batch_sizes: tuple[int, ...] = (1, 10), gap_ms: float = 5.0, rounds: int = 200,
                 k: int = 10, small_items: int = 500, seed: int = 0) -> list[dict[str, Any]]:
    """The fused call (``FusedOrtRanker``) against its parts, each call after ``gap_ms`` of sleep (the CPU's caches
    go cold as between requests at a moderate rate; 0: back to back), the variants interleaved in a shuffled order
    every round so that a noisy neighbour slows all alike: median microseconds per call and the ratio to the fused
    call of the same batch size. Variants: ``fused``; ``fused_small`` (the same graph on the first ``small_items``
    items: what the item table's size costs); ``encoder`` and ``scoring`` (``OrtSearcher``) alone (the two sessions
    of ``fuse_topk=False``); ``identity`` (one Identity node: what any ONNX Runtime call costs). 1 thread."""
    import random

    rng = np.random.default_rng(seed)
    fused = FusedOrtRanker(encoder_path, query_name, uses_user, items)
    small = FusedOrtRanker(encoder_path, query_name, uses_user, items[:small_items])
    encoder = onnx_runtime.session(str(encoder_path))
    enc_run = onnx_runtime.direct_run(encoder)
    searcher = OrtSearcher(items)
    ident_run = onnx_runtime.direct_run(onnx_runtime.session(identity_graph(items.shape[1])))
    none: list[np.ndarray] = []
    calls: dict[str, Any] = {}
    for b in batch_sizes:
        hist = rng.integers(1, len(items) + 1, size=(b, max_len)).astype(np.int64)
        users = rng.integers(0, max(num_users, 0) + 1, size=b).astype(np.int64)
        ex = [np.zeros(0, dtype=np.int64)] * b
        feeds = {"history": hist, **({"user": users} if uses_user else {})}
        q = enc_run([query_name], feeds)[0]
        calls[f"fused/{b}"] = lambda hist=hist, users=users, ex=ex: fused.rank(hist, users, k, ex)
        calls[f"fused_small/{b}"] = lambda hist=hist, users=users, ex=ex: small.rank(
            (hist - 1) % min(small_items, len(items)) + 1, users, k, ex)
        calls[f"encoder/{b}"] = lambda feeds=feeds: enc_run([query_name], feeds)
        calls[f"scoring/{b}"] = lambda q=q, ex=ex: searcher.search_masked(q, k, ex)
        calls[f"identity/{b}"] = lambda q=q: ident_run(["y"], {"x": q})
    for fn in calls.values():  # loaded, shapes seen once
        fn()
    times: dict[str, list[float]] = {name: none.copy() for name in calls}
    order = list(calls)
    shuffle = random.Random(seed)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            if gap_ms > 0:
                time.sleep(gap_ms / 1e3)
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name, t in times.items():
        variant, b = name.split("/")
        med = 1e6 * sorted(t)[len(t) // 2]
        rows.append({"variant": variant, "batch": int(b), "median_us": med})
    base = {r["batch"]: r["median_us"] for r in rows if r["variant"] == "fused"}
    for r in rows:
        r["vs_fused"] = r["median_us"] / base[r["batch"]]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.scoring",
                                description="Measure the exact paths (ONNX Runtime matmul + TopK, numpy matmul + "
                                            "top-k, FAISS IndexFlatIP) on an artifact's item table (or a random "
                                            "one), in process, 1 thread.")
    p.add_argument("artifact", nargs="?", help="artifact folder (or a root with 'latest'); none: --random")
    p.add_argument("--random", default="", metavar="N,D", help="a random table of N items x D dims instead")
    p.add_argument("--batch", default="1,8,32", help="batch sizes (comma list)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--cold", action="store_true",
                   help="with an artifact: time the fused encoder + top-k call against its parts, each call after "
                        "--gap-ms of sleep (measure_cold), instead of the scoring paths")
    p.add_argument("--gap-ms", type=float, default=5.0, help="--cold: sleep before each call (0: back to back)")
    args = p.parse_args(argv)
    if args.cold:
        if not args.artifact:
            p.error("--cold needs an artifact")
        from protocol.artifact import resolve_latest
        from serving.artifact import load_artifact

        art = load_artifact(resolve_latest(args.artifact))
        rows = measure_cold(art.encoder_path, art.encoder["output_name"], art.uses_user, art.items, art.max_len,
                            art.num_users or 0, tuple(int(x) for x in args.batch.split(",")), args.gap_ms, args.reps,
                            args.k)
        print(f"item table {art.items.shape[0]} x {art.items.shape[1]}, k={args.k}, 1 thread, {args.gap_ms:g} ms "
              f"before each call, median of {args.reps} rounds (variants interleaved)")
        print("| variant | batch | median (us) | / fused |")
        print("|---|---|---|---|")
        for r in sorted(rows, key=lambda r: (r["batch"], r["vs_fused"])):
            print(f"| {r['variant']} | {r['batch']} | {r['median_us']:.0f} | {r['vs_fused']:.2f} |")
        return 0
    if args.artifact:
        from protocol.artifact import resolve_latest
        from serving.artifact import load_artifact

        items = load_artifact(resolve_latest(args.artifact)).items
    elif args.random:
        n, d = (int(x) for x in args.random.split(","))
        items = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    else:
        p.error("give an artifact or --random N,D")
    rows = measure(items, tuple(int(x) for x in args.batch.split(",")), args.k, args.reps)
    choice, why = choose_scoring("auto", len(items))
    print(f"item table {items.shape[0]} x {items.shape[1]}, k={args.k}, 1 thread, median of {args.reps}")
    print("| batch | ONNX Runtime matmul + TopK (us) | numpy matmul + top-k (us) | FAISS IndexFlatIP (us) | "
          "numpy / ORT | FAISS / numpy | same top-k |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['ort_us']:.0f} | {r['matmul_us']:.0f} | {r['faiss_us']:.0f} | "
              f"{r['matmul_over_ort']:.2f} | {r['faiss_over_matmul']:.2f} | {r['same_topk']} |")
    print(f"auto picks: {choice} ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
