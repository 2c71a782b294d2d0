import math

import numpy as np
import pytest

from protocol import evaluate, load_dataset, metrics_from_ranks, pessimistic_ranks


def test_ranks_hand_values():
    s = np.array([[0.9, 0.1, 0.5], [0.1, 0.9, 0.5], [0.5, 0.5, 0.1]])
    assert pessimistic_ranks(s, 0).tolist() == [0, 2, 1]  # row 3: one tie counts against the target


def test_all_equal_scores_rank_last():
    s = np.zeros((4, 100))
    assert (pessimistic_ranks(s, 0) == 99).all()
    m = metrics_from_ranks(pessimistic_ranks(s, 0))
    assert m["recall@20"] == 0.0 and m["ndcg@10"] == 0.0 and m["mrr"] == pytest.approx(0.01)


def test_metrics_hand_values():
    m = metrics_from_ranks(np.array([0, 1, 4, 9, 30]))
    assert m["recall@5"] == pytest.approx(3 / 5)
    assert m["recall@10"] == pytest.approx(4 / 5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10 + 1 / 31) / 5)


def test_k_larger_than_candidates():
    r = pessimistic_ranks(np.array([[0.1, 0.2, 0.3]]), 0)
    m = metrics_from_ranks(r, ks=(5, 10))
    assert m["recall@5"] == 1.0 and m["ndcg@5"] == pytest.approx(1 / math.log2(4))


def test_minus_inf_never_beats_target():
    s = np.array([[-np.inf, 0.2, -np.inf, 0.1]])
    assert pessimistic_ranks(s, 3).tolist() == [1]


def _ds(tmp_path):
    rng = np.random.default_rng(3)
    p = tmp_path / "E.txt"
    p.write_text("".join(f"{u} " + " ".join(map(str, rng.choice(np.arange(1, 301), 10, replace=False))) + "\n"
                         for u in range(1, 41)))
    return load_dataset(str(p))


def test_oracle_scorer_is_perfect_and_constant_is_pessimistic(tmp_path):
    ds = _ds(tmp_path)
    from protocol.split import eval_examples

    _, targets = eval_examples(ds, "test")

    def oracle(h, users, cand):
        full = np.zeros((len(h), ds.num_items + 1))
        full[np.arange(len(h)), targets[users]] = 1.0
        return full if cand is None else np.take_along_axis(full, cand, 1)

    def constant(h, users, cand):
        return np.zeros((len(h), ds.num_items + 1 if cand is None else cand.shape[1]))

    for proto in ("sampled", "full"):
        assert evaluate(oracle, ds, "test", proto)["ndcg@10"] == 1.0
        assert evaluate(constant, ds, "test", proto)["recall@20"] == 0.0


def test_full_ranking_excludes_history(tmp_path):
    ds = _ds(tmp_path)
    from protocol.split import eval_examples

    inputs, targets = eval_examples(ds, "test")

    def history_first(h, users, cand):
        # scores every history item above the target: they must be excluded, leaving the target first
        full = np.zeros((len(h), ds.num_items + 1))
        for i, u in enumerate(users):
            full[i, inputs[u]] = 10.0
            full[i, targets[u]] = 1.0
        return full

    assert evaluate(history_first, ds, "test", "full")["recall@5"] == 1.0


def test_limit_users_and_batching_agree(tmp_path):
    ds = _ds(tmp_path)
    rng = np.random.default_rng(0)
    table = rng.normal(size=(ds.num_items + 1,))

    def s(h, users, cand):
        full = np.broadcast_to(table, (len(h), len(table)))
        return full if cand is None else table[cand]

    a = evaluate(s, ds, batch_size=7)
    b = evaluate(s, ds, batch_size=1000)
    assert a == b
    assert evaluate(s, ds, limit_users=10) != a
