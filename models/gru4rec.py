"""GRU4Rec in its benchmark form (Hidasi et al., ICLR 2016; as configured in RecBole).

    item embedding (0 = padding) -> dropout -> GRU (hidden 128, 1 layer) -> Linear(hidden, d)
    score(h, j) = out_T . E_j        (tied to the input table, no bias)

The contract's histories are LEFT-padded (most recent item last). A GRU that read the padding first
would start its real steps from a state that depends on how much padding there is, so ``_right_align``
rolls each row to right padding with a gather (real items first, padding after); the output is then
taken at position ``length - 1``. No python loop over time and no ``pack_padded_sequence``, so the
encoder exports to ONNX with dynamic batch and length (TorchScript exporter, see docs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from models.config import ModelConfig


@dataclass
class GRU4RecConfig(ModelConfig):
    """``smoke``: tiny, for tests. ``cpu`` and ``paper``: d=64, hidden 128, dropout 0.3 (RecBole's)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"dim": 16, "hidden": 16, "dropout": 0.1, "max_len": 20}, "cpu": {}, "paper": {}}
    # num_items (the first field), preset() and replace() come from ModelConfig
    dim: int = 64  # d: item embedding and output size
    hidden: int = 128
    num_layers: int = 1
    dropout: float = 0.3  # on the input embeddings
    max_len: int = 50  # history length used in training and evaluation (encode accepts any length)
    special_tokens: int = 0  # token rows after the items: 2 = [MASK], [INT] for SSI's consistency tasks
    num_negatives: int = 3  # sampled negatives per target when trained with BPR (not its default loss)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len < 1:
            raise ValueError(f"GRU4Rec needs max_len >= 1, got {self.max_len}")
        if self.special_tokens not in (0, 2):
            raise ValueError(f"special_tokens must be 0 or 2 ([MASK], [INT]), got {self.special_tokens}")


def _positions(history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Column index (B, L), width L (B, 1) and lengths (B, 1), all as tensors so that an ONNX trace
    keeps the width dynamic (a python ``shape[1]`` would be frozen into the graph)."""
    ones = torch.ones_like(history)
    return ones.cumsum(dim=1) - 1, ones.sum(dim=1, keepdim=True), (history > 0).sum(dim=1, keepdim=True)


def _right_align(history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, L) -> (right-padded (B, L), lengths (B,)) with the same real items in order."""
    pos, width, lengths = _positions(history)
    src = (pos + width - lengths) % width  # real items first, then the leading padding
    return history.gather(1, src), lengths.squeeze(1)


class GRU4Rec(nn.Module):
    model_name = "gru4rec"
    config_class = GRU4RecConfig
    fixed_length = False
    uses_user = False
    default_loss = "ce"
    training_examples = "prefixes"  # every prefix of a sequence in one pass (sequence_output)

    def __init__(self, config: GRU4RecConfig):
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.num_items + 1 + config.special_tokens, config.dim, padding_idx=0)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(config.dim, config.hidden, num_layers=config.num_layers, batch_first=True, bias=True)
        self.dense = nn.Linear(config.hidden, config.dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        for name, p in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)
        nn.init.xavier_normal_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)

    def _run(self, right: torch.Tensor) -> torch.Tensor:
        """Right-padded (B, L) -> outputs (B, L, d); position t sees items 0..t only."""
        x = self.item_emb(right) * (right > 0).unsqueeze(-1).to(self.item_emb.weight.dtype)  # (B, L, d)
        out, _ = self.gru(self.emb_dropout(x))  # (B, L, hidden)
        return self.dense(out)  # (B, L, d)

    # ---- servable contract ----------------------------------------------------------------------
    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) left-padded -> (B, d): the output after the last real item (``user`` is ignored)."""
        right, lengths = _right_align(history)
        out = self._run(right)  # (B, L, d)
        last = (lengths - 1).clamp_min(0)  # an empty history reads the state after one padding step
        idx = last.view(-1, 1, 1).expand(-1, 1, out.shape[-1])  # (B, 1, d)
        return out.gather(1, idx).squeeze(1)

    def item_vectors(self) -> torch.Tensor:
        """(N, d): the input table, rows 1..N (scores are tied, with no bias; special tokens excluded)."""
        return self.item_emb.weight[1 : self.config.num_items + 1]

    def output_items(self) -> torch.Tensor:
        """(N, d): the output item table (the same tied rows), imitated by or imitating another model."""
        return self.item_vectors()

    # ---- training -------------------------------------------------------------------------------
    def sequence_output(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded -> (B, L, d) aligned with the input: column t = output after item t.

        Padding columns are zero. Used for prefix training: one pass scores every prefix.
        """
        right, _ = _right_align(history)
        out = self._run(right)  # (B, L, d), real steps first
        pos, width, lengths = _positions(history)
        src = (pos - width + lengths) % width  # inverse roll: back to left padding
        out = out.gather(1, src.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
        return out * (history > 0).unsqueeze(-1).to(out.dtype)

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded tokens -> (B, L, d); what SSI's consistency tasks read (column -1: the last token)."""
        return self.sequence_output(tokens)

    def forward(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """Scores over items 1..N: (B, N)."""
        return self.encode(history) @ self.item_vectors().T

    def scores(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) by the training path: the last column of ``sequence_output`` (histories of >= 1 item)."""
        return self.sequence_output(history)[:, -1] @ self.item_vectors().T

    def extra_repr(self) -> str:
        c = self.config
        return f"items={c.num_items}, d={c.dim}, hidden={c.hidden}, layers={c.num_layers}"


__all__ = ["GRU4Rec", "GRU4RecConfig"]
