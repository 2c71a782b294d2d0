"""HGN: Hierarchical Gating Networks for sequential recommendation (Ma, Kang & Liu, KDD 2019).

One window of the ``L`` most recent items ``e_1..e_L`` and the user ``u`` go through two gates::

    FeatureGating   E_F = E * sigmoid(E Wg1 + u Wg2 + b)                 (B, L, d)
    InstanceGating  a   = sigmoid(E_F w3 + u W4)                          (B, L)
                    g   = sum_l a_l E_F,l / sum_l a_l                     (B, d)
    score(u, j)     r   = u.q_j + g.q_j + sum_l e_l.q_j + b_j             (item-item product term)

with an input item table ``E``, an output item table ``W2`` (rows ``q_j``) and an output bias ``b2``.
The score is one inner product in d+1 dimensions, ``<[u + g + sum_l e_l, 1], [q_j, b_j]>``, which
is the servable contract: ``encode`` returns the left factor, ``item_vectors`` the right one.

Fixes over the public code (allenjack/HGN):
- the instance-gate weights ``w3``/``W4`` are registered parameters (the official ones never train);
- padding (item 0) is masked out of both gates, the pooled sum, its normaliser and the item-item
  term, so the padding row of ``E`` has no influence at all;
- scores of seen items are filtered with ``-inf`` (the protocol does that), never with 0;
- losses are means over the batch (done by the training task).

User ids are ``row + 1``; row 0 of the user table is a trained "unknown user": in training mode a
fraction ``user_dropout`` of the windows have their user id replaced by 0, and ``encode(h, None)``
uses it, so anonymous histories get meaningful scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig


@dataclass
class HGNConfig(ModelConfig):
    """``smoke``: d=16, for tests. ``cpu`` and ``paper``: the paper's d=50, L=5, T=3 (HGN is cheap).
    ``num_items`` and ``num_users`` come from the data, as overrides."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"dim": 16}, "cpu": {}, "paper": {}}
    # num_items (the first field), preset() and replace() come from ModelConfig
    num_users: int
    dim: int = 50  # d
    max_len: int = 5  # L, the window of most recent items the encoder reads
    targets: int = 3  # T, next items predicted per training window
    num_negatives: int = 3  # sampled negatives per window (BPR)
    user_dropout: float = 0.1  # fraction of training windows that see the unknown user (id 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_users < 0:
            raise ValueError(f"HGN needs num_users >= 0, got {self.num_users}")
        if self.max_len < 1 or self.targets < 1 or not 0.0 <= self.user_dropout <= 1.0:
            raise ValueError(f"bad HGN window/targets/user_dropout: {self.max_len}, {self.targets}, {self.user_dropout}")


class FeatureGating(nn.Module):
    """E_F = E * sigmoid(E Wg1 + u Wg2 + b): which latent features of each item pass, per user."""

    def __init__(self, dim: int):
        super().__init__()
        self.item = nn.Linear(dim, dim, bias=False)  # Wg1
        self.user = nn.Linear(dim, dim, bias=False)  # Wg2
        self.bias = nn.Parameter(torch.zeros(dim))  # b

    def forward(self, e: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        # e: (B, L, d), u: (B, d) -> (B, L, d)
        gate = torch.sigmoid(self.item(e) + self.user(u).unsqueeze(1) + self.bias)
        return e * gate


class InstanceGating(nn.Module):
    """a = sigmoid(E_F w3 + u W4): how much each of the L window positions counts, per user."""

    def __init__(self, dim: int, window: int):
        super().__init__()
        self.item = nn.Linear(dim, 1, bias=False)  # w3
        self.user = nn.Linear(dim, window, bias=False)  # W4, one weight per window position

    def forward(self, e_f: torch.Tensor, u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # e_f: (B, L, d), u: (B, d), mask: (B, L) 1 for real items -> pooled g: (B, d)
        a = torch.sigmoid(self.item(e_f).squeeze(-1) + self.user(u)) * mask  # (B, L), 0 on padding
        num = (a.unsqueeze(-1) * e_f).sum(dim=1)  # (B, d)
        den = a.sum(dim=1, keepdim=True).clamp_min(1e-8)  # (B, 1); an empty window gives g = 0
        return num / den


class HGN(nn.Module):
    model_name = "hgn"
    config_class = HGNConfig
    fixed_length = True  # reads the last config.max_len (= L) items
    uses_user = True
    default_loss = "bpr"
    training_examples = "windows"  # one query per window of L items before T targets

    def __init__(self, config: HGNConfig):
        super().__init__()
        self.config = config
        n, d = config.num_items, config.dim
        self.item_emb = nn.Embedding(n + 1, d)  # E; row 0 (padding) is masked out everywhere
        self.user_emb = nn.Embedding(config.num_users + 1, d)  # row 0 = unknown user (trained)
        self.feature_gate = FeatureGating(d)
        self.instance_gate = InstanceGating(d, config.max_len)
        self.out_emb = nn.Embedding(n + 1, d)  # W2 (row j = q_j); row 0 unused
        self.out_bias = nn.Embedding(n + 1, 1)  # b2
        self._init_weights()

    def _init_weights(self) -> None:
        d = self.config.dim
        for emb in (self.item_emb, self.user_emb, self.out_emb):
            nn.init.normal_(emb.weight, 0.0, 1.0 / d)  # as the official code
        nn.init.zeros_(self.out_bias.weight)
        for lin in (self.feature_gate.item, self.feature_gate.user, self.instance_gate.item, self.instance_gate.user):
            nn.init.xavier_uniform_(lin.weight)

    # ---- inputs ---------------------------------------------------------------------------------
    def window(self, history: torch.Tensor) -> torch.Tensor:
        """(B, any L') left-padded -> (B, L): the last L items, left-padded with 0 when L' < L."""
        L = self.config.max_len
        if history.shape[1] >= L:
            return history[:, history.shape[1] - L:]
        return F.pad(history, (L - history.shape[1], 0))

    def user_vector(self, user: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B,) ids (row + 1; 0 = unknown) or None -> (B, d). Training drops ids to 0 at ``user_dropout``."""
        if user is None:
            user = torch.zeros(batch, dtype=torch.long, device=self.user_emb.weight.device)
        elif self.training and self.config.user_dropout > 0:
            drop = torch.rand(user.shape, device=user.device) < self.config.user_dropout
            user = user.masked_fill(drop, 0)
        return self.user_emb(user)

    def _parts(self, history: torch.Tensor, user: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The three user-side terms of the score: u (B, d), g (B, d), sum_l e_l (B, d)."""
        h = self.window(history)  # (B, L)
        mask = (h > 0).to(self.item_emb.weight.dtype)  # (B, L)
        e = self.item_emb(h) * mask.unsqueeze(-1)  # (B, L, d), padding rows zeroed
        u = self.user_vector(user, h.shape[0])  # (B, d)
        e_f = self.feature_gate(e, u)  # (B, L, d)
        g = self.instance_gate(e_f, u, mask)  # (B, d)
        return u, g, e.sum(dim=1)

    # ---- servable contract ----------------------------------------------------------------------
    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L') left-padded history, (B,) user ids or None -> query (B, d + 1) = [u + g + sum e, 1]."""
        u, g, s = self._parts(history, user)
        q = u + g + s  # (B, d)
        return torch.cat([q, torch.ones_like(q[:, :1])], dim=1)

    def item_vectors(self) -> torch.Tensor:
        """(N, d + 1): row i = [q_j | b_j] for item j = i + 1."""
        return torch.cat([self.out_emb.weight[1:], self.out_bias.weight[1:]], dim=1)

    def output_items(self) -> torch.Tensor:
        """(N, d) the output item table W2 (what item-representation imitation aligns)."""
        return self.out_emb.weight[1:]

    # ---- the paper's score, term by term (reference for the decomposition) ------------------------
    def forward(self, history: torch.Tensor, user: torch.Tensor | None = None,
                items: torch.Tensor | None = None) -> torch.Tensor:
        """r(u, j) = u.q_j + g.q_j + sum_l e_l.q_j + b_j for ``items`` (B, K) ids, or all items (B, N)."""
        u, g, s = self._parts(history, user)
        if items is None:
            q, b = self.out_emb.weight[1:], self.out_bias.weight[1:, 0]  # (N, d), (N,)
            return u @ q.T + g @ q.T + s @ q.T + b
        q, b = self.out_emb(items), self.out_bias(items).squeeze(-1)  # (B, K, d), (B, K)
        return sum(torch.einsum("bd,bkd->bk", x, q) for x in (u, g, s)) + b

    def scores(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) the paper's score over all items, term by term (``forward``)."""
        return self.forward(history, user)

    def extra_repr(self) -> str:
        c = self.config
        return f"items={c.num_items}, users={c.num_users}, d={c.dim}, L={c.max_len}, T={c.targets}"


__all__ = ["HGN", "FeatureGating", "HGNConfig", "InstanceGating"]
