"""``python -m training.data info`` reports repeated items, and the protocol treats repeated targets as
the README says: never a sampled negative; in full ranking the history is removed but the target is not."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protocol import evaluate, load_dataset, load_or_create_negatives
from training.data import main as data_cli
from training.data import repeat_stats

# user 1: a consecutive repeat (2 2), targets new; user 2: test target 5 already seen;
# user 3: both targets already seen and a consecutive repeat (8 8) at the end; users 4-120: no repeats
LINES = ["1 1 2 2 3 4", "2 5 6 5 7 5", "3 8 9 8 8"] + [
    f"{u} " + " ".join(str(10 + (u * 3 + k) % 190) for k in range(5)) for u in range(4, 121)]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "rep.txt").write_text("\n".join(LINES) + "\n")
    return tmp_path


def test_info_reports_repeats_and_targets_in_history(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert data_cli(["--data-dir", str(data_dir), "info", "rep"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["users"] == 120
    assert out["consecutive_repeats"] == {"pairs": 2, "users": 2, "share_of_users": round(2 / 120, 4)}
    assert out["targets_in_history"] == {"valid": {"users": 1, "share": round(1 / 120, 4)},
                                         "test": {"users": 2, "share": round(2 / 120, 4)}}


def test_repeat_stats_of_a_clean_dataset(data_dir: Path) -> None:
    (data_dir / "clean.txt").write_text("1 1 2 3\n2 4 5 6 7\n")
    stats = repeat_stats(load_dataset("clean", data_dir))
    assert stats["consecutive_repeats"]["pairs"] == 0
    assert stats["targets_in_history"]["test"]["users"] == 0 and stats["targets_in_history"]["valid"]["users"] == 0


def test_a_repeated_target_is_never_a_negative_and_can_rank_first(data_dir: Path) -> None:
    """The README's wording, checked: user 3 (row 2) has test target 8 in its history (8 9 8)."""
    ds = load_dataset("rep", data_dir)
    negs = load_or_create_negatives(ds)
    for row, seq in enumerate(ds.sequences):
        assert not set(negs.items[row].tolist()) & set(seq.tolist())  # negatives avoid the whole sequence

    def scorer(hist: np.ndarray, rows: np.ndarray, cand: np.ndarray | None) -> np.ndarray:
        scores = np.zeros((len(rows), ds.num_items + 1), dtype=np.float32)
        scores[:, 8] = 3.0  # item 8 first: a target, and in user 3's history
        scores[:, 9] = 2.0  # item 9 second: only in the history
        return scores if cand is None else np.take_along_axis(scores, cand, axis=1)

    _, ranks = evaluate(scorer, ds, "test", "full", max_len=10, return_ranks=True)
    assert ranks[2] == 0  # the seen target stays in the ranking, and first (ranks are 0-based)
    _, ranks = evaluate(scorer, ds, "test", "sampled", max_len=10, negatives=negs, return_ranks=True)
    assert ranks[2] == 0
