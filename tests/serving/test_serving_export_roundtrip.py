"""An artifact written by the real exporter (``export.artifact.build_artifact``) is served, and /eval
through ONNX Runtime + FAISS reproduces the training-time metrics recorded in the run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from protocol import evaluate, load_dataset, load_or_create_negatives

export_artifact = pytest.importorskip("export.artifact", reason="export/ is not available")
torch = pytest.importorskip("torch")
from safetensors.torch import save_model
from serving_export_model import GruModel, WindowConfig, WindowUserModel
from serving_factory import DATASET

EVAL_LEN = 6


def _torch_metrics(model, ds, negs) -> dict:
    def scorer(hist, rows, cand):
        with torch.no_grad():
            users = torch.from_numpy(np.asarray(rows) + 1) if model.uses_user else None
            q = model.encode(torch.from_numpy(hist), users)
            iv = model.item_vectors()
            if cand is None:
                return torch.cat([torch.full((len(hist), 1), -float("inf")), q @ iv.T], dim=1).numpy()
            return torch.einsum("bd,bcd->bc", q, iv[torch.from_numpy(cand) - 1]).numpy()

    return {split: {p: evaluate(scorer, ds, split, p, max_len=EVAL_LEN, negatives=negs) for p in ("sampled", "full")}
            for split in ("valid", "test")}


def _finished_run(model, ds, negs, run_dir: Path, name: str) -> Path:
    """A run folder as training leaves it, with metrics measured on the torch model."""
    run_dir.mkdir(parents=True)
    metrics = {**_torch_metrics(model, ds, negs), "data_sha256": ds.sha256, "negatives_sha256": negs.sha256}
    run = {"model": name, "model_config": vars(model.config), "train_config": {"max_len": EVAL_LEN},
           "dataset": ds.name, "data_sha256": ds.sha256, "negatives_sha256": negs.sha256, "seed": 0}
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    save_model(model, str(run_dir / "model.safetensors"))
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("cls", [WindowUserModel, GruModel], ids=["window-user", "gru"])
def test_serves_an_exported_artifact_with_equal_metrics(cls, tmp_path: Path, data_dir: Path, make_client) -> None:
    ds = load_dataset(DATASET, data_dir)
    negs = load_or_create_negatives(ds)
    torch.manual_seed(0)
    model = cls(WindowConfig(num_items=ds.num_items, num_users=ds.num_users, max_len=EVAL_LEN)).eval()
    run_dir = _finished_run(model, ds, negs, tmp_path / "run", cls.__name__.lower())
    root = tmp_path / "serving"
    folder = export_artifact.build_artifact(run_dir, root, model=model, data=data_dir, exporters=("torchscript",))
    assert (root / "latest").read_text().strip() == f"{folder.parent.name}/{folder.name}"

    client: TestClient = make_client(root)
    r = client.post("/recommend", json={"history": [1, 2, 3], "k": 5, "user_id": 2})
    assert r.status_code == 200 and r.json()["model"] == folder.name and len(r.json()["items"]) == 5
    want = json.loads((run_dir / "metrics.json").read_text())
    for split in ("test", "valid"):
        for protocol in ("sampled", "full"):
            body = client.post("/eval", json={"dataset": DATASET, "split": split, "protocol": protocol}).json()
            assert body["matches"] is True, body
            for key, value in want[split][protocol].items():
                assert abs(body["metrics"][key] - value) <= 1e-4, (split, protocol, key)
