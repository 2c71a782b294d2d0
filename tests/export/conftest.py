"""Fixtures for the export tests: a synthetic dataset, smoke-trained HGN and GRU4Rec runs, their artifacts.

Everything is session-scoped and built once: training and export are the slow parts (seconds each).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from protocol import SequenceDataset, load_dataset

NUM_USERS, NUM_ITEMS = 520, 300


def _synthetic_sequences(seed: int = 0) -> dict[int, list[int]]:
    """A learnable pattern (item i mostly followed by i + 1) with noise; a few users over 50 items."""
    rng = np.random.default_rng(seed)
    seqs = {}
    for u in range(1, NUM_USERS + 1):
        n = int(rng.integers(60, 75)) if u % 50 == 0 else int(rng.integers(5, 16))
        item, seq = int(rng.integers(1, NUM_ITEMS + 1)), []
        for _ in range(n):
            seq.append(item)
            item = item % NUM_ITEMS + 1 if rng.random() < 0.8 else int(rng.integers(1, NUM_ITEMS + 1))
        seqs[u] = seq
    return seqs


@pytest.fixture(scope="session")
def export_data_dir(tmp_path_factory) -> Path:
    """A data folder holding ``synth.txt`` (negatives get written beside it, never into shared data)."""
    folder = tmp_path_factory.mktemp("export-data")
    lines = [f"{u} " + " ".join(map(str, s)) for u, s in _synthetic_sequences().items()]
    (folder / "synth.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def export_ds(export_data_dir) -> SequenceDataset:
    return load_dataset("synth", export_data_dir)


@pytest.fixture(scope="session")
def student_runs(export_ds, tmp_path_factory) -> dict[str, Path]:
    """Smoke-trained (one epoch) HGN and GRU4Rec runs, as ``training.students`` writes them."""
    from training.students import train_student

    root = tmp_path_factory.mktemp("export-runs")
    runs = {}
    for student in ("hgn", "gru4rec"):
        train_student(student, export_ds, "smoke", root / student, progress=False, epochs=1)
        runs[student] = root / student
    return runs


@pytest.fixture(scope="session")
def student_artifacts(student_runs, export_data_dir, tmp_path_factory) -> dict[str, Path]:
    """One artifact per student, built through ``python -m export``'s ``main``, each in its own root."""
    from export.__main__ import main

    out = {}
    for name, run in student_runs.items():
        root = tmp_path_factory.mktemp(f"serving-{name}")
        assert main([str(run), "--out", str(root), "--data", str(export_data_dir)]) == 0
        out[name] = root / (root / "latest").read_text().strip()
    return out


@pytest.fixture
def artifact_copy(student_artifacts, tmp_path) -> Path:
    """A private copy of the GRU4Rec artifact that a test may damage."""
    return Path(shutil.copytree(student_artifacts["gru4rec"], tmp_path / "artifact"))
