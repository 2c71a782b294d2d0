"""training.pack_runs: a run folder packed for a size-capped trip back, in priority order, and unpacked whole."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from training.pack_runs import main, pack


def _run(root: Path, key: str, full: float | None, weights_mb: float, checkpoint_mb: float = 0.0) -> Path:
    d = root / key
    d.mkdir(parents=True)
    (d / "run.json").write_text("{}")
    (d / "model_config.json").write_text("{}")
    if full is not None:
        (d / "metrics.json").write_text(json.dumps({"valid": {"full": {"ndcg@10": full}}}))
        (d / "model.safetensors").write_bytes(b"w" * int(weights_mb * 2**20))
    if checkpoint_mb:
        (d / "checkpoint.pt").write_bytes(b"c" * int(checkpoint_mb * 2**20))
    return d


def _names(out: Path) -> list[str]:
    names = []
    for path in sorted(out.glob("weights-*.tar")):
        with tarfile.open(path) as t:
            names += t.getnames()
    return names


def test_interrupted_then_teachers_then_students_by_validation_within_the_caps(tmp_path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    _run(runs, "d/teacher_sas_global/seed44", None, 0, checkpoint_mb=1)  # interrupted
    _run(runs, "d/sasrec_ce_prefix/seed42", 0.05, 1)
    _run(runs, "d/hgn_ce--sasrec_ce_prefix@0/seed42", 0.04, 1)
    _run(runs, "d/hgn_ce--sasrec_ce_prefix@0/seed43", 0.045, 1)
    _run(runs, "d/hgn_ce/seed42", 0.03, 1)
    (runs / "logs").mkdir()
    (runs / "logs" / "d__hgn_ce__seed42.log").write_text("epoch 1")
    lines = pack(runs, out, max_file_mb=2.5, max_total_mb=4.5, max_files=7)
    assert _names(out) == ["d/teacher_sas_global/seed44/checkpoint.pt", "d/teacher_sas_global/seed44/run.json",
                           "d/teacher_sas_global/seed44/model_config.json",
                           "d/sasrec_ce_prefix/seed42/model.safetensors",
                           "d/hgn_ce--sasrec_ce_prefix@0/seed43/model.safetensors",
                           "d/hgn_ce--sasrec_ce_prefix@0/seed42/model.safetensors"]
    assert all(t.stat().st_size < 2.6 * 2**20 for t in out.glob("weights-*.tar"))
    assert "left behind: d/hgn_ce/seed42 (1.0 MB)" in lines
    with tarfile.open(out / "runs-meta.tar.gz") as t:
        meta = t.getnames()
    assert "d/hgn_ce/seed42/metrics.json" in meta and "logs/d__hgn_ce__seed42.log" in meta
    assert not any(n.endswith((".safetensors", ".pt")) for n in meta)
    assert not any("teacher_sas_global" in n for n in meta)  # unfinished: its files travel with the weights


def test_the_archive_count_is_capped_and_a_missing_folder_is_an_error(tmp_path, capsys) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    for k in range(3):
        _run(runs, f"d/hgn_ce/seed{k}", 0.01 * k, 1)
    assert main([str(runs), str(out), "--max-file-mb", "1.5", "--max-files", "2"]) == 0
    assert len(list(out.glob("weights-*.tar"))) == 2
    assert "left behind: d/hgn_ce/seed0" in capsys.readouterr().out
    import pytest

    with pytest.raises(SystemExit, match="nowhere: no such folder"):
        main([str(tmp_path / "nowhere"), str(out)])
