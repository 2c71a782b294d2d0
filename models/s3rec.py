"""S3-Rec without attributes: SASRec pre-trained with masked item and segment prediction.

Zhou et al., "S3-Rec: Self-Supervised Learning for Sequential Recommendation with Mutual Information
Maximization", CIKM 2020. SSI's Table 2 runs it "with two auxiliary self-supervised objectives without
extra attribute information", i.e. MIP and SP only (no AAP/MAP). Paper row on Beauty: R@10 .470,
N@10 .321.

The network is SASRec's encoder (``models.sasrec``) with one extra token, [MASK] = N + 1, and two
bilinear heads used only in pre-training:

- masked item prediction (MIP): the encoder runs *bidirectionally* over a sequence with some items
  replaced by [MASK]; ``f(h_t, e) = (W_mip h_t) . e`` scores an item for the masked position t.
- segment prediction (SP): a contiguous segment is masked in the sequence; the last position's
  hidden state s of that sequence is compared with the last hidden state s~ of the segment encoded
  alone (same positions, [MASK] everywhere else): ``f(s, s~) = (W_sp s) . s~``.

Both are trained against one sampled negative with a pairwise loss (``training/baselines.py``).
Fine-tuning is plain SASRec training (causal attention, next-item loss), starting from the
pre-trained weights, so the servable model is SASRec's causal encoder: ``encode``/``item_vectors``
are SASRec's, and the [MASK] row and the heads are not part of the served item table.
``cloze_encode`` (bidirectional, [MASK] appended, through ``W_mip``) is what the pre-training stage
is validated with: MIP at the last position is next-item prediction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from models.sasrec import SASRec, SASRecConfig


@dataclass
class S3RecConfig(SASRecConfig):
    """SASRec's sizes (S3-Rec pre-trains and fine-tunes the same encoder); presets are SASRec's.
    ``mask_token`` (N + 1) is SASRecConfig's."""


class S3Rec(SASRec):
    model_name = "s3rec"
    config_class = S3RecConfig
    num_special_tokens: ClassVar[int] = 1  # [MASK]

    def __init__(self, config: S3RecConfig):
        super().__init__(config)
        self.mip = nn.Linear(config.dim, config.dim)  # W_mip
        self.sp = nn.Linear(config.dim, config.dim)  # W_sp
        self._init(self.mip)
        self._init(self.sp)

    def mip_scores(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(..., d) hidden states at masked positions, (..., d) item embeddings -> (...) scores."""
        return (self.mip(hidden) * items).sum(-1)

    def sp_scores(self, context: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        """(B, d) masked-sequence states, (B, d) segment states -> (B,) scores."""
        return (self.sp(context) * segment).sum(-1)

    def cloze_encode(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded history -> (B, d) MIP query for a [MASK] appended after it (bidirectional).

        ``cloze_encode(h) @ item_embeddings().T`` are the MIP scores of the next item.
        """
        h = history[:, -(self.config.max_len - 1) :]  # (B, <= max_len - 1)
        mask = torch.full_like(h[:, :1], self.config.mask_token)  # (B, 1)
        tokens = torch.cat([h, mask], dim=1)  # (B, L')
        return self.mip(self.hidden_states(tokens, causal=False)[:, -1])


__all__ = ["S3Rec", "S3RecConfig"]
