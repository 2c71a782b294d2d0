"""Loading the S3-Rec sequence format (``user item item ...``, one user per line).

Dataset names map to files; any ``NAME.txt`` in the data folder is a dataset too. The folder is
``resolve_data_dir``'s answer, the one rule every entry point uses: the ``data_dir`` argument (a
``--data-dir`` flag), else ``$SSI_DATA_DIR``, else ``./data`` when it exists, else ``shared/data`` beside the
checkout when it exists, else ``./data``.
"""
from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Paper datasets: short name -> file name (as released by S3-Rec, RUCAIBox/CIKM2020-S3Rec/data).
DATASET_FILES: dict[str, str] = {
    "beauty": "Beauty.txt",
    "toys": "Toys_and_Games.txt",
    "sports": "Sports_and_Outdoors.txt",
    "lastfm": "LastFM.txt",
}
PAPER_DATASETS = ("beauty", "toys", "sports")
DOWNLOAD_URL = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data/{file}"
SHA256: dict[str, str] = {
    "Beauty.txt": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
    "Toys_and_Games.txt": "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f",
    "LastFM.txt": "9ded486adb5b0fe9dc761950afa0a9a05e93ff018992e0c52bf11afec529f802",
}
MIN_ITEMS = 3  # leave-one-out needs at least one training item, a validation and a test target


@dataclass(frozen=True)
class SubsetSpec:
    """A dataset derived from another by ``python -m training.data subset``: the ``top_items`` most interacted
    items of ``source`` (ties: the smaller id), each user's sequence restricted to them in its order, users with
    fewer than ``min_user`` of them dropped, items re-numbered 1..N in order of first appearance (the S3-Rec
    convention). Deterministic: ``sha256`` is the file it must produce."""

    source: str
    top_items: int
    min_user: int = 5
    sha256: str | None = None


# Named subsets, made on demand (``python -m training.data download NAME`` derives them from their source).
# ``beauty-top1500``: the first run's dataset (`make run`): 6,036 users, 1,500 items, 59,702 actions, as cheap to
# train as LastFM with 5.5x its users, so validation separates models that LastFM's 1,090 users cannot.
SUBSETS: dict[str, SubsetSpec] = {
    "beauty-top1500": SubsetSpec(source="beauty", top_items=1500, min_user=5,
                                 sha256="730bac179a046f6f4b81d671e9c981c1bddcdd81b3d15fb34fdcc86b90689aa1"),
}


class DataError(Exception):
    """A dataset that cannot be used; the message names the file (and line) and what to do."""


DATA_ENV = "SSI_DATA_DIR"
LOCAL_DATA = Path("data")
#: A data folder kept once beside the checkout, for several checkouts (``<checkout>/../shared/data``).
SIBLING_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder, by the one rule of every entry point (CLIs, server, load test, Makefile):
    ``data_dir`` when given, else ``$SSI_DATA_DIR`` when set and not empty, else ``./data`` when it
    exists, else ``SIBLING_DATA`` (``shared/data`` beside the checkout) when it exists, else ``./data``
    (where ``python -m training.data download`` puts a dataset)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir)
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    if not LOCAL_DATA.is_dir() and SIBLING_DATA.is_dir():
        return SIBLING_DATA
    return LOCAL_DATA


def dataset_path(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Map a dataset name (``beauty``, ``toys``, ``sports``, ``lastfm`` or any ``NAME``) to its file."""
    folder = resolve_data_dir(data_dir)
    candidates = [DATASET_FILES.get(name.lower(), ""), f"{name}.txt", name]
    for c in candidates:
        if c and (folder / c).is_file():
            return folder / c
    if folder.is_dir():  # case-insensitive match on the stem: a run records `tiny` for `Tiny.txt`
        for p in sorted(folder.glob("*.txt")):
            if p.stem.lower() == name.lower():
                return p
    known = sorted(set(DATASET_FILES) | {p.stem for p in folder.glob("*.txt") if not p.stem.endswith("_sample")})
    hint = ""
    if name.lower() in DATASET_FILES:
        hint = (f" Download it with: python -m training.data --data-dir {shlex.quote(str(folder))} download"
                f" {name.lower()}.")
    raise DataError(
        f"dataset {name!r} not found in data folder {folder.resolve()} (set --data-dir or SSI_DATA_DIR)."
        f"{hint} Known names: {', '.join(known)}."
    )


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Short names of the paper datasets present in the folder (Beauty, Toys, Sports)."""
    folder = resolve_data_dir(data_dir)
    return [n for n in PAPER_DATASETS if (folder / DATASET_FILES[n]).is_file()]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class SequenceDataset:
    """All users' chronological item sequences. Item ids run 1..num_items; 0 is padding.

    ``sequences[u]`` is the full sequence of the user ``users[u]`` (int64). ``user_index`` is the row
    (0..U-1); models that embed users use ``row + 1`` so that 0 stays the unknown user.
    """

    name: str
    path: Path
    sha256: str
    users: np.ndarray  # (U,) raw user ids from the file
    sequences: list[np.ndarray]
    num_items: int
    skipped_short: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_actions(self) -> int:
        return int(sum(len(s) for s in self.sequences))


def parse_sequences(path: Path, min_items: int = MIN_ITEMS, skip_short: bool = True):
    """Parse a sequence file. Raises DataError naming the file and line for any malformed line."""
    users: list[int] = []
    seqs: list[np.ndarray] = []
    skipped = 0
    seen_users: dict[int, int] = {}
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - opened apart from the with below to name the file in the error
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue  # blank lines are allowed
            try:
                ids = [int(p) for p in parts]
            except ValueError:
                bad = next(p for p in parts if not p.lstrip("-").isdigit())
                raise DataError(f"{path}:{lineno}: non-integer id {bad!r}; expected 'user item item ...'") from None
            if any(i < 1 for i in ids[1:]):
                bad = next(i for i in ids[1:] if i < 1)
                raise DataError(f"{path}:{lineno}: item id {bad} out of range; item ids start at 1 (0 is padding)")
            if len(ids) < 2:
                raise DataError(f"{path}:{lineno}: user {ids[0]} has no items; expected 'user item item ...'")
            if ids[0] in seen_users:
                raise DataError(f"{path}:{lineno}: user {ids[0]} appears again (first on line {seen_users[ids[0]]})")
            seen_users[ids[0]] = lineno
            if len(ids) - 1 < min_items:
                if not skip_short:
                    raise DataError(
                        f"{path}:{lineno}: user {ids[0]} has {len(ids) - 1} items; leave-one-out needs at least {min_items}"
                    )
                skipped += 1
                continue
            users.append(ids[0])
            seqs.append(np.asarray(ids[1:], dtype=np.int64))
    if not seqs:
        raise DataError(f"{path}: no usable user sequences (empty file, or every user has fewer than {min_items} items)")
    return np.asarray(users, dtype=np.int64), seqs, skipped


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, skip_short: bool = True) -> SequenceDataset:
    """Load a dataset by name or path. Users with fewer than 3 items are skipped (counted in ``skipped_short``)."""
    path = Path(name) if Path(name).suffix == ".txt" and Path(name).is_file() else dataset_path(name, data_dir)
    users, seqs, skipped = parse_sequences(path, skip_short=skip_short)
    num_items = int(max(int(s.max()) for s in seqs))
    short = path.stem.lower()
    for k, v in DATASET_FILES.items():
        if v == path.name:
            short = k
    return SequenceDataset(
        name=short, path=path, sha256=sha256_file(path), users=users, sequences=seqs,
        num_items=num_items, skipped_short=skipped,
    )
