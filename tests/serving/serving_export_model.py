"""Module-level stand-in models for the export round trip (the exporter pickles the model into a child
process, which imports the class by module name). They follow the servable contract of docs/CONTRACTS.md."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class WindowConfig:
    num_items: int
    num_users: int
    max_len: int = 6
    dim: int = 8


class WindowUserModel(nn.Module):
    """HGN-like: exactly ``max_len`` columns, a user embedding (0 = anonymous), bias folded in."""

    config_class, fixed_length, uses_user = WindowConfig, True, True

    def __init__(self, config: WindowConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.items_in = nn.Embedding(config.num_items + 1, d, padding_idx=0)
        self.users = nn.Embedding(config.num_users + 1, d)
        self.position = nn.Parameter(torch.randn(config.max_len, 1) * 0.5)
        self.w = nn.Parameter(torch.randn(config.num_items, d) * 0.5)
        self.b = nn.Parameter(torch.randn(config.num_items) * 0.1)

    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        if user is None:
            user = torch.zeros(history.shape[0], dtype=torch.long)
        mask = (history > 0).unsqueeze(-1).float()
        q = (self.items_in(history) * mask * self.position).sum(1) + self.users(user)
        return torch.cat([q, torch.ones_like(q[:, :1])], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        return torch.cat([self.w, self.b.unsqueeze(-1)], dim=-1)


class GruModel(nn.Module):
    """GRU4Rec-like: dynamic history length, no user, no bias."""

    config_class, fixed_length, uses_user = WindowConfig, False, False

    def __init__(self, config: WindowConfig) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.num_items + 1, config.dim, padding_idx=0)
        self.gru = nn.GRU(config.dim, config.dim, batch_first=True)

    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        hidden, _ = self.gru(self.emb(history))
        return hidden[:, -1]

    def item_vectors(self) -> torch.Tensor:
        return self.emb.weight[1:]
