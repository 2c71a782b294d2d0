"""``python -m export.latency``: two tiny runs timed side by side, and the one-line error for a missing run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from export_fakes import save_fake_run

from export.latency import MEASURES, main
from models import MODELS

ROOT = Path(__file__).resolve().parents[2]


def _tiny_run(name: str, ds, run_dir: Path) -> Path:
    """An untrained registry model of the smallest preset, saved as a finished run (loadable by the registry)."""
    torch.manual_seed(0)
    cls = MODELS[name]
    sizes = {"num_items": ds.num_items}
    if "num_users" in {f.name for f in dataclasses.fields(cls.config_class)}:
        sizes["num_users"] = ds.num_users
    return save_fake_run(cls(cls.config_class.preset("smoke", **sizes)).eval(), ds, run_dir)


@pytest.fixture(scope="module")
def tiny_runs(export_ds, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("latency-runs")
    return [_tiny_run(name, export_ds, root / name) for name in ("hgn", "gru4rec")]


def test_latency_report_has_both_rows(tiny_runs, export_data_dir, tmp_path, capsys):
    out, md = tmp_path / "lat.json", tmp_path / "lat.md"
    argv = [*map(str, tiny_runs), "--out", str(out), "--md", str(md), "--data", str(export_data_dir),
            "--rounds", "2", "--repeats", "3", "--exporter", "torchscript", "--quiet"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["label"] for r in rows] == ["hgn", "gru4rec"] and report["reference"] == "hgn"
    assert [r["model"] for r in rows] == ["hgn", "gru4rec"]
    assert report["settings"]["threads"] == 1 and report["settings"]["batch_sizes"] == [1, 32]
    hgn, gru = rows
    assert (hgn["fixed_length"], hgn["uses_user"], gru["fixed_length"], gru["uses_user"]) == (True, True, False, False)
    assert gru["max_len"] == 50  # the run's train_config.max_len, as the exporter serves it
    for r in rows:
        for m in MEASURES:
            assert r[f"{m}_ms"] > 0 and r[f"{m}_p90_ms"] > 0 and len(r[f"{m}_rounds_ms"]) == 2
            assert r[f"{m}_ratio"] > 0
        assert r["params"] > 0 and r["onnx_bytes"] > 0 and r["items_bytes"] > 0
        assert r["artifact_bytes"] == r["onnx_bytes"] + r["items_bytes"]
        assert r["items_count"] == 300 and r["items_bytes"] > 300 * r["dim"] * 4  # float32 table + .npy header
    assert all(hgn[f"{m}_ratio"] == 1.0 for m in MEASURES)
    assert hgn["params"] == sum(p.numel() for p in MODELS["hgn"](
        MODELS["hgn"].config_class(**json.loads((tiny_runs[0] / "model_config.json").read_text())["config"])
    ).parameters())
    table = md.read_text()
    assert "| hgn (hgn) |" in table and "| gru4rec (gru4rec) |" in table and "1.00×" in table
    assert table in capsys.readouterr().out


def test_missing_run_is_one_line_exit_2(tiny_runs, tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main([str(tiny_runs[0]), str(missing), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and err.startswith("error: ")
    assert not (tmp_path / "x.json").exists()


def test_cli_missing_run_and_help(tmp_path):
    missing = tmp_path / "absent"
    proc = subprocess.run([sys.executable, "-m", "export.latency", str(missing), "--out", str(tmp_path / "x.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: run folder does not exist"]
    assert "Traceback" not in proc.stderr
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_labels_name_the_dataset_only_where_a_row_repeats(tmp_path):
    from export.latency import run_labels

    dirs = [tmp_path / "beauty" / "hgn_ce" / "seed42", tmp_path / "toys" / "hgn_ce" / "seed42",
            tmp_path / "toys" / "gru4rec" / "seed42", tmp_path / "probe", tmp_path / "other" / "probe"]
    assert run_labels(dirs) == ["beauty/hgn_ce/seed42", "toys/hgn_ce/seed42", "gru4rec/seed42", "probe", "probe#2"]
