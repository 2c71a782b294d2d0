"""``python -m training.teacher_confidence``: a run's confidence on its training targets against unseen ones."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protocol import train_sequences
from training.students import corrupt_sequences
from training.teacher_confidence import main, measure, training_examples


def test_training_examples_are_every_prefix_and_its_next_item() -> None:
    hist, targets = training_examples([np.array([3, 4, 5]), np.array([7, 8])], width=2)
    assert hist.tolist() == [[0, 3], [3, 4], [0, 7]] and targets.tolist() == [4, 5, 8]


def test_corrupt_swaps_about_the_share_asked_and_keeps_lengths() -> None:
    seqs = [np.arange(1, 1001) % 50 + 1, np.arange(1, 501) % 50 + 1]
    noisy, drawn = corrupt_sequences(seqs, 0.2, 1000, torch.Generator().manual_seed(0))
    assert [len(s) for s in noisy] == [1000, 500] and 0.17 < drawn < 0.23
    swapped = np.mean(np.concatenate(noisy) != np.concatenate(seqs))
    assert 0.15 < swapped <= drawn
    same, none = corrupt_sequences(seqs, 0.0, 1000)
    assert none == 0.0 and all(np.array_equal(a, b) for a, b in zip(same, seqs))


def test_measure_reads_the_three_rows(student_ds, teacher_dirs) -> None:
    run = next(iter(teacher_dirs.values()))
    clean, noisy, valid = measure(student_ds, run, augment=0.0)
    n_train = sum(len(s) - 1 for s in train_sequences(student_ds))
    assert (clean.examples, valid.examples) == (n_train, student_ds.num_users)
    assert clean.p_target == pytest.approx(noisy.p_target) and clean.hit_at_10 == noisy.hit_at_10  # nothing swapped
    for r in (clean, valid):
        assert 0.0 < r.p_target < 1.0 and 0.0 <= r.hit_at_10 <= 1.0
        assert 0.0 < r.entropy <= math.log(student_ds.num_items) + 1e-4
    _, swapped, _ = measure(student_ds, run, augment=0.5)
    assert swapped.p_target != pytest.approx(clean.p_target)


def test_cli_prints_the_table_and_names_a_missing_run(student_data_file, teacher_dirs, tmp_path, capsys) -> None:
    run = next(iter(teacher_dirs.values()))
    assert main(["--dataset", str(student_data_file), "--run", str(run), "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "| train |" in out and "| valid |" in out and (tmp_path / "c.json").exists()
    with pytest.raises(SystemExit, match="missing"):
        main(["--dataset", str(student_data_file), "--run", str(tmp_path / "nope")])
