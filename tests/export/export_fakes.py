"""Small stand-in models with the servable contract, and a helper that saves one as a finished run.

They live in an importable module (not in a test file) because the exporter sends the model to a
spawned subprocess by pickle, which imports the class by module name.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn

from protocol import SequenceDataset, load_or_create_negatives


@dataclass
class FakeConfig:
    num_items: int
    num_users: int = 0
    max_len: int = 10
    dim: int = 8


class FakeGRU(nn.Module):
    """GRU4Rec-like: dynamic history length, no user; scores = h . E_j (no bias)."""

    model_name, config_class, fixed_length, uses_user = "fake_gru", FakeConfig, False, False

    def __init__(self, config: FakeConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.num_items + 1, config.dim, padding_idx=0)
        self.gru = nn.GRU(config.dim, 2 * config.dim, batch_first=True)
        self.out = nn.Linear(2 * config.dim, config.dim)

    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        hidden, _ = self.gru(self.emb(history))
        return self.out(hidden[:, -1])

    def item_vectors(self) -> torch.Tensor:
        return self.emb.weight[1:]


class FakeHGN(nn.Module):
    """HGN-like: exactly ``max_len`` columns, a user embedding (0 = anonymous), bias folded in:
    [q, 1] . [W | b]."""

    model_name, config_class, fixed_length, uses_user = "fake_hgn", FakeConfig, True, True

    def __init__(self, config: FakeConfig):
        super().__init__()
        self.config = config
        d = config.dim
        self.items_in = nn.Embedding(config.num_items + 1, d, padding_idx=0)
        self.users = nn.Embedding(config.num_users + 1, d)
        self.gate_item, self.gate_user = nn.Linear(d, d), nn.Linear(d, d, bias=False)
        self.w2 = nn.Parameter(torch.randn(config.num_items, d) * 0.3)
        self.b2 = nn.Parameter(torch.randn(config.num_items) * 0.1)

    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        assert history.shape[1] == self.config.max_len, "fixed-length encoder"
        if user is None:
            user = torch.zeros(history.shape[0], dtype=torch.long, device=history.device)
        e, u = self.items_in(history), self.users(user)
        mask = (history > 0).unsqueeze(-1).float()
        gated = e * torch.sigmoid(self.gate_item(e) + self.gate_user(u).unsqueeze(1)) * mask
        pooled = gated.sum(1) / mask.sum(1).clamp(min=1.0)
        q = u + pooled + (e * mask).sum(1)
        return torch.cat([q, torch.ones_like(q[:, :1])], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        return torch.cat([self.w2, self.b2.unsqueeze(-1)], dim=-1)


class FakeTransformer(nn.Module):
    """SASRec-like: positions + a transformer layer. The TorchScript exporter bakes its length in."""

    model_name, config_class, fixed_length, uses_user = "fake_transformer", FakeConfig, False, False

    def __init__(self, config: FakeConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.num_items + 1, config.dim, padding_idx=0)
        self.pos = nn.Embedding(config.max_len, config.dim)
        self.layer = nn.TransformerEncoderLayer(config.dim, 2, 2 * config.dim, dropout=0.0, batch_first=True)

    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(history.shape[1], device=history.device) + (
            self.config.max_len - history.shape[1]
        )
        x = self.emb(history) + self.pos(positions).unsqueeze(0)
        return self.layer(x)[:, -1]

    def item_vectors(self) -> torch.Tensor:
        return self.emb.weight[1:]


def make_model(cls: type[nn.Module], ds: SequenceDataset, max_len: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls(FakeConfig(num_items=ds.num_items, num_users=ds.num_users, max_len=max_len)).eval()


def save_fake_run(model: nn.Module, ds: SequenceDataset, run_dir: Path) -> Path:
    """A finished run as ``training/trainer.py`` leaves it (the metrics are placeholders)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    neg = load_or_create_negatives(ds)
    cfg = dataclasses.asdict(model.config)
    metric = {"recall@10": 0.1, "ndcg@10": 0.05}
    files = {
        "run.json": {
            "model": model.model_name,
            "model_config": cfg,
            "train_config": {"max_len": 50},
            "dataset": ds.name,
            "data_sha256": ds.sha256,
            "negatives_sha256": neg.sha256,
        },
        "model_config.json": {"model": model.model_name, "config": cfg},
        "metrics.json": {
            "valid": {"sampled": metric, "full": metric},
            "test": {"sampled": metric, "full": metric},
            "data_sha256": ds.sha256,
            "negatives_sha256": neg.sha256,
        },
    }
    for name, obj in files.items():
        (run_dir / name).write_text(json.dumps(obj))
    save_model(model, str(run_dir / "model.safetensors"))
    return run_dir


class FakeBroken(FakeGRU):
    """An encoder that cannot be traced: every export attempt fails."""

    model_name = "fake_broken"

    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        raise RuntimeError("this encoder cannot be exported")
