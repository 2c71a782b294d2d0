"""``python -m training.sweep``: one row per finished run, its changes against the first, its metrics."""
from __future__ import annotations

import json
from pathlib import Path

from training.sweep import changes, main, read_run


def _run(path: Path, weight: float, seed: int, valid: float, finished: bool = True) -> Path:
    path.mkdir(parents=True)
    info = {"model": "gru4rec", "dataset": "beauty", "preset": "cpu", "teacher_variant": "temporal",
            "model_config": {"dim": 64}, "train_config": {"seed": seed, "lr": 1e-3, "progress": True},
            "consistency_config": {"weight": weight}}
    (path / "run.json").write_text(json.dumps(info))
    if finished:
        proto = {"sampled": {"ndcg@10": valid}, "full": {"ndcg@10": valid / 10}}
        (path / "metrics.json").write_text(json.dumps({"valid": proto, "test": proto, "best_epoch": 7,
                                                       "epochs_run": 12, "wall_time_s": 600.0}))
    return path


def test_rows_name_what_each_run_changed_and_its_metrics(tmp_path, capsys) -> None:
    ref = _run(tmp_path / "w1", 1.0, 42, 0.3573)
    probe = _run(tmp_path / "w01", 0.1, 42, 0.3650)
    other_seed = _run(tmp_path / "w1s43", 1.0, 43, 0.3560)
    assert changes(read_run(ref), read_run(ref)) == "reference"
    assert changes(read_run(probe), read_run(ref)) == "consistency.weight=0.1"
    assert changes(read_run(other_seed), read_run(ref)) == "same settings"  # the seed is its own column
    plain = _run(tmp_path / "plain", 1.0, 42, 0.3654)
    info = json.loads((plain / "run.json").read_text())
    del info["consistency_config"], info["teacher_variant"]
    (plain / "run.json").write_text(json.dumps(info | {"loss": "ce", "model_config": {"dim": 128}}))
    assert changes(read_run(plain), read_run(ref)) == "-consistency, +loss=ce, model.dim=128, -teacher_variant"
    md_path, csv_path = tmp_path / "sweep.md", tmp_path / "sweep.csv"
    assert main([str(ref), str(probe), str(other_seed), "--md", str(md_path), "--csv", str(csv_path)]) == 0
    lines = md_path.read_text().splitlines()
    assert len(lines) == 5 and lines == capsys.readouterr().out.splitlines()
    assert "| consistency.weight=0.1 | 0.3650 | 0.0365 | 0.3650 | 0.0365 | 7 | 12 | 10.0 |" in lines[3]
    assert csv_path.read_text().splitlines()[0].startswith("run,seed,changes")


def test_unfinished_and_missing_folders_are_named_and_left_out(tmp_path, capsys) -> None:
    done = _run(tmp_path / "done", 1.0, 42, 0.35)
    running = _run(tmp_path / "running", 0.3, 42, 0.0, finished=False)
    assert main([str(running), str(tmp_path / "nope"), str(done)]) == 0
    out, err = capsys.readouterr()
    assert f"{running / 'metrics.json'}: missing (is the run finished?)" in err
    assert f"{tmp_path / 'nope'}: not a folder" in err
    assert out.count("\n") == 3 and "reference" in out  # header, rule, the one finished run


def test_no_finished_run_is_an_error_not_a_traceback(tmp_path, capsys) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text("{not json")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad / 'run.json'}: unreadable" in err and "no finished run" in err
