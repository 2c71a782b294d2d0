"""A SASRec student (the ``sasrec_ce`` recipe, ``training.students``) exports to ONNX + index and is served:
causal self-attention with a padding mask over a variable history length, so the graph keeps symbolic batch and
length axes (the TorchScript trace bakes the length in, the exporter falls back to dynamo), ONNX Runtime matches
torch on padded rows and on histories longer than ``max_len``, and ``/eval`` through the served path reproduces
the run's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient

from export.__main__ import main as export_main
from export.verify import verify_artifact
from serving.app import create_app
from serving.config import Settings


@pytest.mark.slow
def test_a_sasrec_student_artifact_verifies_and_serves_its_metrics(export_ds, export_data_dir, tmp_path: Path) -> None:
    """SASRec-CE distilled from a sasrec_ce run, tagged with its composed row name as run_all tags it: the artifact
    folder and ``latest`` carry that name ("@", "+"), and the server follows ``latest`` to it."""
    from training.run_all import tag_run
    from training.students import train_student

    name, teacher, run = "sasrec_ce--sasrec_ce@0", tmp_path / "sasrec_ce", tmp_path / "student"
    train_student("sasrec", export_ds, "smoke", teacher, progress=False, epochs=1)
    train_student("sasrec", export_ds, "smoke", run, teacher_dirs={"sasrec_ce_s0": teacher}, progress=False, epochs=1)
    tag_run(run, name, "smoke")
    root = tmp_path / "serving"
    assert export_main([str(run), "--out", str(root), "--data", str(export_data_dir)]) == 0
    art = root / (root / "latest").read_text().strip()
    report = verify_artifact(art, data=export_data_dir)
    assert report.ok, "\n".join(report.lines())
    assert report.figures["parity_max_abs_diff"] < 1e-4 and report.figures["topk_differ"] == 0

    graph = onnx.load(str(art / "encoder.onnx")).graph
    assert [i.name for i in graph.input] == ["history"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert all(isinstance(d, str) and d for d in dims), dims  # symbolic batch and length
    manifest = json.loads((art / "manifest.json").read_text())
    info = json.loads((run / "run.json").read_text())
    assert info["teacher_models"] == {"sasrec_ce_s0": "sasrec"} and art.parent.name == name
    assert manifest["model"]["name"] == name and manifest["encoder"]["max_len"] == info["train_config"]["max_len"]
    assert manifest["encoder"]["fixed_length"] is False and manifest["encoder"]["uses_user"] is False

    settings = Settings(artifact_root=root, artifact_path=None, data_dir=export_data_dir, device="cpu",
                        max_batch_size=8, max_queue_delay_ms=1.0, api_key=None, log_level="warning")
    want = json.loads((run / "metrics.json").read_text())
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        r = client.post("/recommend", json={"history": [1, 2, 3, 4, 5], "k": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5 and r.json()["model"] == art.name
        assert client.get("/model").json()["model"]["name"] == name
        for protocol in ("full", "sampled"):
            body = client.post("/eval", json={"dataset": export_ds.name, "split": "test", "protocol": protocol}).json()
            assert body["matches"] is True, body
            assert body["metrics"]["ndcg@10"] == pytest.approx(want["test"][protocol]["ndcg@10"], abs=1e-4)
