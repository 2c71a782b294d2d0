"""SSI's three consistency tasks for BERT4Rec teachers: augmentation + head + loss, each testable alone.

Yang et al., "Improving Sequential Recommendation Consistency with Self-Supervised Imitation",
IJCAI 2021. Each teacher minimises ``L = L_MLM + lambda * L_task`` (eq. 4); this file
holds ``L_task`` for the three tasks:

- Temporal consistency (``TemporalConsistency``): is the order of the sequence the user's own? The
  negative exchanges the order of some n-gram sub-sequences chosen by Bernoulli draws; [INT] is
  appended and an MLP on its hidden state does a binary cross-entropy.
- Persona consistency (``PersonaConsistency``): are all items the user's own? The negative replaces
  some n-grams with n-grams taken from other users' (training) sequences; [INT], MLP, BCE.
- Global session consistency (``GlobalSessionConsistency``, S3-Rec's segment prediction with
  in-batch InfoNCE, eq. 3): mask an n-gram of the sequence; the last hidden state of the masked
  sequence is the global view; the n-gram alone (positions kept, [MASK] at the user's other
  positions) is encoded the same way; InfoNCE pairs each global view with its own n-gram against the
  other n-grams of the batch.

The paper leaves the n-gram lengths, probabilities, MLP size and temperature open. The choices
(``ConsistencyConfig``; every one is a field) and why:

- n-grams of 1-3 items for temporal and persona (``*_ngram_min/max``), and 1-5 items for the
  global segment, always capped at half the user's sequence. Amazon training sequences are short
  (Beauty and Toys: median 4, mean 6.9 training items), so longer n-grams would make a negative
  mostly foreign or a single block swap, and segments longer than half the sequence leave too little context to
  predict from (S3-Rec samples segment lengths in ``[1, len // 2]``, so this is its rule with a cap).
- Bernoulli probability 0.3 per n-gram (``temporal_prob``, ``persona_prob``): on a typical
  sequence that perturbs one or two n-grams, a *local* inconsistency that the encoder has to look
  at items to detect rather than a sequence that is obviously someone else's. Temporal negatives
  always exchange at least two n-grams (a random cyclic permutation of the selected ones, so each
  moves) and persona negatives replace at least one; a "negative" that equals its original (e.g.
  swapped n-grams with the same items) is labelled positive, so no label is ever wrong.
- Half of the classified sequences are negatives (``neg_prob=0.5``): balanced BCE.
- MLP: Linear(d, d) -> GELU -> dropout 0.1 -> Linear(d, 1) (``mlp_hidden=None`` means d): the
  smallest non-linear probe; the encoder, not the head, should learn the task.
- InfoNCE on cosine similarities with temperature 0.2 (``temperature``), after a learned linear
  map of the global view (S3-Rec's segment-prediction bilinear form): cosine keeps the logits in
  [-5, 5], and 0.2 sits in the range that works for contrastive learning with ~100 in-batch
  negatives (SimCLR/MoCo use 0.07-0.5).
- Cost (``task_rows``): the task's extra encoder pass has as many rows as the cloze batch (binary
  tasks: B sequences, half of them negatives; global: B/2 pairs = B rows). Two full extra passes
  (positive + negative, or a pair per user) would make an epoch ~1.8x slower than plain cloze
  (estimated from the measured ~1.4x of one pass); one pass keeps it under the 1.5x budget while
  every batch still trains the task.

- Task accuracy (issue 26): every ``forward`` returns ``acc`` (binary: the head's sign against the label;
  global: top-1 of each global view among the B segments of its batch) and ``chance`` (binary: the
  majority-label share; global: 1/B); ``epoch_chance`` gives the chance over all training rows since the last
  call. ``views`` builds the task inputs of every row (``make_batch`` picks ``task_rows`` rows first), which
  is what the teachers' fixed held-out batch and ``training.task_probe`` use.
- Schedule (``task_first_epochs``, default 0 = the paper's joint loss): the first N epochs minimise the task
  loss alone (S3-Rec pre-trains its self-supervised tasks before fine-tuning), then ``main + weight * task``.

Augmentations are vectorised torch ops on CPU int tensors (run on the batch side, seeded by a
``torch.Generator``). Inputs are left-padded token matrices (0 = padding, most recent item last,
no padding between items). n-grams are counted from the most recent item, so the oldest, partial
n-gram of a sequence is never touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("temporal", "persona", "global")


@dataclass
class ConsistencyConfig:
    weight: float = 1.0  # lambda_i of eq. 4
    task_rows: float = 1.0  # rows of the task's encoder pass per cloze row
    neg_prob: float = 0.5  # temporal/persona: share of classified sequences that are negatives
    mlp_hidden: int | None = None  # temporal/persona head width; None = model dim
    mlp_dropout: float = 0.1
    temporal_ngram_min: int = 1
    temporal_ngram_max: int = 3
    temporal_prob: float = 0.3  # Bernoulli draw per n-gram: take part in the exchange
    persona_ngram_min: int = 1
    persona_ngram_max: int = 3
    persona_prob: float = 0.3  # Bernoulli draw per n-gram: replaced by another user's n-gram
    global_ngram_min: int = 1
    global_ngram_max: int = 5
    temperature: float = 0.2  # InfoNCE on cosine similarity
    task_first_epochs: int = 0  # schedule: the first N epochs minimise the task loss only, then main + weight * task
    heldout_users: int = 512  # size of the fixed held-out task batch (validation views), see training.teachers
    heldout_seed: int = 0  # seed of its users and augmentations (fixed across runs and epochs)

    def __post_init__(self) -> None:
        for lo, hi in ((self.temporal_ngram_min, self.temporal_ngram_max),
                       (self.persona_ngram_min, self.persona_ngram_max),
                       (self.global_ngram_min, self.global_ngram_max)):
            if not 1 <= lo <= hi:
                raise ValueError(f"n-gram range [{lo}, {hi}] must satisfy 1 <= min <= max")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.task_first_epochs < 0 or self.heldout_users < 2:
            raise ValueError("task_first_epochs must be >= 0 and heldout_users >= 2")


class Encoder(Protocol):
    """What the tasks need of BERT4Rec: hidden states (B, L, d) of left-padded tokens (B, L)."""

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...


# ---- augmentation helpers ------------------------------------------------------------------------
def _rand(shape: tuple[int, ...], gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=gen)


def _randint(low: torch.Tensor | int, high: torch.Tensor | int, shape: tuple[int, ...],
             gen: torch.Generator | None) -> torch.Tensor:
    """Uniform integers in [low, high) (tensors broadcast against ``shape``)."""
    return (low + (_rand(shape, gen) * (torch.as_tensor(high) - low)).floor()).long()


def _ngram_lengths(lengths: torch.Tensor, lo: int, hi: int, cap: torch.Tensor,
                   gen: torch.Generator | None) -> torch.Tensor:
    """(B,) n drawn uniformly from [lo, hi], then capped at ``cap`` (>= 1)."""
    n = _randint(lo, hi + 1, tuple(lengths.shape), gen)
    return torch.minimum(n, cap.clamp(min=1))


def _block_coords(tokens: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block index and offset of every column, counted from the most recent item: (B, L) each."""
    b, length = tokens.shape
    r = (length - 1 - torch.arange(length)).expand(b, length)  # (B, L) distance from the right end
    return r // n[:, None], r % n[:, None]


def _force(sel: torch.Tensor, valid: torch.Tensor, need: torch.Tensor, k: int,
           gen: torch.Generator | None) -> torch.Tensor:
    """Where ``need``, add ``k`` random valid blocks to the selection ``sel`` (B, K)."""
    keys = torch.where(valid, _rand(tuple(valid.shape), gen), -1.0)
    top = keys.topk(k, dim=1).indices  # (B, k)
    extra = torch.zeros_like(sel).scatter_(1, top, True) & valid & need[:, None]
    return sel | extra


def temporal_negatives(tokens: torch.Tensor, cfg: ConsistencyConfig,
                       gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchange the order of Bernoulli-chosen n-grams: (B, L) -> (negatives (B, L), changed (B,) bool).

    Each row draws n, splits its items into whole n-grams from the most recent one, selects each with
    probability ``temporal_prob`` (at least two where the row has two) and moves every selected n-gram
    into the slot of the next one in a random cycle. A row is a permutation of its original;
    ``changed`` is False where it equals it (too short, or exchanged n-grams with equal items).
    """
    b, length = tokens.shape
    lengths = (tokens != 0).sum(1)  # (B,)
    n = _ngram_lengths(lengths, cfg.temporal_ngram_min, cfg.temporal_ngram_max, lengths // 2, gen)  # (B,)
    n_blocks = lengths // n  # (B,) whole n-grams
    k_idx = torch.arange(length)  # block ids 0..L-1 (an upper bound on the count)
    valid = k_idx[None] < n_blocks[:, None]  # (B, K)
    sel = (_rand((b, length), gen) < cfg.temporal_prob) & valid
    sel = _force(sel, valid, (sel.sum(1) < 2) & (n_blocks >= 2), 2, gen)
    # random cycle over the selected blocks: the i-th in a random order takes the (i+1)-th's items
    order = torch.where(sel, _rand((b, length), gen), 2.0).argsort(dim=1)  # (B, K) selected first
    cnt = sel.sum(1, keepdim=True)  # (B, 1)
    nxt = torch.where(k_idx[None] + 1 < cnt, k_idx[None] + 1, 0)  # (B, K)
    in_cycle = k_idx[None] < cnt
    src = torch.empty_like(order).scatter_(1, order, torch.where(in_cycle, order.gather(1, nxt), order))
    block, off = _block_coords(tokens, n)  # (B, L)
    inside = block < n_blocks[:, None]
    src_r = src.gather(1, block.clamp(max=length - 1)) * n[:, None] + off  # (B, L)
    neg = torch.where(inside, tokens.gather(1, (length - 1 - src_r).clamp(min=0)), tokens)
    return neg, (neg != tokens).any(1)


@dataclass
class SequencePool:
    """Every user's training items, flat, for drawing other users' n-grams."""

    items: torch.Tensor  # (T,) int64, user u's items at offsets[u] : offsets[u] + lengths[u]
    offsets: torch.Tensor  # (U,)
    lengths: torch.Tensor  # (U,)

    @classmethod
    def from_sequences(cls, seqs: list[torch.Tensor]) -> SequencePool:
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        offsets = torch.cumsum(lengths, 0) - lengths
        items = torch.cat([torch.as_tensor(s, dtype=torch.long) for s in seqs]) if seqs else torch.zeros(0, dtype=torch.long)
        return cls(items, offsets, lengths)

    def draw_donors(self, users: torch.Tensor, n: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """A random user other than ``users`` with at least ``n`` items, for each entry; -1 if none."""
        donors = torch.full_like(users, -1)
        for size in n.unique().tolist():
            eligible = (self.lengths >= size).nonzero().squeeze(1)  # (E,)
            at = n == size
            if len(eligible) == 0:
                continue
            pick = _randint(0, len(eligible), (int(at.sum()),), gen)
            cand = eligible[pick]
            clash = cand == users[at]  # self: move to the next eligible user
            cand = torch.where(clash, eligible[(pick + 1) % len(eligible)], cand)
            donors[at] = torch.where(cand == users[at], -1, cand)
        return donors


def persona_negatives(tokens: torch.Tensor, users: torch.Tensor, pool: SequencePool, cfg: ConsistencyConfig,
                      gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace Bernoulli-chosen n-grams with n-grams of other users: -> (negatives (B, L), changed (B,)).

    ``users`` (B,) are the rows' indices in ``pool``; every replaced n-gram is a contiguous n-gram of a
    different user's training sequence, drawn per n-gram.
    """
    b, length = tokens.shape
    lengths = (tokens != 0).sum(1)  # (B,)
    n = _ngram_lengths(lengths, cfg.persona_ngram_min, cfg.persona_ngram_max, lengths // 2, gen)  # (B,)
    n_blocks = lengths // n
    valid = torch.arange(length)[None] < n_blocks[:, None]  # (B, K)
    sel = (_rand((b, length), gen) < cfg.persona_prob) & valid
    sel = _force(sel, valid, (sel.sum(1) < 1) & (n_blocks >= 1), 1, gen)
    donors = pool.draw_donors(users[:, None].expand(b, length), n[:, None].expand(b, length), gen)  # (B, K)
    sel &= donors >= 0
    d_len = pool.lengths[donors.clamp(min=0)]  # (B, K)
    start = pool.offsets[donors.clamp(min=0)] + _randint(0, d_len - n[:, None] + 1, (b, length), gen)  # (B, K)
    block, off = _block_coords(tokens, n)  # (B, L)
    blk = block.clamp(max=length - 1)
    replace = (block < n_blocks[:, None]) & sel.gather(1, blk)  # (B, L)
    # offset o from the right inside an n-gram takes the donor's item n-1-o (chronological order kept)
    src = start.gather(1, blk) + (n[:, None] - 1 - off)
    neg = torch.where(replace, pool.items[src.clamp(0, max(len(pool.items) - 1, 0))], tokens)
    return neg, (neg != tokens).any(1)


def segment_views(tokens: torch.Tensor, mask_token: int, cfg: ConsistencyConfig,
                  gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-session views of (B, L): (sequence with an n-gram masked, the n-gram alone), both (B, L).

    The n-gram has 1..``global_ngram_max`` items (at most half the sequence) at a uniform position;
    the second view keeps its positions and puts [MASK] at the user's other items (padding stays).
    """
    b, length = tokens.shape
    lengths = (tokens != 0).sum(1)  # (B,)
    n = _ngram_lengths(lengths, cfg.global_ngram_min, cfg.global_ngram_max, lengths // 2, gen)  # (B,)
    r0 = _randint(0, (lengths - n + 1).clamp(min=1), (b,), gen)  # (B,) start, counted from the right
    r = (length - 1 - torch.arange(length))[None]  # (1, L)
    seg = (r >= r0[:, None]) & (r < (r0 + n)[:, None]) & (tokens != 0)  # (B, L)
    masked = torch.where(seg, mask_token, tokens)
    alone = torch.where((tokens != 0) & ~seg, mask_token, tokens)
    return masked, alone


def append_token(tokens: torch.Tensor, token: int, max_len: int) -> torch.Tensor:
    """(B, L) -> (B, min(L, max_len - 1) + 1): the last ``max_len - 1`` columns, then ``token``."""
    t = tokens[:, -(max_len - 1):]
    return torch.cat([t, torch.full((t.shape[0], 1), token, dtype=t.dtype)], dim=1)


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 3: mean over i of -log softmax_j(cos(a_i, p_j) / t)[i]; (B, d), (B, d) -> scalar."""
    sim = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T / temperature  # (B, B)
    return F.cross_entropy(sim, torch.arange(len(sim), device=sim.device))


def _pick_rows(b: int, share: float, gen: torch.Generator | None) -> torch.Tensor:
    k = min(b, max(1, round(share * b)))
    return torch.randperm(b, generator=gen)[:k]


# ---- tasks ---------------------------------------------------------------------------------------
class BinaryConsistency(nn.Module):
    """Shared by temporal and persona: [INT] appended, MLP on its hidden state, BCE (1 = consistent)."""

    name = "binary"

    def __init__(self, dim: int, cfg: ConsistencyConfig, int_token: int, max_len: int):
        super().__init__()
        self.cfg, self.int_token, self.max_len = cfg, int_token, max_len
        hidden = cfg.mlp_hidden or dim
        self._seen = [0.0, 0.0]  # training rows and positives since the last ``epoch_chance``
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(cfg.mlp_dropout), nn.Linear(hidden, 1))

    def negatives(self, tokens: torch.Tensor, users: torch.Tensor,
                  gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def make_batch(self, tokens: torch.Tensor, users: torch.Tensor,
                   gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Task inputs from clean (B, L) sequences: ``task_input`` (B', L'+1) ending in [INT], ``task_label`` (B',)."""
        rows = _pick_rows(len(tokens), self.cfg.task_rows, gen)
        return self.views(tokens[rows], users[rows], gen)

    def views(self, x: torch.Tensor, u: torch.Tensor, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Task inputs of every row of (B, L) ``x`` (users ``u`` (B,)): what ``make_batch`` does after picking rows."""
        neg, changed = self.negatives(x, u, gen)
        is_neg = changed & (_rand((len(x),), gen) < self.cfg.neg_prob)  # (B',)
        x = torch.where(is_neg[:, None], neg, x)
        return {"task_input": append_token(x, self.int_token, self.max_len), "task_label": (~is_neg).float()}

    def forward(self, encoder: Encoder, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = encoder(batch["task_input"])[:, -1]  # (B', d) hidden state of [INT]
        logit = self.head(h).squeeze(1)  # (B',)
        label = batch["task_label"]
        loss = F.binary_cross_entropy_with_logits(logit.float(), label)
        acc = ((logit > 0).float() == label).float().mean()
        share = label.mean()  # positives; above 0.5 where a drawn negative equalled its original
        if self.training:
            self._seen = [self._seen[0] + len(label), self._seen[1] + float(label.sum())]
        return {"loss": loss, "acc": acc.detach(), "chance": torch.maximum(share, 1 - share)}

    def epoch_chance(self) -> float:
        """Chance of the training batches since the last call: the accuracy of the best constant answer over
        all their rows, max(p, 1 - p) with p the positive share (not per batch: a small batch's majority
        would overstate it). Resets the count."""
        rows, pos = self._seen
        self._seen = [0.0, 0.0]
        return max(pos, rows - pos) / rows if rows else float("nan")


class TemporalConsistency(BinaryConsistency):
    name = "temporal"

    def negatives(self, tokens: torch.Tensor, users: torch.Tensor,
                  gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        return temporal_negatives(tokens, self.cfg, gen)


class PersonaConsistency(BinaryConsistency):
    name = "persona"

    def __init__(self, dim: int, cfg: ConsistencyConfig, int_token: int, max_len: int, pool: SequencePool):
        super().__init__(dim, cfg, int_token, max_len)
        self.pool = pool  # data, not state: kept out of state_dict

    def negatives(self, tokens: torch.Tensor, users: torch.Tensor,
                  gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        return persona_negatives(tokens, users, self.pool, self.cfg, gen)


class GlobalSessionConsistency(nn.Module):
    """Segment prediction with in-batch InfoNCE: global view (masked sequence) vs the n-gram alone."""

    name = "global"

    def __init__(self, dim: int, cfg: ConsistencyConfig, mask_token: int):
        super().__init__()
        self.cfg, self.mask_token = cfg, mask_token
        self.proj = nn.Linear(dim, dim, bias=False)  # global view -> segment space
        self._seen = [0.0, 0.0]  # training batches and sum of their 1/B since the last ``epoch_chance``

    def make_batch(self, tokens: torch.Tensor, users: torch.Tensor,
                   gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``global_masked`` and ``global_segment`` (B'', L) with B'' = task_rows * B / 2 pairs."""
        rows = _pick_rows(len(tokens), self.cfg.task_rows / 2, gen)
        return self.views(tokens[rows], users[rows], gen)

    def views(self, x: torch.Tensor, u: torch.Tensor, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The pair of views of every row of (B, L) ``x`` (``u`` unused: the other rows are the negatives)."""
        masked, alone = segment_views(x, self.mask_token, self.cfg, gen)
        return {"global_masked": masked, "global_segment": alone}

    def forward(self, encoder: Encoder, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pair = torch.cat([batch["global_masked"], batch["global_segment"]])  # (2B'', L) one encoder pass
        h = encoder(pair)[:, -1]  # (2B'', d) last hidden states
        g, s = h.chunk(2)
        g = self.proj(g)
        loss = info_nce(g.float(), s.float(), self.cfg.temperature)
        with torch.no_grad():  # share of global views whose own n-gram is the most similar
            sim = F.normalize(g, dim=-1) @ F.normalize(s, dim=-1).T  # (B'', B'')
            acc = (sim.argmax(1) == torch.arange(len(g), device=g.device)).float().mean()
        if self.training:
            self._seen = [self._seen[0] + 1, self._seen[1] + 1.0 / len(g)]
        return {"loss": loss, "acc": acc, "chance": torch.tensor(1.0 / len(g), device=g.device)}

    def epoch_chance(self) -> float:
        """Mean 1/B over the training batches since the last call (accuracy is a mean over batches too)."""
        n, inv = self._seen
        self._seen = [0.0, 0.0]
        return inv / n if n else float("nan")


def build_consistency(variant: str, dim: int, cfg: ConsistencyConfig, mask_token: int, int_token: int,
                      max_len: int, pool: SequencePool | None = None) -> nn.Module:
    """The task module of a teacher variant ("temporal", "persona", "global")."""
    if variant == "temporal":
        return TemporalConsistency(dim, cfg, int_token, max_len)
    if variant == "persona":
        if pool is None:
            raise ValueError("the persona task needs a SequencePool of the users' training sequences")
        return PersonaConsistency(dim, cfg, int_token, max_len, pool)
    if variant == "global":
        return GlobalSessionConsistency(dim, cfg, mask_token)
    raise ValueError(f"unknown consistency task {variant!r}; expected one of {', '.join(VARIANTS)}")
