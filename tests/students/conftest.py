"""Fixtures of the student tests: a tiny dataset with enough items for 99 sampled negatives, and
random (untrained) BERT4Rec smoke teachers saved as finished-looking run folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

NUM_ITEMS = 150
TEACHERS = ("temporal", "persona", "global")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second intra-op thread only adds contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def student_data_file(tmp_path_factory) -> Path:
    """80 users over 150 items, 5-29 items each, with a learnable i -> i+1 pattern."""
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 81):
        start, n = int(rng.integers(1, NUM_ITEMS)), int(rng.integers(5, 30))
        lines.append(f"{u} " + " ".join(str((start + k - 1) % NUM_ITEMS + 1) for k in range(n)))
    path = tmp_path_factory.mktemp("student_data") / "Tiny.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def student_ds(student_data_file):
    from protocol import load_dataset

    return load_dataset(str(student_data_file))


@pytest.fixture(scope="session")
def teacher_dirs(tmp_path_factory, student_ds) -> dict[str, Path]:
    """Three random BERT4Rec smoke teachers, each in its own run folder (model_config + safetensors)."""
    from models.bert4rec import BERT4Rec, BERT4RecConfig
    from training.io import atomic_write_json
    from training.runs import save_best, write_model_config

    root = tmp_path_factory.mktemp("teachers")
    dirs = {}
    for i, name in enumerate(TEACHERS):
        torch.manual_seed(100 + i)
        model = BERT4Rec(BERT4RecConfig.preset("smoke", num_items=student_ds.num_items))
        d = root / name
        d.mkdir()
        save_best(model, d)
        write_model_config(model, d)
        atomic_write_json(d / "run.json", {"model": "bert4rec", "data_sha256": student_ds.sha256})
        dirs[name] = d
    return dirs
