"""A teacher's task accuracy reaches report.json, teachers.md's task table and the curves (issue 26)."""
from __future__ import annotations

import json
from pathlib import Path

from protocol import SequenceDataset
from training.catalogue import Run
from training.report import curves, run_entry, task_table
from training.teachers import train_teacher


def test_task_accuracy_in_the_report(tiny_ds: SequenceDataset, tmp_path: Path) -> None:
    run = Run("tiny", "teacher_gru_temporal", 42)
    out = tmp_path / "runs"
    metrics = train_teacher("temporal", tiny_ds, "smoke", run.dir(out), seed=42, progress=False, backbone="gru4rec")
    results = {run: metrics}
    entry = run_entry(run, out, results)
    for at in ("best", "last"):
        assert {"train_task_acc", "heldout_task_acc", "heldout_task_chance", "train_task_chance"} <= set(entry["task"][at])
    assert entry["task"]["best"]["epoch"] == metrics["best_epoch"]
    json.dumps(entry)  # report.json is JSON
    md = task_table([run], results)
    assert "| tiny | teacher_gru_temporal | 42 | temporal |" in md
    assert f"{metrics['task']['best']['heldout_task_acc']:.3f}" in md
    report = tmp_path / "report"
    report.mkdir()
    assert curves([run], out, report) == ["curves_tiny_teacher_gru_temporal.png"]
    student = Run("tiny", "hgn", 42)  # a run without a task has no task entry and no table row
    assert task_table([student], {student: {k: v for k, v in metrics.items() if k != "task"}}) == ""
