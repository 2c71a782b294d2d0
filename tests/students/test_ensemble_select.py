"""Ensemble members chosen on validation full NDCG@10 (greedy forward selection), never on test."""
from __future__ import annotations

from pathlib import Path

import pytest

from protocol import evaluate, load_or_create_negatives
from training.ensemble import EnsembleScorer, _member_scorer, main, select_members


def _valid_full(dirs: list[Path], ds) -> float:
    scorer = EnsembleScorer([_member_scorer(d, ds) for d in dirs])
    return evaluate(scorer, ds, "valid", "full", max_len=50, negatives=load_or_create_negatives(ds))["ndcg@10"]


def test_greedy_selection_follows_validation_full_ndcg(teacher_dirs, student_ds):
    cands = list(teacher_dirs.values())
    chosen, trace = select_members(cands, student_ds, max_members=3)
    singles = {d: _valid_full([d], student_ds) for d in cands}
    assert chosen[0] == max(cands, key=lambda d: (singles[d], -cands.index(d)))  # the best single first
    assert trace[0]["tried"] == {str(d): pytest.approx(v) for d, v in singles.items()}
    values = [row["valid_full_ndcg@10"] for row in trace]
    assert values == sorted(values) and len(set(values)) == len(values)  # each step strictly improves
    assert values[-1] == pytest.approx(_valid_full(chosen, student_ds))
    assert len(chosen) == len(set(chosen)) <= 3
    if len(chosen) < len(cands):  # it stopped: no remaining candidate improved the last ensemble
        rest = [d for d in cands if d not in chosen]
        assert all(_valid_full([*chosen, d], student_ds) <= values[-1] + 1e-12 for d in rest)


def test_select_cli_names_an_unfinished_run(teacher_dirs, student_data_file, tmp_path, capsys):
    d = next(iter(teacher_dirs.values()))  # a folder with weights but no metrics.json
    code = main(["select", str(d), "--dataset", student_data_file.stem, "--data-dir", str(student_data_file.parent),
                 "--out", str(tmp_path / "ens")])
    assert code == 2 and str(d) in capsys.readouterr().err
