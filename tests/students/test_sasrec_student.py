"""SASRec-CE as a student: the ``sasrec_ce`` baseline's recipe, read from one place, plus imitation.

Alone, the student path (``train_student("sasrec")``) is the ``sasrec_ce`` baseline (``train_baseline``):
the same model, trainer config, examples and batches, so the same weights bit for bit. Distilled, it is that
recipe plus the imitation terms, so ``sasrec_ce--sasrec_ce@0+sasrec_ce@1`` against ``sasrec_ce`` measures the
imitation and nothing else.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.sasrec import SASRecConfig
from protocol import load_dataset, pad_left
from training import baselines
from training.students import (
    RECENT_SEGMENTS,
    STUDENT_RECIPES,
    FrozenTeacher,
    ImitationConfig,
    StudentTask,
    build_student,
    prefix_segments,
    student_train_config,
    train_student,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_the_sasrec_student_has_the_sasrec_ce_recipe(student_ds, preset: str) -> None:
    """Model sizes and trainer config (lr, batch, epochs, patience, max_len, selection) are the baseline's."""
    model = build_student("sasrec", student_ds, preset)
    assert model.config == SASRecConfig.preset(preset, num_items=student_ds.num_items)
    cfg = student_train_config("sasrec", preset, model, seed=7, progress=False)
    assert cfg == baselines.train_config(preset, model, 7, False)
    assert cfg.select == "full" and cfg.max_len == model.config.max_len
    assert STUDENT_RECIPES["sasrec"].examples is RECENT_SEGMENTS and model.default_loss == "ce"


def test_recent_segments_are_the_baselines_windows() -> None:
    """One row per user (user order): its last max_len + 1 items as NextItemTask's inputs and targets; each
    target's teacher history is the user's whole prefix before it; a user of < 2 items has no target."""
    seqs = [np.arange(1, 31), np.arange(40, 45), np.array([7]), np.arange(50, 52)]
    ex = prefix_segments(seqs, max_len=8, recent=True)
    assert ex.rows == len(seqs) and ex.user_lengths.tolist() == [9, 5, 1, 2]
    rows = pad_left(seqs, 9)  # NextItemTask: each user's last max_len + 1 items
    inputs, targets = rows[:, :-1], np.where(rows[:, :-1] != 0, rows[:, 1:], 0)
    np.testing.assert_array_equal(ex.arrays["history"], inputs)
    np.testing.assert_array_equal(ex.arrays["targets"], targets)
    assert (ex.arrays["example"] >= 0).sum() == (targets > 0).sum() == len(ex.teacher_prefix)
    for row, col in zip(*np.nonzero(targets)):
        e = ex.arrays["example"][row, col]
        prefix = seqs[ex.teacher_users[e]][: ex.teacher_prefix[e]]
        assert ex.teacher_users[e] == row and prefix[-1] == inputs[row, col]


def test_alone_the_sasrec_student_is_the_sasrec_ce_baseline(student_ds, tmp_path: Path) -> None:
    """The same weights bit for bit and the same validation metrics every epoch (smoke preset, 5 epochs)."""
    m_base = baselines.train_baseline("sasrec_ce", student_ds, "smoke", tmp_path / "base", seed=3, progress=False)
    m_stud = train_student("sasrec", student_ds, "smoke", tmp_path / "student", seed=3, progress=False)
    a, b = load_file(tmp_path / "base" / "model.safetensors"), load_file(tmp_path / "student" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    h_base, h_stud = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("base", "student"))
    assert len(h_base) == len(h_stud) == 5
    for x, y in zip(h_base, h_stud):
        assert {k: v for k, v in x.items() if k.startswith("valid_")} == {k: v for k, v in y.items() if
                                                                           k.startswith("valid_")}
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
    assert m_base["test"] == m_stud["test"] and m_base["best_epoch"] == m_stud["best_epoch"]
    info = json.loads((tmp_path / "student" / "run.json").read_text())
    assert (info["student"], info["loss"], info["examples"]) == ("sasrec", "ce", "recent_segments")
    base_info = json.loads((tmp_path / "base" / "run.json").read_text())
    assert info["train_config"] == base_info["train_config"] and info["model_config"] == base_info["model_config"]


def test_distilled_it_adds_only_the_imitation_terms(student_ds, teacher_dirs) -> None:
    """With teachers the task's own loss is the baseline's CE on the same batch; imitation is added to it."""
    torch.manual_seed(0)
    model = build_student("sasrec", student_ds, "smoke")
    alone = StudentTask(model, student_ds, {}, ImitationConfig(), "ce", 16, scheme=RECENT_SEGMENTS)
    teachers = {n: FrozenTeacher.load(n, d, student_ds) for n, d in teacher_dirs.items()}
    distilled = StudentTask(model, student_ds, teachers, ImitationConfig(), "ce", 16, scheme=RECENT_SEGMENTS)
    distilled.on_epoch_start(1)
    batch = next(distilled.batches(1, np.random.default_rng(0), 0, 1))
    assert {k: v.tolist() for k, v in batch.items()} == \
        {k: v.tolist() for k, v in next(alone.batches(1, np.random.default_rng(0), 0, 1)).items()}
    model.eval()
    terms, base = distilled(batch), alone(batch)
    torch.testing.assert_close(terms["student"], base["loss"])
    assert {f"kl_{n}" for n in teachers} | {f"mse_{n}" for n in teachers} <= set(terms)
    assert terms["loss"].item() > terms["student"].item()
    with pytest.raises(TypeError, match="recent_segments"):
        StudentTask(build_student("hgn", student_ds, "smoke"), student_ds, {}, ImitationConfig(), "ce", 16,
                    scheme=RECENT_SEGMENTS)


@pytest.mark.slow
def test_run_all_distils_sasrec_ce_from_two_sasrec_ce_runs(student_data_file: Path, tmp_path: Path) -> None:
    """``--models sasrec_ce--sasrec_ce@0+sasrec_ce@1``: the two sasrec_ce runs train first (seeds 42, 43), then
    SASRec-CE imitates them; the run and the report name its teachers and pair it with ``sasrec_ce``."""
    from training.catalogue import alone_of, student_label

    name, out = "sasrec_ce--sasrec_ce@0+sasrec_ce@1", tmp_path / "runs"
    assert alone_of(name) == student_label(name) == "sasrec_ce"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "training/run_all.py", "--preset", "smoke", "--datasets", "tiny",
                        "--data-dir", str(student_data_file.parent), "--out", str(out), "--seeds", "42",
                        "--models", "sasrec_ce", name, "--no-export", "--max-epochs", "2"],
                       check=False, cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    ds = load_dataset(str(student_data_file))
    run = out / ds.name / name / "seed42"
    info = json.loads((run / "run.json").read_text())
    assert info["teacher_models"] == {"sasrec_ce_s0": "sasrec", "sasrec_ce_s1": "sasrec"}
    assert {k: Path(v).relative_to(out).as_posix() for k, v in info["teachers"].items()} == \
        {"sasrec_ce_s0": "tiny/sasrec_ce/seed42", "sasrec_ce_s1": "tiny/sasrec_ce/seed43"}
    assert (info["student"], info["loss"], info["examples"], info["variant"]) == ("sasrec", "ce", "recent_segments", name)
    history = json.loads((run / "history.json").read_text())
    assert {"train_kl_sasrec_ce_s0", "train_mse_sasrec_ce_s1", "lambda_sasrec_ce_s0"} <= set(history[-1])
    doc = json.loads((out / "report" / "report.json").read_text())
    entries = {(r["model"], r["seed"]): r for r in doc["runs"]}
    entry = entries[(name, 42)]
    assert entry["student"] == "sasrec_ce" and entry["alone"] == "sasrec_ce" and not entry["ensemble"]
    assert entry["teachers"] == ["sasrec_ce/seed42", "sasrec_ce/seed43"]
    assert entries[("sasrec_ce", 42)]["student"] == "sasrec_ce" and entries[("sasrec_ce", 42)]["teachers"] == []
    assert f"| tiny | {name} − sasrec_ce | 42 |" in (out / "report" / "gains.md").read_text()
