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


def test_task_control_replaces_each_task_teacher_by_its_backbone_alone_on_the_same_seed() -> None:
    """The ablation's control (issue 26): same student, loss, imitation and seed offsets, plain teachers; a named
    row keeps its name; rows that are not students of task teachers have none."""
    from training.catalogue import compose, task_control

    sas = compose("hgn_ce", ("teacher_sas_temporal@0", "teacher_sas_persona@1", "teacher_sas_global@2"))
    assert task_control(sas) == "hgn_ce--sasrec_ce_prefix@0+sasrec_ce_prefix@1+sasrec_ce_prefix@2"
    assert task_control(sas + "--mean") == "hgn_ce--sasrec_ce_prefix@0+sasrec_ce_prefix@1+sasrec_ce_prefix@2--mean"
    assert task_control("ssi_hgn_ce_gru") == "kd_hgn_ce_gru4rec"  # the catalogue's plain-KD row
    assert task_control("ssi_gru4rec_gru") == "gru4rec--gru4rec@0+gru4rec@1+gru4rec@2"
    for name in ("hgn_ce", "kd_hgn_ce_gru4rec", "hgn_ce--sasrec_ce@0+sasrec_ce@1", "teacher_sas_global",
                 "ssi_hgn_ce_gru_no_mse", "not a row"):
        assert task_control(name) is None, name


def test_task_ablation_pairs_by_seed(tmp_path: Path) -> None:
    """Each student of task teachers minus its control on the seeds both finished; mean and std of the per-seed
    differences, in task_ablation.md, report.json and the README summary."""
    from training.catalogue import task_control
    from training.report import summary, task_ablation

    ssi = "hgn_ce--teacher_sas_temporal@0+teacher_sas_persona@1+teacher_sas_global@2"
    kd = task_control(ssi)

    def m(v: float) -> dict:
        cell = {"recall@10": v, "ndcg@10": v / 2}
        return {"valid": {"full": cell, "sampled": cell}, "test": {"full": cell, "sampled": cell}}

    results = {Run("toys", ssi, 42): m(.30), Run("toys", kd, 42): m(.20),
               Run("toys", ssi, 43): m(.32), Run("toys", kd, 43): m(.30),
               Run("toys", ssi, 44): m(.50)}  # no control on seed 44: not paired
    md, rows = task_ablation(list(results), results)
    assert len(rows) == 1 and rows[0]["with_tasks"] == ssi and rows[0]["plain_teachers"] == kd
    assert rows[0]["seeds"] == [42, 43]
    got = rows[0]["full ndcg@10"]
    assert got["per_seed"] == [(.30 - .20) / 2, (.32 - .30) / 2]
    assert abs(got["mean"] - .03) < 1e-12 and got["std"] > 0
    assert f"| toys | {ssi} − {kd} | 42, 43 | +0.0600 ± 0.0566 |" in md
    text = summary(list(results), results, "")
    assert "Consistency-task ablation" in text
    assert f"| toys | {ssi} | 3 |" in text and f"| toys | {kd} | 2 |" in text  # the distilled students' table
    lone = {r: v for r, v in results.items() if r.model == ssi}
    assert task_ablation(list(lone), lone)[1] == []
    assert "Consistency-task ablation" not in summary(list(lone), lone, "")


def test_task_effect_pairs_each_teacher_with_its_backbone_alone_on_its_seed() -> None:
    """What one task does to its teacher: the teacher minus its plain backbone row on the same seed, in the README
    summary; a teacher whose control did not run on its seed is not paired."""
    from training.catalogue import teacher_control
    from training.report import TASK_EFFECT_TITLE, summary, task_effect

    assert teacher_control("teacher_gru_persona") == "gru4rec"
    assert teacher_control("teacher_sas_global") == "sasrec_ce_prefix"
    assert teacher_control("teacher_temporal") == "bert4rec"
    for name in ("gru4rec", "ssi_hgn_ce_gru", "hgn_ce--teacher_sas_temporal@0", "not a row"):
        assert teacher_control(name) is None, name

    def m(v: float) -> dict:
        cell = {"recall@10": v, "ndcg@10": v / 2}
        return {"valid": {"full": cell, "sampled": cell}, "test": {"full": cell, "sampled": cell}}

    results = {Run("toys", "teacher_gru_temporal", 42): m(.30), Run("toys", "gru4rec", 42): m(.34),
               Run("toys", "gru4rec", 43): m(.36), Run("toys", "teacher_gru_persona", 43): m(.40),
               Run("toys", "teacher_gru_global", 44): m(.20)}  # gru4rec seed 44 missing: not paired
    md, rows = task_effect(list(results), results)
    assert [(r["teacher"], r["plain"], r["seeds"]) for r in rows] == [
        ("teacher_gru_temporal", "gru4rec", [42]), ("teacher_gru_persona", "gru4rec", [43])]
    assert abs(rows[0]["full ndcg@10"]["mean"] - (.30 - .34) / 2) < 1e-12
    assert "| toys | teacher_gru_temporal − gru4rec | 42 | -0.0400 |" in md
    assert TASK_EFFECT_TITLE in summary(list(results), results, "")
    lone = {r: v for r, v in results.items() if r.model.startswith("teacher")}
    assert task_effect(list(lone), lone)[1] == [] and TASK_EFFECT_TITLE not in summary(list(lone), lone, "")
