"""BERT4Rec, the teacher base of SSI.

Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations from
Transformer", CIKM 2019; used as the teacher encoder by Yang et al., "Improving Sequential
Recommendation Consistency with Self-Supervised Imitation" (SSI), IJCAI 2021 (teacher size in SSI:
8 blocks, 4 heads, d=256, Adam lr 1e-3, batch 256).

Architecture: item + learned position embeddings -> LayerNorm -> dropout -> post-LN Transformer
blocks (bidirectional self-attention, GELU feed-forward) -> hidden states. The output head is
dense -> GELU -> LayerNorm, then logits ``h . E^T + b`` with ``E`` the (tied) item embedding table.

Token ids: 0 padding, 1..N items, N+1 [MASK], N+2 [INT] (the token whose hidden state SSI's
temporal/persona consistency heads classify). Inputs are left-padded (most recent item last).
Positions are right-aligned: the last column always gets position ``max_len - 1``, so a batch of
any width ``L <= max_len`` embeds its items exactly as the full-width batch would, and padding
never changes a result (padding keys are masked out of attention).

Servable contract: ``encode(history)`` appends [MASK] after the history (keeping its last
``max_len - 1`` items) and returns ``[h_mask, 1]``; ``item_vectors()`` returns ``[E_items | b]``, so
``encode(h) @ item_vectors().T`` equals the model's next-item logits over items 1..N.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig

# name -> size fields; num_items always comes from the data (pass it as an override).
PRESETS: dict[str, dict[str, Any]] = {
    # seconds on any machine: for tests and wiring checks.
    "smoke": {"max_len": 20, "dim": 16, "n_layers": 1, "n_heads": 2, "ffn_dim": 32, "dropout": 0.1,
              "attn_dropout": 0.1},
    # trains a Beauty teacher to convergence within ~20 min on 2 CPU cores.
    "cpu": {"max_len": 50, "dim": 64, "n_layers": 2, "n_heads": 2, "ffn_dim": 256, "dropout": 0.2,
            "attn_dropout": 0.2},
    # SSI / BERT4Rec paper size: a GPU job.
    "paper": {"max_len": 50, "dim": 256, "n_layers": 8, "n_heads": 4, "ffn_dim": 1024, "dropout": 0.1,
              "attn_dropout": 0.1},
}


@dataclass
class BERT4RecConfig(ModelConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    # num_items (the first field), preset() and replace() come from ModelConfig
    max_len: int = 50  # positions, including the appended [MASK] at inference
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_dim: int = 256
    dropout: float = 0.2  # embeddings, residual branches
    attn_dropout: float = 0.2  # attention probabilities
    init_std: float = 0.02  # truncated normal, as BERT

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2 (history + [MASK]), got {self.max_len}")

    @property
    def vocab_size(self) -> int:
        return self.num_items + 3  # padding, items, [MASK], [INT]


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention; padding keys are excluded."""

    def __init__(self, cfg: BERT4RecConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.attn_dropout = cfg.attn_dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # x: (B, L, d); keep: (B, 1, 1, L) bool, True where the key is a real token
        b, length, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(b, length, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, L, dh)
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)  # (B, H, L, dh)
        return self.proj(y.transpose(1, 2).reshape(b, length, d))


class Block(nn.Module):
    """Post-LN Transformer block (as BERT): x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: BERT4RecConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(), nn.Linear(cfg.ffn_dim, cfg.dim))
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.drop(self.attn(x, keep)))  # (B, L, d)
        return self.ln2(x + self.drop(self.ffn(x)))  # (B, L, d)


class BERT4Rec(nn.Module):
    model_name = "bert4rec"
    config_class = BERT4RecConfig
    fixed_length = False
    uses_user = False

    def __init__(self, config: BERT4RecConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.dim, padding_idx=0)  # row i = token i
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.emb_ln = nn.LayerNorm(c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.head = nn.Sequential(nn.Linear(c.dim, c.dim), nn.GELU(), nn.LayerNorm(c.dim))  # output transform
        self.out_bias = nn.Parameter(torch.zeros(c.num_items))  # (N,) bias of items 1..N
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    # ---- encoder ---------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, d) of left-padded tokens (B, L), L <= max_len, >= 1 real token a row."""
        length = tokens.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"input width {length} exceeds max_len {self.config.max_len}")
        pos = torch.arange(length, device=tokens.device) + (self.config.max_len - length)  # (L,) right-aligned
        x = self.drop(self.emb_ln(self.tok_emb(tokens) + self.pos_emb(pos)))  # (B, L, d)
        keep = (tokens != 0)[:, None, None, :]  # (B, 1, 1, L)
        for block in self.blocks:
            x = block(x, keep)
        return x

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, d): the encoder SSI's consistency tasks read (the same as ``forward``)."""
        return self.forward(tokens)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Item logits (..., N) for hidden states (..., d): head(h) . E_items^T + b."""
        return self.head(hidden) @ self.item_embeddings().T + self.out_bias

    def item_embeddings(self) -> torch.Tensor:
        """(N, d) embeddings of items 1..N (the tied output table)."""
        return self.tok_emb.weight[1 : self.config.num_items + 1]

    def append_token(self, history: torch.Tensor, token: int) -> torch.Tensor:
        """(B, L) left-padded history -> (B, min(L, max_len - 1) + 1) with ``token`` appended."""
        h = history[:, -(self.config.max_len - 1) :]  # (B, <= max_len - 1)
        tail = torch.full((h.shape[0], 1), token, dtype=h.dtype, device=h.device)
        return torch.cat([h, tail], dim=1)

    # ---- servable contract -----------------------------------------------------------------------
    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) left-padded history -> (B, d + 1) query ``[head(h_mask), 1]``."""
        tokens = self.append_token(history, self.config.mask_token)  # (B, L')
        q = self.head(self.forward(tokens)[:, -1])  # (B, d)
        return torch.cat([q, torch.ones_like(q[:, :1])], dim=1)  # (B, d + 1)

    def item_vectors(self) -> torch.Tensor:
        """(N, d + 1) ``[E_items | b]``, row i = item id i + 1."""
        return torch.cat([self.item_embeddings(), self.out_bias[:, None]], dim=1)

    def scores(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) the cloze head's logits at a [MASK] appended after the history."""
        tokens = self.append_token(history, self.config.mask_token)
        return self.logits(self.forward(tokens)[:, -1])

    def output_items(self) -> torch.Tensor:
        """(N, d) the item table a student imitates (SSI eq. 7): the tied embeddings, bias excluded."""
        return self.item_embeddings()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self.config
        return f"items={c.num_items}, d={c.dim}, layers={c.n_layers}, heads={c.n_heads}, max_len={c.max_len}"


__all__ = ["PRESETS", "BERT4Rec", "BERT4RecConfig"]
