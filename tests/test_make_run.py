"""README command 1: `make run`'s training path (`make train` -> training/quickstart.py) on a tiny dataset: the
teacher, the student alone and the distilled student are trained, the proof table and stage times printed, and
the exported student is the one with the best validation full-ranking NDCG@10 (the log says why)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tiny_dataset(folder: Path) -> None:
    """150 users walking a 240-item ring (a learnable order), 6-14 items each, in the S3-Rec format."""
    rng = np.random.default_rng(7)
    lines = []
    for u in range(1, 151):
        start, n = int(rng.integers(0, 240)), int(rng.integers(6, 15))
        lines.append(f"{u} " + " ".join(str((start + k) % 240 + 1) for k in range(n)))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Tiny.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_train_serves_the_best_student_on_validation_full_ranking(tmp_path):
    data, runs, serving = tmp_path / "data", tmp_path / "runs", tmp_path / "serving"
    _tiny_dataset(data)
    env = {**os.environ, "SSI_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["make", "--no-print-directory", "train", "PRESET=smoke", "MAX_EPOCHS=2", "DATASET=tiny",
                        f"RUN_OUT={runs}", f"EXPORT_OUT={serving}"], check=False, cwd=ROOT, env=env, text=True,
                       capture_output=True, timeout=580)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    # the proof table: popularity, the teacher, the student alone, the distilled student, with the encode cost
    for role, row in (("popularity", "mostpop"), ("teacher", "teacher_gru_temporal"), ("student alone", "hgn_ce"),
                      ("distilled student", "ssi_hgn_ce_gru_temporal")):
        assert f"| {role} | {row} |" in out, (role, out[-3000:])
    assert "encode / request (× student)" in out and "| distilled student | ssi_hgn_ce_gru_temporal |" in out
    for stage in ("set-up (venv, packages)", "train (two processes side by side)", "report, choice on validation",
                  "encode cost", "| total |"):
        assert stage in out, stage
    # the choice follows validation full NDCG@10 among the students of the run
    doc = json.loads((runs / "report" / "report.json").read_text())
    students = [r for r in doc["runs"] if r["student"] is not None]
    assert {r["model"] for r in students} == {"hgn_ce", "ssi_hgn_ce_gru_temporal"}
    best = max(students, key=lambda r: (r["metrics"]["valid"]["full"]["ndcg@10"], r["model"]))
    latest = (serving / "latest").read_text().strip()
    manifest = json.loads((serving / latest / "manifest.json").read_text())
    assert manifest["model"]["name"] == best["model"]
    assert doc["served"] == {"tiny": f"{best['model']}/seed42"} and f"served: {best['model']}/seed42" in out
    assert f"serving tiny/{best['model']}/seed42" in out
    assert ("imitation pays" in out) == (best["model"] == "ssi_hgn_ce_gru_temporal")
    # the teacher got the first run's recipe, recorded in its run.json
    teacher = json.loads((runs / "tiny" / "teacher_gru_temporal" / "seed42" / "run.json").read_text())
    assert teacher["train_config"]["lr"] == 0.01 and teacher["train_config"]["epochs"] == 6
    request = json.loads((serving / "example_request.json").read_text())
    assert request["k"] == 5 and 0 < len(request["history"]) <= 10 and all(isinstance(i, int) for i in request["history"])


def test_the_first_run_derives_its_named_subset_when_missing(tmp_path, monkeypatch):
    """`python -m training.quickstart` on a named subset (the default's kind) derives it from its source first."""
    from protocol.data import SUBSETS, SubsetSpec
    from training.quickstart import QuickstartConfig, prepare_data

    _tiny_dataset(tmp_path)
    monkeypatch.setitem(SUBSETS, "tiny-top200", SubsetSpec(source="tiny", top_items=200, min_user=5))
    monkeypatch.setattr("training.data.DATASET_FILES", {"tiny": "Tiny.txt"})
    ds = prepare_data(QuickstartConfig(dataset="tiny-top200", data_dir=tmp_path))
    assert ds.name == "tiny-top200" and ds.num_items == 200 and (tmp_path / "tiny-top200_id_map.json").is_file()
    assert all(len(s) >= 5 for s in ds.sequences)
