"""Builders for the serving tests: a tiny synthetic dataset and real artifacts from a tiny torch model.

The model (item-embedding mean + last item, a linear layer, an optional user embedding, bias folded
into the item table) is exported with ``torch.onnx.export(..., dynamo=False)`` under the contract's
input/output names. The manifest's metrics are computed with ``protocol.evaluate`` on the torch
model itself, as training does, so ``/eval`` through ONNX Runtime + FAISS is a real check.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from protocol import evaluate, load_dataset, load_or_create_negatives, train_sequences
from protocol.artifact import (
    ENCODER_FILE,
    ID_MAP_FILE,
    ITEMS_FILE,
    LATEST,
    MANIFEST,
    POPULARITY_FILE,
    DatasetSpec,
    EncoderSpec,
    Manifest,
    file_checksums,
    input_names,
    latest_text,
)
from serving.config import Settings

DATASET = "tiny"
NUM_ITEMS = 150
NUM_USERS = 60
DIM = 12
MAX_LEN = 8
V1 = "20260101T000000Z-aaaaaa"
V2 = "20260102T000000Z-bbbbbb"


def write_dataset(folder: Path, name: str = DATASET, users: int = NUM_USERS, items: int = NUM_ITEMS,
                  seed: int = 0) -> Path:
    """Users with 5..30 items that drift through the catalogue (so order carries some signal)."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, users + 1):
        n = int(rng.integers(5, 31))
        start = int(rng.integers(1, items + 1))
        seq = (start + np.cumsum(rng.integers(1, 4, size=n)) - 1) % items + 1
        lines.append(f"{u} " + " ".join(map(str, seq.tolist())))
    lines.append(f"{users + 1} 1 2 3 4 {items}")  # make sure the largest id occurs
    path = folder / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tiny_model(num_items: int, num_users: int, dim: int, uses_user: bool, seed: int):
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.item = nn.Embedding(num_items + 1, dim, padding_idx=0)
            self.user = nn.Embedding(num_users + 2, dim) if uses_user else None
            self.proj = nn.Linear(dim, dim)
            self.out = nn.Parameter(torch.randn(num_items, dim))
            self.bias = nn.Parameter(0.1 * torch.randn(num_items))

        def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
            mask = (history > 0).float().unsqueeze(-1)
            mean = (self.item(history) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            h = torch.tanh(self.proj(mean + self.item(history[:, -1])))
            if self.user is not None and user is not None:
                h = h + 0.3 * self.user(user)
            return torch.cat([h, torch.ones_like(h[:, :1])], dim=1)

        def item_vectors(self) -> torch.Tensor:
            return torch.cat([self.out, self.bias[:, None]], dim=1)

        def forward(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
            return self.encode(history, user)

    torch.manual_seed(seed)
    return Tiny().eval()


def _torch_scorer(model, uses_user: bool):
    import torch

    def scorer(hist: np.ndarray, rows: np.ndarray, cand: np.ndarray | None) -> np.ndarray:
        with torch.no_grad():
            users = torch.from_numpy(np.asarray(rows, dtype=np.int64) + 1) if uses_user else None
            q = model.encode(torch.from_numpy(hist), users)
            iv = model.item_vectors()
            if cand is None:
                s = q @ iv.T
                return torch.cat([torch.full((len(hist), 1), -float("inf")), s], dim=1).numpy()
            return torch.einsum("bd,bcd->bc", q, iv[torch.from_numpy(cand) - 1]).numpy()

    return scorer


def build_artifact(root: Path, data_dir: Path, version: str, seed: int = 0, uses_user: bool = True,
                   id_map: list[Any] | None = None, name: str = "tiny", write_latest: bool = True) -> Path:
    """Export a tiny model as a complete artifact under ``root/name/version`` (manifest with metrics)."""
    import torch

    ds = load_dataset(DATASET, data_dir)
    negs = load_or_create_negatives(ds)
    model = _tiny_model(ds.num_items, ds.num_users, DIM, uses_user, seed)
    out = root / name / version
    out.mkdir(parents=True)
    hist = torch.zeros((2, MAX_LEN), dtype=torch.int64)
    hist[:, -1] = 1
    args = (hist, torch.ones(2, dtype=torch.int64)) if uses_user else (hist,)
    names = input_names(uses_user)
    axes = {"history": {0: "batch", 1: "length"}, "query": {0: "batch"}}
    if uses_user:
        axes["user"] = {0: "batch"}
    encoder = EncoderSpec(max_len=MAX_LEN, fixed_length=False, uses_user=uses_user, dim=DIM + 1, opset=17)
    torch.onnx.export(model, args, str(out / ENCODER_FILE), input_names=names, output_names=[encoder.output_name],
                      dynamic_axes=axes, opset_version=encoder.opset, dynamo=False)
    items = model.item_vectors().detach().numpy().astype(np.float32)
    np.save(out / ITEMS_FILE, items)
    counts = np.bincount(np.concatenate(train_sequences(ds)), minlength=ds.num_items + 1)[1:]
    np.save(out / POPULARITY_FILE, (np.argsort(-counts, kind="stable") + 1).astype(np.int64))
    files = [ENCODER_FILE, ITEMS_FILE, POPULARITY_FILE]
    if id_map is not None:
        (out / ID_MAP_FILE).write_text(json.dumps({"item_ids": id_map}), encoding="utf-8")
        files.append(ID_MAP_FILE)
    scorer = _torch_scorer(model, uses_user)
    metrics = {split: {p: evaluate(scorer, ds, split, p, max_len=MAX_LEN, negatives=negs)
                       for p in ("sampled", "full")} for split in ("test", "valid")}
    Manifest(
        name=name, version=version, config={"dim": DIM, "seed": seed}, encoder=encoder,
        items_count=ds.num_items, items_dim=DIM + 1,
        dataset=DatasetSpec(name=ds.name, sha256=ds.sha256, negatives_sha256=negs.sha256,
                            num_users=ds.num_users, num_items=ds.num_items),
        metrics=metrics, created_at=f"{version[:4]}-{version[4:6]}-{version[6:8]}T00:00:00Z",
        packages={"torch": torch.__version__}, files=file_checksums(out, files), has_id_map=id_map is not None,
    ).write(out, indent=1)
    if write_latest:
        (root / LATEST).write_text(latest_text(name, version), encoding="utf-8")
    return out


def rewrite_manifest(folder: Path, edit: Callable[[dict], None], refresh_checksums: bool = False) -> None:
    """Edit an artifact's manifest in place (optionally recomputing the file checksums)."""
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    if refresh_checksums:
        manifest["files"] = file_checksums(folder, manifest["files"])
    path.write_text(json.dumps(manifest), encoding="utf-8")


def make_settings(root: Path, data_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {"artifact_root": root, "artifact_path": None, "data_dir": data_dir, "device": "cpu",
                            "max_batch_size": 8, "max_queue_delay_ms": 1.0, "max_queue_size": 256, "api_key": None,
                            "max_k": 100, "max_history_len": 10_000, "log_level": "warning"}
    base.update(overrides)
    return Settings(**base)
