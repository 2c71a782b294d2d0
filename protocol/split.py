"""Leave-one-out split (S3-Rec / SSI protocol).

For a user sequence ``s``: training input ``s[:-2]``; validation target ``s[-2]`` with input
``s[:-2]``; test target ``s[-1]`` with input ``s[:-1]``. Inputs are truncated to the most recent
``max_len`` items by the caller (``pad_left``).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from protocol.data import SequenceDataset

Split = Literal["valid", "test"]


def train_sequences(ds: SequenceDataset) -> list[np.ndarray]:
    """The training part of every user: ``s[:-2]`` (what validation sees as input)."""
    return [s[:-2] for s in ds.sequences]


def eval_examples(ds: SequenceDataset, split: Split) -> tuple[list[np.ndarray], np.ndarray]:
    """Inputs and targets for ``split``. Returns (list of U input arrays, (U,) targets)."""
    if split == "valid":
        return [s[:-2] for s in ds.sequences], np.asarray([s[-2] for s in ds.sequences], dtype=np.int64)
    if split == "test":
        return [s[:-1] for s in ds.sequences], np.asarray([s[-1] for s in ds.sequences], dtype=np.int64)
    raise ValueError(f"unknown split {split!r}; expected 'valid' or 'test'")


def pad_left(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """(B, max_len) int64: the most recent ``max_len`` items of each sequence, left-padded with 0."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        if len(s):
            out[i, max_len - len(s):] = s
    return out
