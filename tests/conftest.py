"""Shared fixtures: tiny synthetic datasets, the real data folder when present, and the gpu marker."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch means no GPU tests
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_sequences(path: Path, seqs: dict[int, list[int]]) -> Path:
    path.write_text("".join(f"{u} " + " ".join(map(str, s)) + "\n" for u, s in seqs.items()))
    return path


@pytest.fixture
def tiny_dataset_file(tmp_path: Path) -> Path:
    """60 users, 40 items, sequences of 5-12 items with a learnable pattern (i -> i+1)."""
    rng = np.random.default_rng(0)
    seqs = {}
    for u in range(1, 61):
        start = int(rng.integers(1, 30))
        n = int(rng.integers(5, 13))
        seqs[u] = [((start + k - 1) % 40) + 1 for k in range(n)]
    return write_sequences(tmp_path / "Tiny.txt", seqs)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Negatives drawn for read-only data folders go to a per-session cache, never into the repo."""
    monkeypatch.setenv("SSI_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def shared_data_dir() -> Path:
    d = Path(os.environ.get("SSI_DATA_DIR", SHARED_DATA))
    if not (d / "LastFM.txt").is_file():
        pytest.skip(f"LastFM.txt not in {d}")
    return d


@contextmanager
def capturing(caplog: pytest.LogCaptureFixture, name: str, level: int) -> Iterator[None]:
    """``caplog.at_level`` on logger ``name``, enabled for the block: a ``logging.config.dictConfig`` elsewhere in
    the session (locust's, with ``disable_existing_loggers``) may have disabled it."""
    logger = logging.getLogger(name)
    disabled, logger.disabled = logger.disabled, False
    try:
        with caplog.at_level(level, logger=name):
            yield
    finally:
        logger.disabled = disabled
