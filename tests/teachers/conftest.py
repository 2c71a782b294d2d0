"""Tiny synthetic datasets for the teacher tests (written to a temporary folder)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protocol import SequenceDataset, load_dataset

TINY_USERS = 48
TINY_ITEMS = 160  # sampled evaluation needs >= 99 unseen items per user


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_tiny(path: Path, users: int = TINY_USERS, items: int = TINY_ITEMS, seed: int = 0) -> Path:
    """Users walk item chains (i -> i + 1 mostly), so there is something to learn."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(users):
        n = int(rng.integers(5, 26))
        start = int(rng.integers(1, items + 1))
        seq = [(start + k + (k // 7)) % items + 1 for k in range(n)]
        lines.append(" ".join(map(str, [u + 1, *seq])))
    # make sure the largest item id occurs (num_items comes from the data)
    lines.append(" ".join(map(str, [users + 1, items - 3, items - 2, items - 1, items, 1])))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("data") / "tiny.txt")


@pytest.fixture(scope="session")
def tiny_ds(tiny_path: Path) -> SequenceDataset:
    return load_dataset(str(tiny_path))
