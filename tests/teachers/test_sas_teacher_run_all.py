"""End to end at the smoke preset: a consistency teacher on the SASRec-CE backbone (catalogue row
``teacher_sas_temporal``) and an HGN-CE student composed from it, through ``training/run_all.py``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_sas_teacher_and_a_student_composed_from_it(tiny_path: Path, tmp_path: Path) -> None:
    out, student = tmp_path / "runs", "hgn_ce--teacher_sas_temporal"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "training/run_all.py", "--preset", "smoke", "--datasets", "tiny",
                        "--data-dir", str(tiny_path.parent), "--out", str(out), "--seeds", "42", "--models", student,
                        "--no-export", "--max-epochs", "2"],
                       check=False, cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    teacher = out / "tiny" / "teacher_sas_temporal" / "seed42"
    info = json.loads((teacher / "run.json").read_text())
    assert info["teacher_backbone"] == "sasrec" and info["teacher_variant"] == "temporal"
    assert json.loads((teacher / "model_config.json").read_text())["model"] == "sasrec"
    assert json.loads((out / "tiny" / student / "seed42" / "run.json").read_text())["teacher_models"] == \
        {"sas_temporal": "sasrec"}
    doc = json.loads((out / "report" / "report.json").read_text())
    entries = {r["model"]: r for r in doc["runs"]}
    task = entries["teacher_sas_temporal"]["task"]
    for at in ("best", "last"):  # task accuracy and chance reach the report (issue 26)
        assert {"train_task_acc", "heldout_task_acc", "train_task_chance", "heldout_task_chance"} <= set(task[at])
    assert entries[student]["student"] == "hgn_ce" and entries[student]["teachers"] == ["teacher_sas_temporal/seed42"]
    assert entries[student]["alone"] == "hgn_ce"


def test_sas_teachers_and_their_plain_control_compose_and_plan() -> None:
    """The task teachers on seeds + 0/1/2 and the plain sasrec_ce_prefix runs (their recipe without the task,
    ``PLAIN_ROWS["sasrec"]``) on the same seeds, as compositions."""
    from training.catalogue import (
        PLAIN_ROWS,
        PLAIN_SAS_TEACHERS,
        SAS_TEACHERS,
        TEACHER_BACKBONES,
        alone_of,
        compose,
        plan,
        spec_of,
    )
    from training.teachers import BACKBONES

    assert set(TEACHER_BACKBONES.values()) == set(BACKBONES) == set(PLAIN_ROWS)
    assert {spec_of(f"teacher_sas_{v}").backbone for v in ("temporal", "persona", "global")} == {"sasrec"}
    ssi, kd = compose("hgn_ce", SAS_TEACHERS), compose("hgn_ce", PLAIN_SAS_TEACHERS)
    assert ssi == "hgn_ce--teacher_sas_temporal@0+teacher_sas_persona@1+teacher_sas_global@2"
    assert alone_of(ssi) == alone_of(kd) == "hgn_ce"
    runs = plan(["beauty"], [ssi, kd], [42, 43, 44], [])
    firsts = {(r.model, r.seed) for r in runs if not spec_of(r.model).teachers}
    assert firsts == {("teacher_sas_temporal", 42), ("teacher_sas_persona", 43), ("teacher_sas_global", 44),
                      ("sasrec_ce_prefix", 42), ("sasrec_ce_prefix", 43), ("sasrec_ce_prefix", 44)}
    assert {r.partition("@")[0] for r in PLAIN_SAS_TEACHERS} == {PLAIN_ROWS["sasrec"]}
    assert [r.seed for r in runs if r.model == ssi] == [r.seed for r in runs if r.model == kd] == [42, 43, 44]
    assert max(i for i, r in enumerate(runs) if (r.model, r.seed) in firsts) < min(
        i for i, r in enumerate(runs) if spec_of(r.model).teachers)
