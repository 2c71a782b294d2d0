"""One evaluation function for every model and every caller (training, run_all, the server's /eval).

A model is evaluated through a ``Scorer``: a callable that gets a batch of left-padded histories
``(B, L)`` (most recent item last, 0 = padding), the users' row indices ``(B,)`` and either the
candidate items ``(B, C)`` -> returns ``(B, C)`` scores, or ``None`` -> returns ``(B, num_items + 1)``
scores indexed by item id (column 0 is ignored).

- ``sampled``: the target plus the user's 99 stored negatives (target in column 0).
- ``full``: every item; the user's input history is excluded (the target itself never is).
"""
from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

from protocol.data import SequenceDataset
from protocol.metrics import KS, metrics_from_ranks, pessimistic_ranks
from protocol.negatives import Negatives, load_or_create_negatives
from protocol.split import Split, eval_examples, pad_left

EvalProtocol = Literal["sampled", "full"]


class Scorer(Protocol):
    def __call__(self, histories: np.ndarray, users: np.ndarray, candidates: np.ndarray | None) -> np.ndarray: ...


def evaluate(
    scorer: Scorer,
    ds: SequenceDataset,
    split: Split = "test",
    protocol: EvalProtocol = "sampled",
    max_len: int = 50,
    batch_size: int = 256,
    limit_users: int | None = None,
    negatives: Negatives | None = None,
    ks: tuple[int, ...] = KS,
    return_ranks: bool = False,
):
    """Recall/NDCG@ks and MRR of ``scorer`` on ``split`` under ``protocol``. Deterministic."""
    if protocol not in ("sampled", "full"):
        raise ValueError(f"unknown protocol {protocol!r}; expected 'sampled' or 'full'")
    inputs, targets = eval_examples(ds, split)
    n_users = len(inputs) if limit_users is None else max(0, min(limit_users, len(inputs)))
    if n_users == 0:
        raise ValueError("no users to evaluate")
    if protocol == "sampled" and negatives is None:
        negatives = load_or_create_negatives(ds)
    ranks = np.empty(n_users, dtype=np.int64)
    for start in range(0, n_users, batch_size):
        rows = np.arange(start, min(start + batch_size, n_users))
        hist = pad_left([inputs[r] for r in rows], max_len)
        if protocol == "sampled":
            cand = np.concatenate([targets[rows, None], negatives.items[rows]], axis=1)  # (B, 1+99)
            scores = np.asarray(scorer(hist, rows, cand), dtype=np.float64)
            ranks[rows] = pessimistic_ranks(scores, 0)
        else:
            scores = np.array(scorer(hist, rows, None), dtype=np.float64)  # (B, N+1), a copy we may edit
            scores[:, 0] = -np.inf
            for i, r in enumerate(rows):
                seen = inputs[r]
                seen = seen[seen != targets[r]]
                scores[i, seen] = -np.inf
            ranks[rows] = pessimistic_ranks(scores, targets[rows])
    out = metrics_from_ranks(ranks, ks)
    return (out, ranks) if return_ranks else out
