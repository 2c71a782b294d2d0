"""loadtest.scale on a tiny catalogue: two sizes, the JSON row keys, the markdown and the plots."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))  # the serving tests' artifact builder
from serving_factory import build_artifact, write_dataset

from loadtest.scale import ScaleSettings, main, run, synthetic_table

ROW_KEYS = {"items", "index", "params", "recall_at_10", "p50_ms", "p99_ms", "build_s", "memory_mb", "batch32_qps",
            "latency_queries", "factory", "rss_delta_mb"}


def test_scale_benchmark_on_two_small_sizes_writes_rows_markdown_and_plots(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_dataset(data)
    artifact = build_artifact(tmp_path / "serving", data, "20260101T000000Z-aaaaaa", seed=1)
    cfg = ScaleSettings(artifact=artifact, data_dir=data, sizes="2e3,5000", kinds="matmul,ivf", queries=40,
                        cell_seconds=0.2, batch_seconds=0.05, max_build_s=600, results=tmp_path / "results",
                        machine_note="test")
    res = run(cfg, log=lambda _: None, progress=False)
    saved = json.loads((tmp_path / "results" / Path(res["files"][0]).name).read_text())
    rows = saved["rows"]
    assert {r["items"] for r in rows} == {2000, 5000} and {r["index"] for r in rows} == {"matmul", "ivf"}
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert 0 <= r["recall_at_10"] <= 1 and 0 < r["p50_ms"] <= r["p99_ms"] and r["memory_mb"] > 0
    assert all(r["recall_at_10"] >= 0.99 for r in rows if r["index"] == "matmul")
    ivf = [r for r in rows if r["index"] == "ivf" and r["items"] == 5000]
    assert [r["params"]["nprobe"] for r in ivf] == sorted(r["params"]["nprobe"] for r in ivf) and len(ivf) > 3
    assert ivf[-1]["recall_at_10"] >= ivf[0]["recall_at_10"]  # more lists probed: no worse recall
    assert saved["machine_load"]["note"] == "test" and len(saved["machine_load"]["before"]) == 3
    assert saved["inputs"]["queries"] == 40 and "encoder.onnx" in saved["inputs"]["query_source"]
    md = (tmp_path / "results" / Path(res["files"][1]).name).read_text()
    assert "| 5,000 | IVF-Flat |" in md and "## Chosen per size" in md
    assert len(saved["plots"]) == 2 and all(Path(p).is_file() for p in res["files"][2:])


def test_a_build_predicted_over_budget_is_a_skipped_row_with_its_reason(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_dataset(data)
    artifact = build_artifact(tmp_path / "serving", data, "20260101T000000Z-aaaaaa", seed=1)
    cfg = ScaleSettings(artifact=artifact, data_dir=data, sizes="2000,20000", kinds="hnsw", queries=20,
                        cell_seconds=0.1, batch_seconds=0.05, max_build_s=1e-6, results=tmp_path / "results")
    rows = run(cfg, log=lambda _: None, progress=False)["rows"]
    skipped = [r for r in rows if r.get("skipped")]
    assert [r["items"] for r in skipped] == [20000] and "predicted build" in skipped[0]["reason"]


def test_synthetic_rows_follow_the_real_ones() -> None:
    rng = np.random.default_rng(0)
    real = (rng.standard_normal((400, 5)) @ np.diag([1, 2, 3, 0.5, 0.1]) + 3).astype(np.float32)
    table = synthetic_table(real, 50_000, seed=1)
    assert table.shape == (50_000, 5) and table.dtype == np.float32
    np.testing.assert_array_equal(table[:400], real)
    np.testing.assert_allclose(table[400:].mean(axis=0), real.mean(axis=0), atol=0.05)
    np.testing.assert_allclose(np.cov(table[400:], rowvar=False), np.cov(real, rowvar=False), atol=0.1)


def test_help_and_bad_kinds(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--sizes", "--kinds", "--max-build-s", "--threads", "--queries"):
        assert flag in out
    assert main(["--kinds", "lsh"]) == 2


def test_gpu_kinds_without_a_gpu_are_skipped_rows_with_the_reason(tmp_path: Path) -> None:
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present: the gpu-* kinds run (loadtest/gpu_check.sh)")
    data = tmp_path / "data"
    data.mkdir()
    write_dataset(data)
    artifact = build_artifact(tmp_path / "serving", data, "20260101T000000Z-aaaaaa", seed=1)
    cfg = ScaleSettings(artifact=artifact, data_dir=data, sizes="2000", kinds="gpu-flat,gpu-ivf", queries=20,
                        cell_seconds=0.1, batch_seconds=0.05, results=tmp_path / "results")
    rows = run(cfg, log=lambda _: None, progress=False)["rows"]
    assert [r["index"] for r in rows] == ["gpu-flat", "gpu-ivf"]
    assert all(r["skipped"] and "GPU build failed" in r["reason"] for r in rows)


def test_gpu_check_script_calls_the_scale_benchmark_with_existing_flags() -> None:
    import re

    script = (Path(__file__).resolve().parents[2] / "loadtest" / "gpu_check.sh").read_text()
    call = script[script.rindex("-m loadtest.scale"):]  # the call (the header comment names it first).split("|| failed")[0]
    flags = set(re.findall(r"--[a-z][a-z-]+", call))
    parser_flags = {a for action in __import__("loadtest.scale", fromlist=["x"]).build_parser()._actions
                    for a in action.option_strings}
    assert flags and flags <= parser_flags, flags - parser_flags
    kinds = re.search(r"--kinds (\S+)", call).group(1).split(",")
    assert {"gpu-flat", "gpu-ivf", "gpu-ivfpq"} <= set(kinds)
    assert ScaleSettings(kinds=",".join(kinds)).kind_list() == kinds
