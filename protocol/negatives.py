"""The 99 sampled negatives per user, drawn once and stored (S3-Rec's ``NAME_sample.txt`` format).

Negatives are uniform over the dataset's items minus the user's *whole* sequence, unique per user,
drawn with a fixed seed (12345, as S3-Rec), and reused for validation and test by every model. The
file is written next to the data when that folder is writable, else in the cache folder
(``$SSI_CACHE_DIR``, default ``artifacts/cache``); it is regenerated only when missing. Its sha256
goes into every results file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol.data import DataError, SequenceDataset, sha256_file

NUM_NEGATIVES = 99
SEED = 12345


@dataclass
class Negatives:
    items: np.ndarray  # (U, n) int64, row u = the negatives of ds.sequences[u]
    path: Path
    sha256: str


def sample_negatives(ds: SequenceDataset, n: int = NUM_NEGATIVES, seed: int = SEED) -> np.ndarray:
    """(U, n) unique negatives per user, none of them in the user's sequence. Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    out = np.empty((ds.num_users, n), dtype=np.int64)
    for u, seq in enumerate(ds.sequences):
        seen = set(seq.tolist())
        if ds.num_items - len(seen) < n:
            raise DataError(f"{ds.path}: user {ds.users[u]} has only {ds.num_items - len(seen)} unseen items, need {n}")
        chosen: list[int] = []
        taken: set[int] = set()
        while len(chosen) < n:
            for i in rng.integers(1, ds.num_items + 1, size=2 * n).tolist():
                if i not in seen and i not in taken:
                    taken.add(i)
                    chosen.append(i)
                    if len(chosen) == n:
                        break
        out[u] = chosen
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("SSI_CACHE_DIR", "artifacts/cache"))


def _writable(folder: Path) -> bool:
    """Writable for us *and* not marked read-only (root passes os.access on a r-x folder)."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def negatives_path(ds: SequenceDataset, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the negatives live: beside the data if present or writable, else in the cache folder."""
    beside = ds.path.with_name(f"{ds.path.stem}_sample.txt")
    if beside.is_file() or _writable(ds.path.parent):
        return beside
    return Path(cache_dir or default_cache_dir()) / f"{ds.path.stem}_{ds.sha256[:12]}_sample.txt"


def _read(path: Path, ds: SequenceDataset, n: int) -> np.ndarray:
    row_of = {int(u): i for i, u in enumerate(ds.users)}
    out = np.zeros((ds.num_users, n), dtype=np.int64)
    filled = np.zeros(ds.num_users, dtype=bool)
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                ids = [int(p) for p in parts]
            except ValueError:
                raise DataError(f"{path}:{lineno}: non-integer id in negatives file; delete it to regenerate") from None
            if ids[0] not in row_of:
                continue  # a user skipped by the loader
            if len(ids) - 1 != n:
                raise DataError(f"{path}:{lineno}: {len(ids) - 1} negatives, expected {n}; delete the file to regenerate")
            out[row_of[ids[0]]] = ids[1:]
            filled[row_of[ids[0]]] = True
    if not filled.all():
        missing = ds.users[~filled][:5].tolist()
        raise DataError(f"{path}: no negatives for users {missing}...; delete the file to regenerate")
    return out


def load_or_create_negatives(
    ds: SequenceDataset, n: int = NUM_NEGATIVES, seed: int = SEED, cache_dir: str | os.PathLike | None = None
) -> Negatives:
    """Read the stored negatives, or draw and store them (atomically) when the file is missing."""
    path = negatives_path(ds, cache_dir)
    if not path.is_file():
        items = sample_negatives(ds, n, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(f"{u} " + " ".join(map(str, row.tolist())) + "\n" for u, row in zip(ds.users.tolist(), items))
        os.replace(tmp, path)
    else:
        items = _read(path, ds, n)
    return Negatives(items=items, path=path, sha256=sha256_file(path))
