"""Fixtures for the baselines: a small synthetic dataset with a learnable pattern, and trained smoke runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protocol import SequenceDataset, load_dataset

NUM_ITEMS = 150  # > 99 sampled negatives + a sequence
NUM_USERS = 300


def pattern_sequences(rng: np.random.Generator, num_users: int, num_items: int) -> list[list[int]]:
    """Each user walks i -> i + 1 (mod N) from a random start: the next item is always predictable."""
    out = []
    for _ in range(num_users):
        start, n = int(rng.integers(0, num_items)), int(rng.integers(6, 15))
        out.append([(start + k) % num_items + 1 for k in range(n)])
    return out


@pytest.fixture(scope="session")
def pattern_ds(tmp_path_factory) -> SequenceDataset:
    path = tmp_path_factory.mktemp("baselines_data") / "Pattern.txt"
    seqs = pattern_sequences(np.random.default_rng(0), NUM_USERS, NUM_ITEMS)
    path.write_text("".join(f"{u} " + " ".join(map(str, s)) + "\n" for u, s in enumerate(seqs, start=1)))
    return load_dataset(str(path))


@pytest.fixture(scope="session")
def smoke_runs(pattern_ds, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Every baseline trained once with the smoke preset: name -> (run_dir, metrics)."""
    from training.baselines import BASELINES, train_baseline

    root = tmp_path_factory.mktemp("baseline_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared machine
    try:
        return {name: (root / name, train_baseline(name, pattern_ds, "smoke", root / name, progress=False))
                for name in BASELINES}
    finally:
        torch.set_num_threads(threads)
