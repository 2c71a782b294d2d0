"""Ranking metrics with pessimistic ties.

A target's 0-based rank is the number of candidates scored strictly higher plus the number of
*other* candidates scored equally: a model that scores everything the same ranks the target last,
so a collapsed model scores low, never 1.0.
"""
from __future__ import annotations

import numpy as np

KS: tuple[int, ...] = (5, 10, 15, 20)


def pessimistic_ranks(scores: np.ndarray, target_col: np.ndarray | int) -> np.ndarray:
    """(B, C) scores, target column per row -> (B,) 0-based ranks. Ties count against the target.

    Entries equal to -inf never rank above a finite target (they are excluded items).
    """
    scores = np.asarray(scores)
    b = scores.shape[0]
    cols = np.broadcast_to(np.asarray(target_col), (b,))
    target = scores[np.arange(b), cols][:, None]
    higher = (scores > target).sum(axis=1)
    ties = (scores == target).sum(axis=1) - 1  # minus the target itself
    return (higher + ties).astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@k (= HR@k with one target), NDCG@k = 1/log2(rank+2) if rank < k, and MRR, averaged."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks to average")
    out: dict[str, float] = {}
    gain = 1.0 / np.log2(ranks + 2.0)
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean())
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    return out
