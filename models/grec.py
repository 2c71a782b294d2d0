"""GRec: gap-filling encoder-decoder with dilated CNNs.

Yuan et al., "Future Data Helps Training: Modeling Future Contexts for Session-based
Recommendation", WWW 2020. A baseline of SSI's Table 2 (Beauty: R@10 .470, N@10 .314). No public
code exists; this follows the paper's description, and every choice it leaves open is marked
"Choice" below.

Training (gap filling): some items of a sequence are replaced by the [GAP] token.

    encoder input   x~  = the sequence with the chosen items replaced by [GAP]  (sees past *and* future)
    decoder input   x^  = the complement: the chosen items, [GAP] everywhere else
    encoder         bidirectional (non-causal) dilated-CNN residual blocks over emb(x~)
    projector       z = e + emb(x^);  z = z + W2 relu(W1 z)     (inverted bottleneck, width mult * d)
    decoder         causal dilated-CNN residual blocks (NextItNet) over z, then LayerNorm -> h
    output          logits(t) = W h_t + b over items 1..N: position t predicts the item at t + 1

The decoder's output at t sees the encoder output at positions <= t (which summarise the visible
items anywhere in the sequence, [GAP] where items were chosen) and the chosen items at positions
<= t, so the item at t + 1 (a [GAP] for the encoder, not yet visible to the decoder) never leaks,
nor does any later chosen item. The loss is the softmax cross-entropy at the chosen positions. The
first item of a sequence is never chosen (nothing precedes it).

Inference (a left-to-right next-item model): the encoder sees the whole history followed by one
[GAP]; the decoder input is [GAP] at every history position (nothing is chosen but the gap), and
the output at the last history position scores the item in the gap. This is exactly a training
example whose only chosen item is the last one. (Choice: the paper generates left to right like
NextItNet; giving the encoder the full history and the gap keeps all visible context.)

Choices: residual blocks are NextItNet's block (b), ``conv(d) -> LN -> ReLU -> conv(2d) -> LN -> ReLU``
plus the input, with kernel 3 and one block per entry of ``enc_dilations``/``dec_dilations``; the
encoder and decoder share one input embedding table (pad, items, [GAP]); the output layer has a
bias (folded into the served item table) and its weights are tied to the input item table
(``tie_weights``; NextItNet has a separate softmax matrix). The paper mentions no regularisation;
here there is dropout on the input embeddings and on every residual branch, and a LayerNorm on the
decoder output (``final_norm``). Evidence (valid NDCG@10, sampled): on a Beauty subsample the model
without the LayerNorm peaked after 3 epochs and then fell (.190 -> .172 by epoch 7, with or without
dropout 0.5 and tied weights); on full Beauty, with the LayerNorm, untied weights and dropout 0.2
peaked at .259 (epoch 9), tied weights and dropout 0.5 reached .289 (epoch 14).
The training task's gap rate (``GRecTaskConfig.gap_p``, 0.3) is not given in the paper either; gap
filling is a regulariser here: with only the last item as a gap (plain next-item training through the
bidirectional encoder) the same subsample peaked lower (.180) and fell faster.

Padding: histories are left-padded; every convolution's input is zeroed at padding positions, so a
padding column acts exactly like the convolution's own zero padding and results do not depend on
how much padding there is. Convolutions have no positions, so any history width works.

Token ids: 0 padding, 1..N items, N+1 [GAP]. Servable contract: ``encode(history) = [h, 1]``,
``item_vectors() = [W | b]``, and ``encode(h) @ item_vectors().T == forward(h)``.
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
    "smoke": {"max_len": 20, "dim": 16, "enc_dilations": (1, 2), "dec_dilations": (1, 2), "dropout": 0.0},
    # d=64 as the other Beauty baselines; convolutions with dilations 1, 2, 4, 8 in each stack: the
    # decoder reaches 31 positions back, the encoder 15 each way, plenty for Beauty (median 4 items).
    "cpu": {"max_len": 50, "dim": 64, "enc_dilations": (1, 4), "dec_dilations": (1, 4), "dropout": 0.5},
    # NextItNet's depth (dilations 1, 2, 4, 8 twice per stack).
    "paper": {"max_len": 50, "dim": 64, "enc_dilations": (1, 4, 1, 4), "dec_dilations": (1, 4, 1, 4),
              "dropout": 0.5},
}


@dataclass
class GRecConfig(ModelConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    # num_items (the first field), preset() and replace() come from ModelConfig
    max_len: int = 50  # training window and inference history (including the appended [GAP])
    dim: int = 64
    kernel: int = 3  # odd, so that the encoder's non-causal convolution is centred
    enc_dilations: tuple[int, ...] = (1, 4)  # one residual block (dilations r, 2r) per entry
    dec_dilations: tuple[int, ...] = (1, 4)
    projector_mult: int = 4  # inverted bottleneck width = projector_mult * dim
    dropout: float = 0.5  # on the input embeddings and on each residual branch
    tie_weights: bool = True  # output table = the input item table (NextItNet: a separate softmax layer)
    final_norm: bool = True  # LayerNorm on the decoder output (NextItNet: none); see the module docstring
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        self.enc_dilations = tuple(self.enc_dilations)  # JSON gives lists back
        self.dec_dilations = tuple(self.dec_dilations)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2 (history + [GAP]), got {self.max_len}")

    @property
    def gap_token(self) -> int:
        return self.num_items + 1


class DilatedConv(nn.Module):
    """1D convolution over (B, L, d) with zero padding: causal (left only) or centred."""

    def __init__(self, dim: int, kernel: int, dilation: int, causal: bool):
        super().__init__()
        span = (kernel - 1) * dilation
        self.pad = (span, 0) if causal else (span // 2, span // 2)
        self.conv = nn.Conv1d(dim, dim, kernel, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(x.transpose(1, 2), self.pad)  # (B, d, L + span)
        return self.conv(y).transpose(1, 2)  # (B, L, d)


class ResidualBlock(nn.Module):
    """NextItNet block (b): x + relu(LN(conv_2r(relu(LN(conv_r(x)))))); padding is zeroed before each conv."""

    def __init__(self, dim: int, kernel: int, dilation: int, causal: bool, dropout: float):
        super().__init__()
        self.conv1 = DilatedConv(dim, kernel, dilation, causal)
        self.ln1 = nn.LayerNorm(dim)
        self.conv2 = DilatedConv(dim, kernel, 2 * dilation, causal)
        self.ln2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # x: (B, L, d); keep: (B, L, 1), 1.0 at real tokens, 0.0 at padding
        y = F.relu(self.ln1(self.conv1(x * keep)))
        y = F.relu(self.ln2(self.conv2(y * keep)))
        return x + self.drop(y)


class CNNStack(nn.Module):
    def __init__(self, cfg: GRecConfig, dilations: tuple[int, ...], causal: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(cfg.dim, cfg.kernel, r, causal, cfg.dropout)
                                    for r in dilations)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, keep)
        return x


class Projector(nn.Module):
    """Inverted bottleneck on the sum of encoder output and decoder input: z + W2 relu(W1 z)."""

    def __init__(self, cfg: GRecConfig):
        super().__init__()
        self.up = nn.Linear(cfg.dim, cfg.projector_mult * cfg.dim)
        self.down = nn.Linear(cfg.projector_mult * cfg.dim, cfg.dim)

    def forward(self, enc: torch.Tensor, dec_emb: torch.Tensor) -> torch.Tensor:
        z = enc + dec_emb  # (B, L, d)
        return z + self.down(F.relu(self.up(z)))


class GRec(nn.Module):
    model_name = "grec"
    config_class = GRecConfig
    fixed_length = False
    uses_user = False

    def __init__(self, config: GRecConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.num_items + 2, c.dim, padding_idx=0)  # pad, items, [GAP]
        self.drop = nn.Dropout(c.dropout)
        self.encoder = CNNStack(c, c.enc_dilations, causal=False)
        self.projector = Projector(c)
        self.decoder = CNNStack(c, c.dec_dilations, causal=True)
        self.out_ln = nn.LayerNorm(c.dim) if c.final_norm else nn.Identity()
        self.out = None if c.tie_weights else nn.Linear(c.dim, c.num_items, bias=False)  # softmax layer
        self.out_bias = nn.Parameter(torch.zeros(c.num_items))  # (N,) bias of items 1..N
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.config.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding):
            with torch.no_grad():
                m.weight[0].zero_()

    # ---- gap filling -----------------------------------------------------------------------------
    def gap_inputs(self, items: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) left-padded items, (B, L) bool chosen -> encoder input x~ and decoder input x^ (B, L)."""
        gap = torch.full_like(items, self.config.gap_token)
        enc_in = torch.where(chosen, gap, items)  # chosen items hidden from the encoder
        dec_in = torch.where(chosen | (items == 0), items, gap)  # only chosen items reach the decoder
        return enc_in, dec_in

    def decode(self, enc_in: torch.Tensor, dec_in: torch.Tensor) -> torch.Tensor:
        """Encoder + projector + decoder -> (B, L, d); position t predicts the item at t + 1."""
        keep = (enc_in != 0).unsqueeze(-1).to(self.tok_emb.weight.dtype)  # (B, L, 1)
        enc = self.encoder(self.drop(self.tok_emb(enc_in)), keep)  # (B, L, d)
        z = self.projector(enc, self.drop(self.tok_emb(dec_in)))  # (B, L, d)
        return self.out_ln(self.decoder(z, keep))

    def output_table(self) -> torch.Tensor:
        """(N, d) output embeddings of items 1..N."""
        return self.tok_emb.weight[1 : self.config.num_items + 1] if self.out is None else self.out.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., d) decoder states -> (..., N) scores of items 1..N."""
        return hidden @ self.output_table().T + self.out_bias

    def next_hidden(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded history -> (B, d): the decoder state that predicts a [GAP] appended after it."""
        h = history[:, -(self.config.max_len - 1) :]  # (B, <= max_len - 1)
        items = torch.cat([h, torch.full_like(h[:, :1], self.config.gap_token)], dim=1)  # (B, L')
        chosen = items == self.config.gap_token  # only the gap is chosen; the encoder sees the whole history
        return self.decode(*self.gap_inputs(items, chosen))[:, -2]

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded history -> (B, N) next-item logits."""
        return self.logits(self.next_hidden(history))

    # ---- servable contract -----------------------------------------------------------------------
    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) left-padded history -> (B, d + 1) query ``[h, 1]``."""
        q = self.next_hidden(history)
        return torch.cat([q, torch.ones_like(q[:, :1])], dim=1)

    def item_vectors(self) -> torch.Tensor:
        """(N, d + 1) ``[W | b]``; row i = item id i + 1."""
        return torch.cat([self.output_table(), self.out_bias[:, None]], dim=1)

    def scores(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) next-item logits (``forward``: the decoder state, then ``logits``)."""
        return self.forward(history)

    def extra_repr(self) -> str:
        c = self.config
        return (f"items={c.num_items}, d={c.dim}, enc={c.enc_dilations}, dec={c.dec_dilations}, "
                f"max_len={c.max_len}")


__all__ = ["PRESETS", "GRec", "GRecConfig"]
