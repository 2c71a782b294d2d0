"""End to end: `python training/run_all.py --preset smoke --datasets lastfm` writes every report file."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import capturing

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], env_extra: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "training/run_all.py", *args], check=False, cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def test_missing_dataset_fails_fast(tmp_path):
    p = _run(["--preset", "smoke", "--datasets", "nope", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert p.returncode != 0 and "dataset 'nope' not found" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


def test_bad_preset_fails_fast(tmp_path):
    p = _run(["--preset", "huge", "--out", str(tmp_path / "o")])
    assert p.returncode == 2 and "invalid choice: 'huge'" in p.stderr


def test_unwritable_out_fails_fast(tmp_path, shared_data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = _run(["--preset", "smoke", "--datasets", "lastfm", "--data-dir", str(shared_data_dir),
              "--out", str(blocker / "sub")])
    assert p.returncode != 0 and "not writable" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
@pytest.mark.timeout(1500)  # three invocations; a busy machine can take more than the default 600 s
def test_smoke_reproduction_writes_every_report_file(tmp_path, shared_data_dir):
    out, serving = tmp_path / "runs", tmp_path / "serving"
    args = ["--preset", "smoke", "--datasets", "lastfm", "--data-dir", str(shared_data_dir), "--out", str(out),
            "--export-out", str(serving), "--teacher-layers", "1",
            # one row per report element (the full smoke catalogue is `make train`; too slow for CI's budget)
            "--models", "mostpop", "hgn", "sasrec", "ssi_hgn", "ssi_hgn_no_kl", "ssi_hgn_no_mse", "ssi_hgn_temporal"]
    p = _run(args)
    assert p.returncode == 0, p.stderr[-3000:]
    report = out / "report"
    for f in ("table2.md", "table2.csv", "table2_full.md", "table2_full.csv", "table3.md", "fig3.png", "fig4.png",
              "report.json", "teachers.md", "options.md", "summary.md"):
        assert (report / f).is_file(), f
    doc = json.loads((report / "report.json").read_text())
    models = {r["model"] for r in doc["runs"]}
    assert {"mostpop", "hgn", "sasrec", "ssi_hgn", "ssi_hgn_no_kl", "ssi_hgn_no_mse", "ssi_hgn_temporal",
            "teacher_temporal", "teacher_persona", "teacher_global", "ssi_hgn_L1"} <= models
    assert doc["datasets"]["lastfm"]["negatives_sha256"]
    assert any(f.startswith("curves_lastfm_ssi_hgn") for f in doc["figures"]["curves"])
    table = (report / "table2.md").read_text()
    assert "| lastfm | ssi_hgn |" in table
    latest = (serving / "latest").read_text().strip()
    assert (serving / latest / "manifest.json").is_file()
    # the served student is the finished student with the best validation full NDCG@10, named by its row
    students = [r for r in doc["runs"] if r["model"] in {"hgn", "ssi_hgn", "ssi_hgn_no_kl", "ssi_hgn_no_mse",
                                                          "ssi_hgn_temporal"}]
    best = max(students, key=lambda r: r["metrics"]["valid"]["full"]["ndcg@10"])
    manifest = json.loads((serving / latest / "manifest.json").read_text())
    assert manifest["model"]["name"] == best["model"] and manifest["architecture"] == "hgn"
    assert doc["served"] == {"lastfm": f"{best['model']}/seed42"}
    # each entry says what it is, read from its spec and run.json
    by = {r["model"]: r for r in doc["runs"]}
    assert by["ssi_hgn"]["student"] == "hgn" and by["ssi_hgn"]["alone"] == "hgn" and not by["ssi_hgn"]["ensemble"]
    assert sorted(by["ssi_hgn"]["teachers"]) == ["teacher_global/seed42", "teacher_persona/seed42",
                                                 "teacher_temporal/seed42"]
    assert by["ssi_hgn_temporal"]["teachers"] == ["teacher_temporal/seed42"]
    assert by["hgn"]["teachers"] == [] and by["hgn"]["alone"] == "hgn"
    assert by["teacher_temporal"]["student"] is None and by["sasrec"]["student"] is None
    assert "serving lastfm/" + best["model"] in p.stderr
    # a second invocation skips every finished run and only rewrites the report
    p2 = _run(args)
    assert p2.returncode == 0
    hist = out / "lastfm" / "ssi_hgn" / "seed42" / "history.json"
    assert json.loads(hist.read_text()) and "resumed" not in p2.stderr
    assert "| lastfm | ssi_hgn − hgn | 42 |" in (report / "gains.md").read_text()
    assert doc["gains"][0]["ssi"] == "ssi_hgn" and len(doc["gains"][0]["full ndcg@10"]["per_seed"]) == 1
    # --report-only trains nothing: an unfinished row is named as missing
    p3 = _run([*args, "--report-only", "--models", "hgn", "gru4rec"])
    assert p3.returncode == 0, p3.stderr[-3000:]
    assert "lastfm/gru4rec/seed42" in p3.stderr and not (out / "lastfm" / "gru4rec").exists()
    assert "| lastfm | hgn |" in (report / "table2.md").read_text()


def test_run_lock_is_exclusive_and_names_the_holder(tmp_path):
    from training.runs import run_lock

    with run_lock(tmp_path / "r") as first:
        assert first is None
        with run_lock(tmp_path / "r") as second:
            assert second == os.getpid()
    with run_lock(tmp_path / "r") as again:  # released with its descriptor
        assert again is None


def test_a_run_another_process_is_training_is_skipped(tmp_path, shared_data_dir):
    from training.runs import run_lock

    out = tmp_path / "runs"
    args = ["--preset", "smoke", "--datasets", "lastfm", "--data-dir", str(shared_data_dir), "--out", str(out),
            "--models", "mostpop", "--no-export"]
    with run_lock(out / "lastfm" / "mostpop" / "seed42"):
        p = _run(args)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"lastfm/mostpop/seed42 is being trained by another process (pid {os.getpid()}); skipped" in p.stderr
    assert not (out / "lastfm" / "mostpop" / "seed42" / "metrics.json").exists()
    p = _run(args)  # lock released: the run is trained now
    assert p.returncode == 0 and (out / "lastfm" / "mostpop" / "seed42" / "metrics.json").is_file()


def test_plan_puts_referenced_rows_first_once() -> None:
    from training.run_all import plan

    runs = plan(["beauty"], ["ssi_hgn_ce_gru", "kd_hgn_ce_gru4rec", "ensemble_gru_teachers"], [42, 43, 44], [])
    names = [(r.model, r.seed) for r in runs]
    assert len(names) == len(set(names))
    assert names.index(("teacher_gru_global", 44)) < names.index(("ensemble_gru_teachers", 42)) \
        < names.index(("ssi_hgn_ce_gru", 42))
    assert {("gru4rec", s) for s in (42, 43, 44)} <= set(names)  # the plain teachers of the KD control
    assert ("teacher_gru_temporal", 43) not in names and ("teacher_gru_persona", 43) in names  # one seed each


def test_references_are_seed_offsets_and_always_resolve() -> None:
    from training.run_all import CATALOG, plan, resolve_reference

    assert resolve_reference("gru4rec@2", "lastfm", [7]).seed == 9
    runs = plan(["lastfm"], ["kd_hgn_ce_gru4rec"], [42], [])
    assert [(r.model, r.seed) for r in runs] == [("gru4rec", 42), ("gru4rec", 43), ("gru4rec", 44),
                                                  ("kd_hgn_ce_gru4rec", 42)]
    assert plan(["lastfm"], list(CATALOG), [42], [])  # every row plans with one seed


def test_a_later_first_seed_warns_that_it_would_train_new_teachers(tmp_path) -> None:
    from training.run_all import plan, unfinished_references

    for rel in ("beauty/teacher_gru_temporal/seed42", "beauty/teacher_gru_persona/seed43",
                "beauty/teacher_gru_global/seed44"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "metrics.json").write_text("{}")
    assert unfinished_references(plan(["beauty"], ["ssi_hgn_ce_gru_mean"], [42, 43, 44], []), [42, 43, 44],
                                 tmp_path) == []
    lines = unfinished_references(plan(["beauty"], ["ssi_hgn_ce_gru_mean"], [43, 44], []), [43, 44], tmp_path)
    assert len(lines) == 3  # temporal@0 -> seed 43, persona@1 -> 44, global@2 -> 45: three new teachers
    assert lines[0].startswith("beauty/teacher_gru_temporal/seed43 is imitated") and "[42]" in lines[0]
    assert all("start --seeds at 42" in line for line in lines)


def test_run_all_refuses_to_train_new_teachers_beside_finished_ones_unless_asked(tmp_path) -> None:
    from tests.conftest import write_sequences
    from training.run_all import main

    data = tmp_path / "data"
    data.mkdir()
    write_sequences(data / "Tiny.txt", {u: [(u * 7 + k) % 150 + 1 for k in range(6)] for u in range(1, 41)})
    out = tmp_path / "runs"
    for rel in ("tiny/teacher_gru_temporal/seed42", "tiny/teacher_gru_persona/seed43", "tiny/teacher_gru_global/seed44"):
        (out / rel).mkdir(parents=True)
        (out / rel / "metrics.json").write_text(json.dumps({**_full_metrics(0.3), "wall_time_s": 1.0, "best_epoch": 1}))
    argv = ["--preset", "smoke", "--datasets", "tiny", "--data-dir", str(data), "--models",
            "ssi_hgn_ce_gru_mean", "--seeds", "43", "--out", str(out), "--no-export"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    message = str(e.value.code)
    assert message.startswith("error: tiny/teacher_gru_temporal/seed43 is imitated") and "--train-new-teachers" in message
    assert not (out / "tiny" / "teacher_gru_temporal" / "seed43").exists()  # nothing was trained
    assert main([*argv, "--report-only"]) == 0  # it trains nothing, so it reports what is there instead of refusing
    assert not (out / "tiny" / "teacher_gru_temporal" / "seed43").exists()


def _metrics(valid: float, test: float = 0.3, sampled: float | None = None) -> dict:
    """Full N@10 = ``valid`` / 10; sampled N@10 = ``sampled`` (default ``valid``): the two can disagree."""
    cell = lambda v, smp: {"sampled": {"ndcg@10": smp, "recall@10": smp}, "full": {"ndcg@10": v / 10, "recall@10": v / 5}}
    return {"valid": cell(valid, valid if sampled is None else sampled), "test": cell(test, test)}


def test_the_served_student_is_the_best_on_validation_and_the_log_says_why() -> None:
    from training.run_all import Run, choose_served

    results = {Run("d", "hgn_ce", 42): _metrics(0.30, test=0.99), Run("d", "ssi_hgn_ce_gru", 42): _metrics(0.33),
               Run("d", "teacher_gru_temporal", 42): _metrics(0.40), Run("d", "ensemble_gru_teachers", 42):
               _metrics(0.41), Run("other", "hgn", 42): _metrics(0.50)}
    best, why = choose_served(results, "d")
    assert best == Run("d", "ssi_hgn_ce_gru", 42)  # not a teacher, not the test-best, not another dataset
    assert "pays" in why and "0.0330" in why and "hgn_ce" in why and "full" in why
    # full ranking decides, not the sampled metric: a student better on sampled only is not served
    results[Run("d", "ssi_hgn_ce_gru_mean", 42)] = _metrics(0.32, sampled=0.90)
    assert choose_served(results, "d")[0] == Run("d", "ssi_hgn_ce_gru", 42)
    results[Run("d", "hgn_ce", 43)] = _metrics(0.35)  # hgn_ce's mean .325 < .33: its best run alone does not win
    assert choose_served(results, "d")[0] == Run("d", "ssi_hgn_ce_gru", 42)
    results[Run("d", "hgn_ce", 43)] = _metrics(0.37)  # mean .335 > .33: the row wins, its best seed is exported
    best, why = choose_served(results, "d")
    assert best == Run("d", "hgn_ce", 43) and "ALONE" in why and "does not pay" in why and "over 2 seeds" in why
    assert choose_served(results, "nothing") is None


def test_the_served_row_is_the_best_mean_over_seeds_not_the_luckiest_run() -> None:
    """A row whose one seed is the best run but whose mean is lower is not served; the winning row exports its
    best seed, and the reason names both figures."""
    from training.run_all import Run, choose_served

    steady, lucky = "ssi_hgn_ce_gru", "ssi_hgn_ce_gru_mean"
    results = {Run("d", steady, 42): _metrics(0.70), Run("d", steady, 43): _metrics(0.72),
               Run("d", steady, 44): _metrics(0.69), Run("d", lucky, 42): _metrics(0.60),
               Run("d", lucky, 43): _metrics(0.73), Run("d", lucky, 44): _metrics(0.60),
               Run("d", "hgn_ce", 42): _metrics(0.50), Run("d", "teacher_gru_temporal", 42): _metrics(0.90)}
    best, why = choose_served(results, "d")
    assert best == Run("d", steady, 43)  # the row of mean .0703 (not .0643), and its best seed (.0720)
    assert why.startswith(f"d/{steady}/seed43: the best of 3 finished student rows")
    assert "row mean N@10 0.0703 over 3 seeds; this seed, the row's best, 0.0720" in why
    assert "same student alone (hgn_ce: mean valid full N@10 0.0500 over 1 seed)" in why


def test_a_row_served_over_fewer_seeds_than_another_says_so() -> None:
    """A one-seed row far above three-seed rows is served (leaving it out would serve a worse model), and the
    line warns that one seed carries it; a winner with the most seeds gets no such warning."""
    from training.run_all import Run, choose_served

    full, partial = "ssi_hgn_ce_gru", "ssi_hgn_ce_gru_mean"
    results = {Run("d", full, 42): _metrics(0.70), Run("d", full, 43): _metrics(0.72), Run("d", full, 44): _metrics(0.69),
               Run("d", partial, 42): _metrics(0.80)}
    best, why = choose_served(results, "d")
    assert best == Run("d", partial, 42)
    assert "over 1 seed; this seed, the row's best, 0.0800, sampled 0.8000; fewer seeds than the 3 seeds of another row" in why
    results[Run("d", partial, 42)] = _metrics(0.60)
    best, why = choose_served(results, "d")
    assert best == Run("d", full, 43) and "fewer seeds" not in why


def test_discover_finished_reads_every_row_under_out(tmp_path) -> None:
    from training.run_all import Run, discover_finished

    for rel in ("beauty/hgn/seed42", "toys/ssi_hgn_L2/seed42", "beauty/not_a_row/seed1", "beauty/hgn_ce/seed43"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "metrics.json").write_text("{}")
    (tmp_path / "beauty" / "gru4rec" / "seed42").mkdir(parents=True)  # unfinished: no metrics.json
    found = discover_finished(tmp_path, {Run("beauty", "hgn_ce", 43)})
    assert set(found) == {Run("beauty", "hgn", 42), Run("toys", "ssi_hgn", 42, 2)}


def test_update_readme_replaces_only_the_marked_block(tmp_path) -> None:
    from training.run_all import README_END, README_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{README_START}\nold table\n{README_END}\nbottom\n")
    update_readme(readme, "| new | table |\n")
    assert readme.read_text() == f"top\n{README_START}\n| new | table |\n{README_END}\nbottom\n"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no block"):
        update_readme(readme, "x")


def test_a_run_folder_of_another_preset_is_not_reused(tmp_path, shared_data_dir) -> None:
    args = ["--datasets", "lastfm", "--data-dir", str(shared_data_dir), "--out", str(tmp_path), "--models",
            "mostpop", "--no-export"]
    assert _run(["--preset", "smoke", *args]).returncode == 0
    doc = json.loads((tmp_path / "lastfm" / "mostpop" / "seed42" / "run.json").read_text())
    assert (doc["variant"], doc["preset"]) == ("mostpop", "smoke")
    p = _run(["--preset", "cpu", *args])
    assert p.returncode == 0 and "made with preset smoke, not cpu" in p.stderr and "lastfm/mostpop/seed42" in p.stderr
    assert _run(["--preset", "cpu", "--fresh", *args]).returncode == 0  # --fresh retrains it under the new preset
    assert json.loads((tmp_path / "lastfm" / "mostpop" / "seed42" / "run.json").read_text())["preset"] == "cpu"


def test_runs_as_compositions_plan_and_pair_like_catalogue_rows() -> None:
    """A run no catalogue row names is spelled by its parts; its teachers, student alone and ensemble flag come
    from that spec, its folder is its name, and a bad part is one clear error."""
    import argparse

    from training.catalogue import (
        SpecError,
        alone_of,
        compose,
        is_student_row,
        row_name,
        spec_of,
        student_label,
    )
    from training.run_all import Run, plan

    name = compose("hgn_ce", ("sasrec_ce@0", "sasrec_ce@1", "sasrec_ce@2"), "mean")
    assert name == "hgn_ce--sasrec_ce@0+sasrec_ce@1+sasrec_ce@2--mean"
    spec = spec_of(name)
    assert (spec.student, spec.loss, spec.imitation.target) == ("hgn", "ce", "mean")
    assert alone_of(name) == "hgn_ce" and student_label(name) == "hgn_ce" and is_student_row(name)
    runs = plan(["beauty"], [name, "hgn_ce"], [42, 43, 44], [])
    teachers = [r for r in runs if r.model == "sasrec_ce"]
    assert [r.seed for r in teachers] == [42, 43, 44]
    students = [r for r in runs if r.model == name]
    assert [r.seed for r in students] == [42, 43, 44] and runs.index(students[0]) > runs.index(teachers[-1])
    assert Run("beauty", name, 42).dir(Path("o")) == Path("o/beauty") / name / "seed42"
    # the same composition as a catalogue row pairs the same way
    assert alone_of("ssi_hgn_ce_gru_mean") == alone_of("hgn_ce--teacher_gru_temporal--mean") == "hgn_ce"
    # proj: a learned projection per teacher even where the dims agree (a SASRec student of SASRec teachers)
    proj = spec_of("sasrec_ce--sasrec_ce@0+sasrec_ce@1--proj")
    assert proj.imitation.always_project and not spec_of("sasrec_ce--sasrec_ce@0+sasrec_ce@1").imitation.always_project
    ens = spec_of("ensemble--sasrec_ce+gru4rec+hgn_ce")
    assert ens.is_ensemble and ens.members == ("sasrec_ce", "gru4rec", "hgn_ce") and not is_student_row("ensemble--sasrec_ce+hgn_ce")
    for bad, part in (("sasrec--hgn", "'sasrec' is not a student"), ("hgn_ce--nope", "'nope' is not a row"),
                      ("hgn_ce--sasrec_ce--t9", "unknown imitation option 't9'"), ("whatever", "is not a catalogue row")):
        with pytest.raises(SpecError, match=part):
            spec_of(bad)
        with pytest.raises(argparse.ArgumentTypeError):
            row_name(bad)


@pytest.mark.slow
def test_a_composed_run_trains_from_a_sasrec_teacher(tmp_path) -> None:
    """``--models hgn_ce--sasrec_ce``: SASRec-CE (a baseline row) trains first, then HGN-CE imitates it through
    the teacher contract; the report names the student, its teacher and its student alone."""
    import numpy as np

    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    data.mkdir()
    lines = [f"{u} " + " ".join(str((s + k) % 200 + 1) for k in range(int(rng.integers(6, 12))))
             for u, s in enumerate(rng.integers(0, 200, 120), 1)]
    (data / "Ring.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "runs"
    p = _run(["--preset", "smoke", "--datasets", "ring", "--data-dir", str(data), "--out", str(out), "--seeds", "42",
              "--models", "hgn_ce", "hgn_ce--sasrec_ce", "--no-export", "--max-epochs", "2"])
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((out / "ring" / "hgn_ce--sasrec_ce" / "seed42" / "run.json").read_text())
    assert info["teacher_models"] == {"sasrec_ce": "sasrec"}
    doc = json.loads((out / "report" / "report.json").read_text())
    entry = next(r for r in doc["runs"] if r["model"] == "hgn_ce--sasrec_ce")
    assert entry["student"] == "hgn_ce" and entry["teachers"] == ["sasrec_ce/seed42"] and entry["alone"] == "hgn_ce"
    assert "| ring | hgn_ce--sasrec_ce − hgn_ce | 42 |" in (out / "report" / "gains.md").read_text()
    bad = _run(["--preset", "smoke", "--datasets", "ring", "--data-dir", str(data), "--out", str(out),
                "--models", "hgn_ce--nope"])
    assert bad.returncode == 2 and "'nope' is not a row reference" in bad.stderr and "Traceback" not in bad.stderr


def test_sasrec_ce_is_a_student_alone_and_distils_from_its_own_runs() -> None:
    """``sasrec_ce`` is SASRec with the CE loss trained alone (its spec says so, not its name), so
    ``sasrec_ce--sasrec_ce@0+sasrec_ce@1+sasrec_ce@2`` is SASRec-CE distilled from three sasrec_ce runs, paired with
    ``sasrec_ce``, and a candidate to serve like every student."""
    from training.catalogue import (
        SpecError,
        alone_of,
        compose,
        is_student_row,
        spec_of,
        student_label,
    )
    from training.run_all import Run, choose_served, plan

    own = ("sasrec_ce@0", "sasrec_ce@1", "sasrec_ce@2")
    alone = spec_of("sasrec_ce")
    assert alone.student_key == ("sasrec", "ce") and alone.baseline is None and not alone.teachers
    assert is_student_row("sasrec_ce") and student_label("sasrec_ce") == "sasrec_ce" and alone_of("sasrec_ce") is None
    name = compose("sasrec_ce", own)
    assert name == "sasrec_ce--sasrec_ce@0+sasrec_ce@1+sasrec_ce@2"
    spec = spec_of(name)
    assert (spec.group, spec.student, spec.loss, spec.teachers) == ("student", "sasrec", "ce", own)
    assert alone_of(name) == student_label(name) == "sasrec_ce" and is_student_row(name)
    assert alone_of(compose("sasrec_ce", ("sasrec_ce",), "t2")) == "sasrec_ce"
    runs = plan(["toys"], ["sasrec_ce", name], [42, 43, 44], [])
    assert [(r.model, r.seed) for r in runs] == [("sasrec_ce", s) for s in (42, 43, 44)] + [(name, s) for s in (42, 43, 44)]
    with pytest.raises(SpecError, match="'sasrec' is not a student"):
        spec_of("sasrec--sasrec_ce")  # SASRec with its paper's BCE loss stays a baseline

    def scored(full: float) -> dict:
        return {"valid": {"full": {"ndcg@10": full}, "sampled": {"ndcg@10": 0.3}}}

    results = {Run("toys", "sasrec_ce", 42): scored(0.060), Run("toys", name, 42): scored(0.065),
               Run("toys", "hgn_ce", 42): scored(0.050), Run("toys", "ensemble--sasrec_ce+hgn_ce", 42): scored(0.07)}
    best, why = choose_served(results, "toys")
    assert best.model == name and "beats the same student alone (sasrec_ce:" in why
    del results[Run("toys", name, 42)]
    best, why = choose_served(results, "toys")
    assert best.model == "sasrec_ce" and "trained ALONE" in why


def test_a_sasrec_ce_run_of_the_baseline_path_stays_finished(tmp_path) -> None:
    """sasrec_ce runs written by training/baselines.py (run.json ``baseline: sasrec_ce``) are finished sasrec_ce
    runs: run_all loads their metrics and rewrites nothing."""
    import numpy as np
    import torch

    from protocol import load_dataset
    from training.baselines import train_baseline
    from training.run_all import Run, execute, tag_run

    rng = np.random.default_rng(5)
    lines = [f"{u} " + " ".join(str((s + k) % 150 + 1) for k in range(int(rng.integers(5, 12))))
             for u, s in enumerate(rng.integers(0, 150, 60), 1)]
    (tmp_path / "Ring.txt").write_text("\n".join(lines) + "\n")
    ds = load_dataset(str(tmp_path / "Ring.txt"))
    run = Run(ds.name, "sasrec_ce", 42)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors
    try:
        m = train_baseline("sasrec_ce", ds, "smoke", run.dir(tmp_path), seed=42, progress=False)
    finally:
        torch.set_num_threads(threads)
    tag_run(run.dir(tmp_path), "sasrec_ce", "smoke")
    assert json.loads((run.dir(tmp_path) / "run.json").read_text())["baseline"] == "sasrec_ce"

    def files() -> dict:
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.dir(tmp_path).iterdir() if p.is_file()}

    before = files()
    got = execute(run, ds, "smoke", tmp_path, resume=True, seeds=[42])
    tag_run(run.dir(tmp_path), "sasrec_ce", "smoke")
    assert got["test"] == m["test"] and got["best_epoch"] == m["best_epoch"] and files() == before


def test_sasrec_ce_prefix_is_a_student_alone_and_the_sas_teachers_control() -> None:
    """``sasrec_ce_prefix`` (SASRec-CE on every prefix, recipe ``sasrec_prefix``) is a student alone of its own,
    apart from ``sasrec_ce`` (the same model, other examples): it distils from its own runs, is distilled into
    HGN-CE, is the SASRec teachers' plain control, and is served like every student."""
    from training.catalogue import (
        PLAIN_SAS_TEACHERS,
        SAS_TEACHERS,
        alone_of,
        compose,
        is_student_row,
        spec_of,
        student_label,
    )
    from training.run_all import Run, choose_served, plan

    alone = spec_of("sasrec_ce_prefix")
    assert alone.student_key == ("sasrec_prefix", "ce") != spec_of("sasrec_ce").student_key
    assert alone.baseline is None and not alone.teachers and is_student_row("sasrec_ce_prefix")
    assert student_label("sasrec_ce_prefix") == "sasrec_ce_prefix" and alone_of("sasrec_ce_prefix") is None
    assert PLAIN_SAS_TEACHERS == ("sasrec_ce_prefix@0", "sasrec_ce_prefix@1", "sasrec_ce_prefix@2")
    born_again, kd = compose("sasrec_ce_prefix", PLAIN_SAS_TEACHERS), compose("hgn_ce", PLAIN_SAS_TEACHERS)
    assert born_again == "sasrec_ce_prefix--sasrec_ce_prefix@0+sasrec_ce_prefix@1+sasrec_ce_prefix@2"
    assert kd == "hgn_ce--sasrec_ce_prefix@0+sasrec_ce_prefix@1+sasrec_ce_prefix@2"
    spec = spec_of(born_again)
    assert (spec.group, spec.student, spec.loss, spec.teachers) == ("student", "sasrec_prefix", "ce",
                                                                   PLAIN_SAS_TEACHERS)
    assert alone_of(born_again) == student_label(born_again) == "sasrec_ce_prefix" and is_student_row(born_again)
    assert alone_of(kd) == student_label(kd) == "hgn_ce"
    assert alone_of(compose("sasrec_ce_prefix", ("teacher_sas_temporal",), "t2")) == "sasrec_ce_prefix"
    # the existing sasrec_ce compositions keep their meaning
    assert alone_of("hgn_ce--sasrec_ce@0+sasrec_ce@1+sasrec_ce@2") == "hgn_ce"
    assert alone_of("sasrec_ce--sasrec_ce@0+sasrec_ce@1+sasrec_ce@2") == "sasrec_ce"
    seeds = [42, 43, 44]
    runs = plan(["toys"], ["sasrec_ce_prefix", born_again, kd], seeds, [])
    assert [(r.model, r.seed) for r in runs] == [("sasrec_ce_prefix", s) for s in seeds] + \
        [(born_again, s) for s in seeds] + [(kd, s) for s in seeds]
    # the task ablation: the SAS teachers against their plain control on the same seeds
    ablation = plan(["toys"], [compose("hgn_ce", SAS_TEACHERS), kd], seeds, [])
    assert sorted(r.seed for r in ablation if r.model == "sasrec_ce_prefix") == seeds

    def scored(full: float) -> dict:
        return {"valid": {"full": {"ndcg@10": full}, "sampled": {"ndcg@10": 0.3}}}

    results = {Run("toys", "sasrec_ce", 42): scored(0.064), Run("toys", "sasrec_ce_prefix", 42): scored(0.075),
               Run("toys", born_again, 42): scored(0.078), Run("toys", kd, 42): scored(0.06)}
    best, why = choose_served(results, "toys")
    assert best.model == born_again and "beats the same student alone (sasrec_ce_prefix: mean valid full N@10 0.0750" in why
    del results[Run("toys", born_again, 42)]
    best, why = choose_served(results, "toys")
    assert best.model == "sasrec_ce_prefix" and "trained ALONE" in why


def _full_metrics(v: float) -> dict:
    """A metrics.json's evaluation part, every cutoff present (``v`` for each value)."""
    cell = {**{f"{m}@{k}": v for m in ("recall", "ndcg") for k in (5, 10, 15, 20)}, "mrr": v}
    return {s: {"sampled": dict(cell), "full": dict(cell)} for s in ("valid", "test")}


def test_report_only_merges_the_runs_a_committed_report_records(tmp_path, caplog) -> None:
    """Run folders can be lost (a new machine); the committed report.json keeps their entries. --merge-report
    reports them beside the finished runs under --out, which win over a recorded entry of the same run."""
    from tests.conftest import write_sequences
    from training.run_all import main

    data = tmp_path / "data"
    data.mkdir()
    write_sequences(data / "Tiny.txt", {u: [(u * 7 + k) % 150 + 1 for k in range(6)] for u in range(1, 41)})
    out = tmp_path / "runs"
    run_dir = out / "tiny" / "hgn_ce" / "seed42"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({**_full_metrics(0.2), "wall_time_s": 1.0, "best_epoch": 1}))
    task = {"variant": "temporal", "best": {"epoch": 3, "train_task_acc": 0.6, "train_task_chance": 0.5,
                                            "heldout_task_acc": 0.58, "heldout_task_chance": 0.5},
            "last": {"epoch": 4, "heldout_task_acc": 0.59}}
    old = {"runs": [
        {"dataset": "tiny", "model": "hgn_ce", "seed": 42, "dir": "gone", "student": "hgn_ce", "teachers": [],
         "alone": "hgn_ce", "ensemble": False, "metrics": _full_metrics(0.1)},
        {"dataset": "tiny", "model": "teacher_gru_temporal", "seed": 42, "dir": "gone/teacher", "student": None,
         "teachers": [], "alone": None, "ensemble": False, "wall_time_s": 9.0, "task": task,
         "metrics": _full_metrics(0.3)},
        # a report older than the identity fields: they are read from the row's spec
        {"dataset": "tiny", "model": "ssi_gru4rec_gru", "seed": 43, "dir": "gone/ssi", "metrics": _full_metrics(0.4)},
        {"dataset": "tiny", "model": "teacher_gru_persona", "seed": 43, "dir": "gone/p", "best_epoch": 7,
         "metrics": _full_metrics(0.3)}]}
    committed = tmp_path / "committed" / "report.json"
    committed.parent.mkdir()
    committed.write_text(json.dumps(old))
    argv = ["--preset", "smoke", "--datasets", "tiny", "--data-dir", str(data), "--models", "mostpop", "--seeds", "42",
            "--out", str(out), "--report-only", "--merge-report", str(committed)]  # hgn_ce: found under --out
    assert main(argv) == 0
    doc = json.loads((out / "report" / "report.json").read_text())
    by = {r["model"]: r for r in doc["runs"]}
    assert set(by) == {"hgn_ce", "teacher_gru_temporal", "ssi_gru4rec_gru", "teacher_gru_persona"}
    ssi = by["ssi_gru4rec_gru"]
    assert {k: ssi[k] for k in ("student", "loss", "imitation", "option", "alone", "ensemble", "paper_row")} == {
        "student": "gru4rec", "loss": "ce", "imitation": {}, "option": None, "alone": "gru4rec", "ensemble": False,
        "paper_row": "ssi_gru4rec"}
    assert ssi["teachers"] == ["teacher_gru_temporal/seed42", "teacher_gru_persona/seed43", "teacher_gru_global/seed44"]
    assert list(ssi)[:5] == ["dataset", "model", "seed", "dir", "student"] and ssi["metrics"] == old["runs"][2]["metrics"]
    assert by["teacher_gru_temporal"]["loss"] is None and by["hgn_ce"]["loss"] == "ce"
    assert by["hgn_ce"]["metrics"]["test"]["full"]["ndcg@10"] == 0.2 and "recorded_in" not in by["hgn_ce"]
    teacher = by["teacher_gru_temporal"]
    assert teacher["recorded_in"] == str(committed) and teacher["dir"] == "gone/teacher"
    assert teacher["task"] == task and teacher["metrics"] == old["runs"][1]["metrics"]
    teachers_md = (out / "report" / "teachers.md").read_text()
    assert "| tiny | teacher_gru_temporal | 42 | temporal |" in teachers_md
    # a teacher recorded before task accuracy existed says so in the task table
    assert "| tiny | teacher_gru_persona | 43 | persona | 7 | not recorded (the run predates task accuracy) |" in teachers_md
    # planned, not finished under --out, recorded: reported, so not warned about as missing from the report
    with capturing(caplog, "ssi.run_all", logging.WARNING):
        assert main([*argv, "--models", "mostpop", "teacher_gru_temporal"]) == 0
    assert "teacher_gru_temporal/seed42" not in caplog.text
    # a recorded run has no weights: it is reported, never exported; an unreadable report is named
    with pytest.raises(SystemExit, match="needs --report-only"):
        main([a for a in argv if a != "--report-only"])
    committed.write_text("{not json")
    with pytest.raises(SystemExit, match=f"--merge-report {committed}: not a readable report.json"):
        main(argv)


def test_paper_row_is_read_from_the_spec_whatever_the_teachers_backbone() -> None:
    """A run reproduces a row of the paper's tables by what it is (student, loss, one teacher per task,
    imitation), not by its name: the BPR HGN of the SASRec task teachers is SSI-HGN; CE students, options, plain
    teachers and ensembles are none of the paper's rows."""
    from training.catalogue import compose, paper_row

    sas = ("teacher_sas_temporal@0", "teacher_sas_persona@1", "teacher_sas_global@2")
    assert paper_row(compose("hgn", sas)) == paper_row("ssi_hgn") == paper_row("ssi_hgn_gru") == "ssi_hgn"
    assert paper_row(compose("gru4rec", sas)) == paper_row("ssi_gru4rec_gru") == "ssi_gru4rec"
    assert paper_row("ssi_hgn_no_mse") == "ssi_hgn_no_mse" and paper_row(compose("hgn", sas[2:])) == "ssi_hgn_global"
    assert paper_row("hgn") == "hgn" and paper_row("gru4rec") == "gru4rec"
    for none in (compose("hgn_ce", sas), compose("hgn", sas, "mean"), "kd_hgn_ce_gru4rec", "hgn_ce", "sasrec_ce",
                 compose("hgn", ("sasrec_ce_prefix@0", "sasrec_ce_prefix@1", "sasrec_ce_prefix@2")),
                 "ensemble_gru_teachers", "ssi_hgn_ce_gru_no_mse", "not a row"):
        assert paper_row(none) is None, none


def test_options_table_lists_composed_options_after_the_row_they_vary() -> None:
    from training.report import option_rows

    base = "hgn_ce--sasrec_ce_prefix@0+sasrec_ce_prefix@1+sasrec_ce_prefix@2"
    names = {"hgn_ce", base, f"{base}--t2", f"{base}--mean", "ssi_hgn_ce_gru_t2", "ensemble--sasrec_ce@0+sasrec_ce@1"}
    assert option_rows(names) == [base, f"{base}--mean", f"{base}--t2"]
    assert option_rows({f"{base}--fixed"}) == [base, f"{base}--fixed"]  # the base is listed even when not trained
