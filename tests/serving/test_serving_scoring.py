"""Exact CPU scoring paths (serving/scoring.py): ONNX Runtime (matmul + ScatterElements + TopK), numpy matmul +
blocked top-k and FAISS give the same top-k, with the same tie rule, consistent with the protocol's pessimistic
ranks; the path is chosen per artifact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol import pessimistic_ranks
from serving.artifact import load_artifact
from serving.backends import FaissCpuSearcher, IndexSpec, create_backend
from serving.scoring import (
    BLOCK,
    MatmulSearcher,
    OrtSearcher,
    choose_scoring,
    identity_graph,
    measure,
    measure_cold,
    select_topk,
    sort_rows,
    topk,
)


def reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A full stable sort: score descending, then id ascending."""
    n = scores.shape[1]
    order = np.stack([np.lexsort((np.arange(n), -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, axis=1), order + 1


def tied_table(n: int, d: int, b: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small integer vectors: inner products are exact in float32 and full of ties."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-2, 3, size=(n, d)).astype(np.float32), rng.integers(-2, 3, size=(b, d)).astype(np.float32))


EXACT = [MatmulSearcher, OrtSearcher]  # the two exact searchers that mask excluded items (no over-fetch)


@pytest.mark.parametrize("searcher", EXACT)
@pytest.mark.parametrize("n,b,k", [(40, 1, 5), (40, 6, 40), (3000, 1, 10), (3000, 8, 10), (3000, 32, 64),
                                   (3000, 5, 300), (BLOCK * 100 + 3, 16, 7), (17, 3, 50)])
def test_matmul_top_k_equals_a_full_stable_sort_with_ties(searcher: type, n: int, b: int, k: int) -> None:
    """Blocked (large catalogue, batch >= 4) and plain selection alike, and ONNX Runtime's TopK: ties by the smaller
    id, at the k-th place too (a tie group straddling it keeps its smallest ids)."""
    items, queries = tied_table(n, 3, b, seed=n + b + k)
    got = searcher(items).search(queries, k)
    want = reference(queries @ items.T, min(k, n))
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("searcher", EXACT)
@pytest.mark.parametrize("b", [1, 3, 12])
def test_masked_search_leaves_out_excluded_items_without_over_fetch(searcher: type, b: int) -> None:
    items, queries = tied_table(2000, 4, b, seed=b)
    rng = np.random.default_rng(b)
    exclude = [rng.choice(2000, size=int(rng.integers(0, 300)), replace=True) + 1 for _ in range(b)]
    exclude[0] = exclude[0][:0]  # a row that excludes nothing
    _, ids = searcher(items).search_masked(queries, 10, exclude)
    full = queries @ items.T
    for r, e in enumerate(exclude):
        full[r, e - 1] = -np.inf
    want = reference(full, 10)
    np.testing.assert_array_equal(ids, want[1])
    assert all(not set(row) & set(e.tolist()) for row, e in zip(ids.tolist(), exclude))


@pytest.mark.parametrize("searcher", EXACT)
def test_masked_rows_with_fewer_items_left_than_k_end_in_minus_inf(searcher: type) -> None:
    items, queries = tied_table(30, 2, 2, seed=0)
    scores, ids = searcher(items).search_masked(queries, 10, [np.arange(1, 26), np.zeros(0, dtype=np.int64)])
    assert np.isfinite(scores[0]).sum() == 5 and set(ids[0][np.isfinite(scores[0])].tolist()) == set(range(26, 31))
    assert np.isfinite(scores[1]).all()


@pytest.mark.parametrize("n,b,k", [(500, 1, 10), (3000, 7, 10), (3000, 32, 50), (257, 25, 257)])
def test_faiss_and_matmul_give_the_same_top_k_with_ties(n: int, b: int, k: int) -> None:
    """The two exact paths answer identically, ties included: FAISS fetches one more, its rows are re-sorted by
    the same rule, and a row tied at the k-th place beyond what it fetched is scored again (settle_ties).
    Batches of 20 or more take FAISS's BLAS path, which keeps an arbitrary part of a tie at its boundary."""
    pytest.importorskip("faiss")
    items, queries = tied_table(n, 3, b, seed=k)
    a = MatmulSearcher(items).search(queries, k)
    f = FaissCpuSearcher(items, threads=1).search(queries, k)
    np.testing.assert_array_equal(f[1], a[1])
    np.testing.assert_array_equal(f[0], a[0])


@pytest.mark.parametrize("other", ["faiss", "ort"])
@pytest.mark.parametrize("b", [1, 32])
def test_faiss_ort_and_matmul_agree_on_real_valued_tables(other: str, b: int) -> None:
    """Float vectors: the paths sum in different orders, so scores may differ in the last bits; the ids agree
    except where two scores are that close."""
    if other == "faiss":
        pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    items = rng.standard_normal((12101, 51)).astype(np.float32)
    queries = rng.standard_normal((b, 51)).astype(np.float32)
    a = MatmulSearcher(items).search(queries, 10)
    f = (FaissCpuSearcher(items, threads=1) if other == "faiss" else OrtSearcher(items)).search(queries, 10)
    np.testing.assert_allclose(f[0], a[0], rtol=1e-5, atol=1e-5)
    differ = f[1] != a[1]
    assert not differ.any() or np.all(np.abs(np.diff(a[0], axis=1)).min() < 1e-4)


def test_top_k_is_consistent_with_the_protocols_pessimistic_ranks() -> None:
    """The protocol ranks a target behind every item tied with it. A served top-k list never drops an item that
    the protocol ranks within k even so, and never puts an item ahead of its optimistic place."""
    items, queries = tied_table(800, 2, 16, seed=3)
    k = 20
    scores = queries @ items.T
    _, ids = MatmulSearcher(items).search(queries, k)
    for r in range(len(queries)):
        row = scores[r:r + 1].repeat(scores.shape[1], axis=0)
        pess = pessimistic_ranks(row, np.arange(scores.shape[1]))  # rank of every item as a target
        higher = (scores[r][None, :] > scores[r][:, None]).sum(axis=1)  # optimistic rank
        listed = set(ids[r].tolist())
        assert {i + 1 for i in np.flatnonzero(pess < k)} <= listed
        for pos, item in enumerate(ids[r].tolist()):
            assert higher[item - 1] <= pos <= pess[item - 1]


def test_select_topk_with_labels_and_sort_rows() -> None:
    vals = np.array([[1.0, 3.0, 3.0, 2.0]], dtype=np.float32)
    labels = np.array([[9, 7, 5, 1]])
    top, lab = select_topk(vals, 2, labels)
    assert lab.tolist() == [[5, 7]] and top.tolist() == [[3.0, 3.0]]
    _, i = sort_rows(np.array([[2.0, 3.0, 3.0]]), np.array([[4, 9, 2]]))
    assert i.tolist() == [[2, 9, 4]]
    assert topk(vals, 10)[1].tolist() == [[2, 3, 4, 1]]  # k above N: every item, ordered, ties by id


def test_choose_scoring_rule() -> None:
    assert choose_scoring("auto", 12_101)[0] == "ort"
    assert choose_scoring("ort", 10) == ("ort", "scoring=ort (setting)")
    assert choose_scoring("auto", 1_000_000)[0] == "faiss"
    assert choose_scoring("auto", 500, max_items=100)[0] == "faiss"
    assert choose_scoring("faiss", 10) == ("faiss", "scoring=faiss (setting)")
    assert choose_scoring("matmul", 10**9)[0] == "matmul"


def test_backend_picks_the_path_per_artifact(artifact_v1: Path) -> None:
    art = load_artifact(artifact_v1)
    auto = create_backend(art, "cpu", threads=1)
    forced = create_backend(art, "cpu", threads=1, index=IndexSpec(scoring="auto", matmul_max_items=10))
    assert auto.describe()["index"]["type"] == "exact-ort" and auto.name == "ort-cpu+onnxruntime-cpu"
    assert forced.describe()["index"]["type"] == "IndexFlatIP"
    assert "matmul_max_items 10" in forced.describe()["index"]["chosen_because"]
    q = auto.encode(np.ones((3, art.max_len), dtype=np.int64), np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(auto.search(q, 10)[1], forced.search(q, 10)[1])
    numpy_path = create_backend(art, "cpu", threads=1, index=IndexSpec(scoring="matmul"))
    assert numpy_path.describe()["index"]["type"] == "exact-matmul" and numpy_path.name == "ort-cpu+numpy-cpu"
    np.testing.assert_array_equal(auto.search(q, 10)[1], numpy_path.search(q, 10)[1])


def test_ort_path_falls_back_to_numpy_without_onnx(artifact_v1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx builds the scoring graph; where it is not installed the numpy path answers, and /model says why."""
    import builtins

    real_import = builtins.__import__

    def no_onnx(name: str, *args: object, **kwargs: object) -> object:
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("no onnx here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    backend = create_backend(load_artifact(artifact_v1), "cpu", threads=1)
    info = backend.describe()["index"]
    assert info["type"] == "exact-matmul" and info["chosen_because"].startswith("onnx not installed")


def test_measure_reports_both_paths() -> None:
    pytest.importorskip("faiss")
    items = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    rows = measure(items, batch_sizes=(1, 4), reps=3)
    assert [r["batch"] for r in rows] == [1, 4]
    assert all(r["same_topk"] and r["matmul_us"] > 0 and r["faiss_us"] > 0 and r["ort_us"] > 0 for r in rows)


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_encoder_and_topk_answer_as_the_two_sessions(artifact_v1: Path, seed: int) -> None:
    """fuse_topk (the CPU default with scoring ort): the encoder and the top-k graph in one ONNX Runtime session give
    the answers of the two sessions, for batches that mix excluded items, candidate lists and different k."""
    from serving.config import Settings
    from serving.engine import Executor, Query, load_state

    fused = load_state(Settings(artifact_path=artifact_v1))
    plain = load_state(Settings(artifact_path=artifact_v1, fuse_topk=False))
    assert fused.backend.fused is not None and plain.backend.fused is None
    assert fused.backend.describe()["fused_encoder_topk"] is True
    n, length = fused.artifact.num_items, fused.artifact.max_len
    rng = np.random.default_rng(seed)
    run = Executor()
    for _ in range(30):
        a, b = [], []
        for _ in range(int(rng.integers(1, 7))):
            recent = rng.integers(1, n + 1, size=int(rng.integers(1, length + 1)))
            candidates = np.unique(rng.integers(1, n + 1, size=8)) if rng.random() < 0.25 else None
            exclude = recent if rng.random() < 0.5 else np.zeros(0, dtype=np.int64)
            k, user = int(rng.integers(1, n + 3)), int(rng.integers(0, 3))
            a.append(Query(fused, recent, user, k, exclude, candidates))
            b.append(Query(plain, recent, user, k, exclude, candidates))
        for x, y in zip(run(a), run(b)):
            np.testing.assert_array_equal(x.ids, y.ids)
            np.testing.assert_allclose(x.scores, y.scores, rtol=1e-5, atol=1e-6)


def test_measure_cold_times_the_fused_call_against_its_parts(artifact_v1: Path) -> None:
    """``python -m serving.scoring ARTIFACT --cold``: every variant at every batch size, the fused call as the unit."""
    from protocol import onnx_runtime

    art = load_artifact(artifact_v1)
    rows = measure_cold(art.encoder_path, art.encoder["output_name"], art.uses_user, art.items, art.max_len,
                        art.num_users or 0, batch_sizes=(1, 3), gap_ms=0.0, rounds=3, small_items=7)
    assert sorted((r["variant"], r["batch"]) for r in rows) == sorted(
        (v, b) for v in ("fused", "fused_small", "encoder", "scoring", "identity") for b in (1, 3))
    assert all(r["median_us"] > 0 for r in rows)
    assert all(r["vs_fused"] == 1.0 for r in rows if r["variant"] == "fused")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = onnx_runtime.session(identity_graph(3)).run(["y"], {"x": x})
    np.testing.assert_array_equal(y, x)
