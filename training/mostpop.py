"""MostPop: rank items by their number of interactions in the training part (``s[:-2]``)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from protocol import Negatives, SequenceDataset, evaluate, load_or_create_negatives, train_sequences
from training.io import atomic_write_json, read_json
from training.runs import is_finished


def popularity_counts(ds: SequenceDataset) -> np.ndarray:
    """(num_items + 1,) interaction counts in the training part; index = item id, index 0 is 0."""
    seqs = train_sequences(ds)
    flat = np.concatenate([s for s in seqs if len(s)]) if seqs else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=ds.num_items + 1).astype(np.float64)


def popularity_ranking(ds: SequenceDataset) -> np.ndarray:
    """Item ids, most popular first (ties broken by the smaller id), for cold-start fallback."""
    counts = popularity_counts(ds)[1:]
    return (np.lexsort((np.arange(len(counts)), -counts)) + 1).astype(np.int64)


class MostPopScorer:
    def __init__(self, ds: SequenceDataset):
        self.counts = popularity_counts(ds)

    def __call__(self, histories: np.ndarray, users: np.ndarray, candidates: np.ndarray | None) -> np.ndarray:
        if candidates is not None:
            return self.counts[candidates]
        return np.broadcast_to(self.counts, (len(histories), len(self.counts)))


def train_mostpop(ds: SequenceDataset, run_dir: str | os.PathLike, resume: bool = True,
                  negatives: Negatives | None = None) -> dict[str, Any]:
    """Evaluate MostPop on valid/test, sampled and full; writes ``metrics.json`` like any run."""
    run_dir = Path(run_dir)
    if resume and is_finished(run_dir):
        return read_json(run_dir / "metrics.json")
    t0 = time.time()
    negatives = negatives or load_or_create_negatives(ds)
    scorer = MostPopScorer(ds)
    metrics: dict[str, Any] = {
        split: {p: evaluate(scorer, ds, split, p, negatives=negatives) for p in ("sampled", "full")}
        for split in ("valid", "test")
    }
    metrics.update({"model": "mostpop", "dataset": ds.name, "data_sha256": ds.sha256,
                    "negatives_sha256": negatives.sha256, "wall_time_s": round(time.time() - t0, 1),
                    "best_epoch": 0, "epochs_run": 0, "seed": 0, "device": "cpu"})
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", {"model": "mostpop", "dataset": ds.name, "data_sha256": ds.sha256})
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics
