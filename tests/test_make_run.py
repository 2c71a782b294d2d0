"""README command 1: `make run`'s training path (`make train`) on a small run, the served choice following
validation. The Makefile's own RUN_MODELS list is used; only the sizes shrink (smoke preset, one epoch)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_train_serves_the_best_student_on_validation(tmp_path, shared_data_dir):
    runs, serving = tmp_path / "runs", tmp_path / "serving"
    env = {**os.environ, "SSI_DATA_DIR": str(shared_data_dir), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["make", "--no-print-directory", "train", "PRESET=smoke", "MAX_EPOCHS=1", f"RUN_OUT={runs}",
                        f"EXPORT_OUT={serving}"], check=False, cwd=ROOT, env=env, text=True, capture_output=True,
                       timeout=880)
    assert p.returncode == 0, p.stderr[-3000:]
    # the comparison table of the invocation is printed before serving
    assert "lastfm: the runs of this invocation" in p.stdout
    for row in ("mostpop", "hgn", "hgn_ce", "teacher_gru_temporal", "ssi_hgn_ce_gru_temporal"):
        assert f"| lastfm | {row} |" in p.stdout, row
    doc = json.loads((runs / "report" / "report.json").read_text())
    students = [r for r in doc["runs"] if r["model"] in {"hgn", "hgn_ce", "ssi_hgn_ce_gru_temporal"}]
    best = max(students, key=lambda r: r["metrics"]["valid"]["sampled"]["ndcg@10"])
    latest = (serving / "latest").read_text().strip()
    manifest = json.loads((serving / latest / "manifest.json").read_text())
    assert manifest["model"]["name"] == best["model"]
    assert f"serving lastfm/{best['model']}/seed42" in p.stderr
    assert ("imitation pays" in p.stderr) == (best["model"] == "ssi_hgn_ce_gru_temporal")
    request = json.loads((serving / "example_request.json").read_text())
    assert request["k"] == 5 and 0 < len(request["history"]) <= 10 and all(isinstance(i, int) for i in request["history"])
