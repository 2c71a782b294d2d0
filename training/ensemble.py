"""An ensemble of finished runs as one recommender: the mean of their next-item distributions.

``p(j | h) = (1/K) sum_k softmax(encode_k(h) @ item_vectors_k().T)_j`` over all items, then the usual
protocol (sampled and full ranking) on ``log p``. This is the target a student imitates when it sums the
KL terms of K teachers: with weights lambda_k, ``sum_k lambda_k KL(p_k || q)`` differs from
``(sum_k lambda_k) KL(p_bar || q)`` only by a constant in the student, where ``p_bar`` is the
lambda-weighted mean of the ``p_k``. So the ensemble's own NDCG says how good the imitated
distribution is, and it is what must beat the student trained alone for imitation to pay.

Nothing is trained: the run folder gets ``run.json`` (the members) and ``metrics.json``, as any run.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocol import SequenceDataset, evaluate, load_or_create_negatives
from training.io import atomic_write_json, read_json
from training.runs import RunError, is_finished, load_run_model
from training.scoring import ContractScorer


class EnsembleScorer:
    """``protocol.Scorer`` over the log of the mean of K members' softmax distributions."""

    def __init__(self, scorers: list[ContractScorer]):
        if not scorers:
            raise ValueError("an ensemble needs at least one member")
        self.scorers = scorers

    def __call__(self, histories: np.ndarray, users: np.ndarray, candidates: np.ndarray | None) -> np.ndarray:
        mean: torch.Tensor | None = None
        for scorer in self.scorers:
            logits = torch.from_numpy(scorer(histories, users, None)[:, 1:])  # (B, N) items 1..N
            p = torch.softmax(logits.double(), dim=1)
            mean = p if mean is None else mean + p
        logp = torch.log(mean / len(self.scorers))  # (B, N)
        if candidates is not None:
            return logp.gather(1, torch.as_tensor(candidates, dtype=torch.long) - 1).numpy()  # (B, C)
        pad = torch.full((logp.shape[0], 1), float("-inf"), dtype=logp.dtype)
        return torch.cat([pad, logp], dim=1).numpy()  # (B, N + 1), column = item id


def evaluate_ensemble(members: list[Path], ds: SequenceDataset, run_dir: str | os.PathLike, resume: bool = True,
                      max_len: int = 50, batch_size: int = 256) -> dict[str, Any]:
    """Valid/test metrics (sampled and full) of the members' mean distribution, written to ``run_dir``."""
    run_dir = Path(run_dir)
    if resume and is_finished(run_dir):
        return read_json(run_dir / "metrics.json")
    t0 = time.time()
    scorers, names = [], []
    for d in members:
        model, info = load_run_model(d)
        if info.get("data_sha256") not in (None, ds.sha256):
            raise RunError(f"ensemble member {d} was trained on other data than {ds.name}")
        scorers.append(ContractScorer(model))
        names.append(str(d))
    scorer, negatives = EnsembleScorer(scorers), load_or_create_negatives(ds)
    metrics: dict[str, Any] = {
        split: {p: evaluate(scorer, ds, split, p, max_len=max_len, batch_size=batch_size, negatives=negatives)
                for p in ("sampled", "full")} for split in ("valid", "test")}
    metrics.update({"model": "ensemble", "members": names, "dataset": ds.name, "data_sha256": ds.sha256,
                    "negatives_sha256": negatives.sha256, "wall_time_s": round(time.time() - t0, 1)})
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", {"model": "ensemble", "members": names, "dataset": ds.name,
                                             "data_sha256": ds.sha256})
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics
