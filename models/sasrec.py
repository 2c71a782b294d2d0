"""SASRec: self-attentive sequential recommendation.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. A baseline of SSI's Table 2
(via S3-Rec, whose fine-tuning stage *is* this model); S3-Rec's authors report it on the same Beauty
files and protocol at HR@10 .4696 / NDCG@10 .3156.

    item + learned position embeddings -> LayerNorm -> dropout
    -> post-LN Transformer blocks with *causal* self-attention (GELU feed-forward)
    -> hidden state h_t of every position; score(t, j) = h_t . E_j   (tied to the input table, no bias)

The block layout follows the S3-Rec authors' SASRec (RUCAIBox/CIKM2020-S3Rec), which produced the
reference numbers above, rather than the original TF code (pre-LN, ReLU, sqrt(d) scaling): it is the
encoder S3-Rec pre-trains and fine-tunes, so SASRec and S3-Rec share it here too. The blocks are
BERT4Rec's (``models.bert4rec.Block``); only the attention mask differs.

Training (``training/baselines.py``): every position predicts the next item, either with the paper's
loss (BCE with one sampled negative per position, ``loss="bce"``) or full softmax cross-entropy
(``loss="ce"``); both are the same model.

Padding: inputs are left-padded (most recent item last) and positions are right-aligned (the last
column always gets position ``max_len - 1``, as in the original code). Padding keys are masked out
of attention; every query also sees itself, so a padding row that would otherwise see no key at all
stays finite (its output is never used and never reaches a real row). Results therefore do not
depend on how much padding a batch has.

Servable contract: ``encode(history)`` is the last position's hidden state, ``item_vectors()`` the
item table without padding/special rows; ``encode(h) @ item_vectors().T == forward(h)``.

Prefix contract (``models.contracts.PrefixStudent``): causal attention scores every prefix in one pass
(``sequence_output``, column t from items up to t only), the same examples GRU4Rec trains on,
so the next-item teacher task (``training.teachers``, ``--backbone sasrec``) trains SASRec-CE with SSI's
consistency tasks. ``special_tokens=2`` adds the [MASK] (N+1) and [INT] (N+2) rows those tasks need; they are
never part of the item table. Configs saved before these fields existed load with their defaults (0: none).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from models.bert4rec import Block
from models.config import ModelConfig

# name -> size fields; num_items always comes from the data (pass it as an override).
PRESETS: dict[str, dict[str, Any]] = {
    # seconds on any machine: for tests and wiring checks.
    "smoke": {"max_len": 20, "dim": 16, "n_layers": 1, "n_heads": 2, "ffn_dim": 32,
              "dropout": 0.1, "attn_dropout": 0.1},
    # the S3-Rec authors' SASRec on Beauty (d=64, 2 blocks, 2 heads, dropout 0.5); cheap enough for CPU.
    "cpu": {"max_len": 50, "dim": 64, "n_layers": 2, "n_heads": 2, "ffn_dim": 256,
            "dropout": 0.5, "attn_dropout": 0.5},
    "paper": {"max_len": 50, "dim": 64, "n_layers": 2, "n_heads": 2, "ffn_dim": 256,
              "dropout": 0.5, "attn_dropout": 0.5},
}


@dataclass
class SASRecConfig(ModelConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    # num_items (the first field), preset() and replace() come from ModelConfig
    max_len: int = 50  # positions; histories are cut to their last max_len items
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_dim: int = 256
    dropout: float = 0.5  # embeddings and residual branches
    attn_dropout: float = 0.5  # attention probabilities
    init_std: float = 0.02  # normal init, as the S3-Rec code
    special_tokens: int = 0  # token rows after the items: 2 = [MASK], [INT] for SSI's consistency tasks
    num_negatives: int = 3  # sampled negatives per target when trained with BPR as a student (not its loss)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {self.max_len}")
        if self.special_tokens not in (0, 2):
            raise ValueError(f"special_tokens must be 0 or 2 ([MASK], [INT]), got {self.special_tokens}")


def attention_mask(tokens: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, L) tokens -> (B, 1, L, L) bool, True where query i may attend to key j.

    Keys are real tokens (and, when ``causal``, not after the query); the diagonal is always allowed.
    """
    length = tokens.shape[1]
    keep = (tokens != 0)[:, None, None, :]  # (B, 1, 1, L)
    eye = torch.eye(length, dtype=torch.bool, device=tokens.device)  # (L, L)
    if causal:
        keep = keep & torch.ones_like(eye).tril()
    return keep | eye


class SASRec(nn.Module):
    model_name = "sasrec"
    config_class = SASRecConfig
    fixed_length = False
    uses_user = False
    default_loss = "ce"  # as a student: softmax cross-entropy over all items (the sasrec_ce baseline's loss)
    training_examples = "prefixes"  # every prefix of a sequence in one pass (sequence_output)
    num_special_tokens: ClassVar[int] = 0  # extra token rows after the items (S3-Rec adds [MASK])

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.config = c = config
        extra = max(self.num_special_tokens, c.special_tokens)  # [MASK] = N + 1 in both, then [INT]
        self.tok_emb = nn.Embedding(c.num_items + 1 + extra, c.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.emb_ln = nn.LayerNorm(c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.config.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    # ---- encoder ---------------------------------------------------------------------------------
    def hidden_states(self, tokens: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """(B, L) left-padded tokens, L <= max_len -> (B, L, d) hidden states."""
        length = tokens.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"input width {length} exceeds max_len {self.config.max_len}")
        # (L,) right-aligned: the last column is always position max_len - 1
        pos = torch.arange(length, device=tokens.device) + (self.config.max_len - length)
        x = self.drop(self.emb_ln(self.tok_emb(tokens) + self.pos_emb(pos)))  # (B, L, d)
        mask = attention_mask(tokens, causal)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def item_embeddings(self) -> torch.Tensor:
        """(N, d) rows of items 1..N (the tied output table, no padding/special rows)."""
        return self.tok_emb.weight[1 : self.config.num_items + 1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., d) hidden states -> (..., N) scores of items 1..N."""
        return hidden @ self.item_embeddings().T

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded history -> (B, N) next-item scores of items 1..N."""
        return self.logits(self.hidden_states(history[:, -self.config.max_len :])[:, -1])

    # ---- servable contract -----------------------------------------------------------------------
    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) left-padded history (any L; the last max_len items are used) -> (B, d)."""
        return self.hidden_states(history[:, -self.config.max_len :])[:, -1]

    def item_vectors(self) -> torch.Tensor:
        """(N, d); row i = item id i + 1."""
        return self.item_embeddings()

    def output_items(self) -> torch.Tensor:
        """(N, d): the tied output table (``models.contracts.Teacher``): SASRec can teach a student."""
        return self.item_embeddings()

    def scores(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) next-item logits (``forward``)."""
        return self.forward(history)

    # ---- prefix training (models.contracts.PrefixStudent) ----------------------------------------
    def sequence_output(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded, L <= max_len -> (B, L, d): column t = the query after item t, from items up to t
        only (causal attention); padding columns are zero. The last column is ``encode``'s query; an earlier
        column differs from ``encode`` of its prefix by its position embeddings (right-aligned to the whole row),
        exactly as SASRec trains every position (``training.baselines.NextItemTask``)."""
        return self.hidden_states(history) * (history > 0).unsqueeze(-1).to(self.tok_emb.weight.dtype)

    def extra_repr(self) -> str:
        c = self.config
        return f"items={c.num_items}, d={c.dim}, layers={c.n_layers}, heads={c.n_heads}, max_len={c.max_len}"


__all__ = ["PRESETS", "SASRec", "SASRecConfig", "attention_mask"]
