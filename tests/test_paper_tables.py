"""training/paper.py carries the paper's full Tables 2 and 3; they must equal the transcription of the
paper (``table2.csv``, ``table3.csv`` in ``$SSI_PAPER_DIR``, else ``../shared/paper`` beside the checkout).
Skipped where that transcription is absent."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from training.paper import COLUMNS, TABLE2, TABLE3, TABLE3_DATASET, TABLE3_STUDENT, TABLE3_VARIANTS

ROOT = Path(__file__).resolve().parents[1]
PAPER_DIR = Path(os.environ.get("SSI_PAPER_DIR") or ROOT.parent / "shared" / "paper")


def _rows(name: str) -> list[dict[str, str]]:
    path = PAPER_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_table2_matches_the_paper() -> None:
    rows = _rows("table2.csv")
    assert tuple(c for c in rows[0] if c not in ("dataset", "model")) == COLUMNS
    want = {(r["dataset"], r["model"]): {m: float(r[m]) for m in COLUMNS} for r in rows}
    got = {(ds, model): cells for ds, models in TABLE2.items() for model, cells in models.items()}
    assert got == want


def test_table3_matches_the_paper() -> None:
    rows = _rows("table3.csv")
    assert {(r["dataset"], r["student"]) for r in rows} == {(TABLE3_DATASET, TABLE3_STUDENT)}
    by_label = {label: name for name, label in TABLE3_VARIANTS.items()}
    want = {by_label[r["variant"]]: {m: float(r[m]) for m in ("recall@10", "ndcg@10")} for r in rows}
    assert TABLE3 == want


def test_tables_are_complete_without_the_csv() -> None:
    """Every dataset has every model and every metric; the ablation's 'w/o both' row is Table 2's HGN."""
    models = set(TABLE2["beauty"])
    assert {"mostpop", "gru4rec", "hgn", "bert4rec", "s3rec", "grec", "ssi_gru4rec", "ssi_hgn"} == models
    for ds, cells in TABLE2.items():
        assert set(cells) == models, ds
        assert all(set(v) == set(COLUMNS) and all(0 < x < 1 for x in v.values()) for v in cells.values()), ds
    assert set(TABLE3) == set(TABLE3_VARIANTS)
    hgn = TABLE2[TABLE3_DATASET][TABLE3_STUDENT]
    assert TABLE3["hgn"] == {m: hgn[m] for m in ("recall@10", "ndcg@10")}
    assert TABLE3["ssi_hgn"] == {m: TABLE2[TABLE3_DATASET]["ssi_hgn"][m] for m in ("recall@10", "ndcg@10")}
