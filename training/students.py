"""Students (HGN, GRU4Rec, SASRec-CE) trained alone or with self-supervised imitation of SSI teachers.

Objective (SSI eq. 5-8) for teachers ``i`` (0 to 3 of them)::

    L' = L_s + sum_i lambda_i (KL_i + MSE_i) + sum_i 1/lambda_i + (sum_i 1/lambda_i)^2

- ``L_s``: the student's own loss: BPR with sampled negatives (HGN's paper default) or cross-entropy
  over all items (GRU4Rec's default; an option for HGN).
- ``KL_i`` (prediction imitation): ``KL(p_teacher_i || p_student)`` over ALL items at temperature
  ``tau`` (times ``tau^2``, Hinton's scaling; the paper gives no temperature, default 1). The teacher's
  distribution for a training example is the teacher run on the same history with [MASK] appended,
  i.e. ``teacher.encode(history) @ teacher.item_vectors().T``. "The same history" is the user's full
  training prefix before the example's first target (the last ``max_len`` items), which for HGN is
  more than the student's L-item window.
- ``MSE_i`` (item-representation imitation): mean squared error between the teacher's item table
  (``item_vectors()[:, :-1]``: the item embeddings, bias column dropped) and the student's OUTPUT item
  table (HGN ``W2``, GRU4Rec's tied table), the student side through a learned linear projection
  ``d_student -> d_teacher`` when the sizes differ. Projecting the student (not the frozen teacher)
  keeps the target fixed, so the projection cannot shrink the term by collapsing.
- ``lambda_i = softplus(rho_i)`` (or ``exp``), initialised to 1, learned with everything else.

Teachers are frozen and kept out of the task's modules (so they are never put in training mode, never
optimised and never written into checkpoints). They are deterministic, so by default their query
vectors (B, d+1) for every training example are computed once, on the first epoch, and teacher logits
are one matmul per batch (``cache_teacher``); ``cache_teacher=False`` runs the teachers on every
batch. The time spent on the cache is logged in the history as ``teacher_cache_s``. With
``cache_probs`` the teachers' distributions themselves are precomputed once (float16 files shared
by runs with the same teachers and examples, ``training/teacher_cache.py``), so a batch's KL needs no
teacher matmul and no teacher softmax; run_all uses it for the ``cpu`` preset.

Training examples:
- HGN: windows of the last L items before ``T`` targets (``inputs = s[t-L:t]`` left-padded,
  ``targets = s[t:t+T]``) for every ``t`` in ``1..n-T`` (at least one window per user, with fewer
  targets when the sequence is short), plus the user id (row + 1).
- GRU4Rec: every prefix, scored in one pass per sequence: segments of ``max_len + 1`` items give
  inputs ``seg[:-1]`` and aligned targets ``seg[1:]``; sequences longer than that are cut into
  segments that overlap by one item, so every transition is a target exactly once.
- SASRec-CE: the ``sasrec_ce`` baseline's recipe (``STUDENT_RECIPES``): its trainer presets
  (``training.baselines.train_config``) and its examples (``RECENT_SEGMENTS``: each user's most recent
  ``max_len + 1`` items once an epoch, in the baseline's batches). Alone it is that baseline, bit for bit
  (``tests/students/test_sasrec_student.py``); distilled, that recipe plus the imitation terms. So the
  ``sasrec_ce`` row is a student trained alone, and ``sasrec_ce--sasrec_ce@0+sasrec_ce@1+sasrec_ce@2`` is
  SASRec-CE distilled from three of its own runs (born-again / ensemble distillation).
- SASRec-CE on every prefix (recipe ``sasrec_prefix``, row ``sasrec_ce_prefix``): the same model and trainer
  config, but the model's own examples and batches, GRU4Rec's (every segment of every user; length-sorted pools
  cut into batches of about ``batch_size x min(mean length, TARGETS_PER_SEQUENCE)`` targets): the SASRec
  consistency teachers' recipe without their task (``training.teachers.NextItemTeacherTask``). The teachers'
  examples and batches, not their task, made them ~20% stronger than ``sasrec_ce`` under the full ranking on
  Toys (cpu preset); this row measures that recipe alone, and can be distilled into and imitated like
  ``sasrec_ce`` (``tests/students/test_sasrec_prefix_student.py`` pins it to the teachers' recipe).

CLI::

    python -m training.students --student hgn --dataset beauty --preset cpu \\
        --teachers temporal=DIR persona=DIR global=DIR [--no-kl] [--no-mse] [--loss ce] [--seed 42] [--fresh]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import MODELS
from models.config import ModelConfig
from models.contracts import ExampleKind, PrefixStudent, Student, WindowStudent, student_problems
from protocol import (
    DataError,
    SequenceDataset,
    evaluate,
    load_dataset,
    load_or_create_negatives,
    pad_left,
    train_sequences,
)
from training.baselines import TrimmedScorer, user_batches
from training.baselines import train_config as baseline_train_config
from training.imitation import ImitationConfig
from training.io import atomic_write_json, read_json
from training.runs import RunError, is_finished, load_best, load_run_model
from training.scoring import ContractScorer
from training.teacher_cache import TeacherProbCache
from training.trainer import TrainConfig, TrainTask, fit, resolve_device

log = logging.getLogger("ssi.students")

StudentName = Literal["hgn", "gru4rec", "sasrec", "sasrec_prefix", "sasrec_prefix_wide"]  # STUDENT_RECIPES keys
LossName = Literal["bpr", "ce"]
Preset = Literal["smoke", "cpu", "paper"]


# ---- loss terms ---------------------------------------------------------------------------------
class LambdaWeights(nn.Module):
    """Learnable positive teacher weights ``lambda_i = floor + f(raw_i)``, f = softplus or exp, and their
    regulariser (SSI eq. 8). The small floor keeps ``1/lambda`` finite where f underflows in float32."""

    def __init__(self, names: list[str], init: float = 1.0, param: Literal["softplus", "exp"] = "softplus",
                 floor: float = 1e-4, learn: bool = True):
        super().__init__()
        if param not in ("softplus", "exp"):
            raise ValueError(f"unknown lambda parametrisation {param!r}; expected 'softplus' or 'exp'")
        self.names, self.param, self.floor, self.learn = list(names), param, floor, learn
        self.raw = nn.Parameter(self.inverse(torch.full((len(names),), float(init))), requires_grad=learn)

    def inverse(self, lam: torch.Tensor) -> torch.Tensor:
        """The raw values that give the weights ``lam`` (> floor)."""
        x = lam - self.floor
        return torch.log(torch.expm1(x)) if self.param == "softplus" else torch.log(x)

    def forward(self) -> torch.Tensor:
        """(K,) lambdas, > 0 for any raw value."""
        f = F.softplus(self.raw) if self.param == "softplus" else torch.exp(self.raw)
        return f + self.floor

    def regulariser(self) -> torch.Tensor:
        """``sum 1/lambda + (sum 1/lambda)^2``; keeps the weights from collapsing to 0 (0 when fixed)."""
        if not self.learn:
            return torch.zeros((), device=self.raw.device)
        inv = (1.0 / self()).sum()
        return inv + inv * inv

    def as_dict(self) -> dict[str, float]:
        return {f"lambda_{n}": float(v) for n, v in zip(self.names, self().detach().cpu().tolist())}


def kl_imitation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``tau^2 * mean_m KL(softmax(t_m / tau) || softmax(s_m / tau))`` over the last axis (items)."""
    return kl_from_log_probs(F.log_softmax(student_logits / temperature, dim=-1), teacher_logits, temperature)


def kl_from_log_probs(student_log_probs: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``kl_imitation`` with the student's log-softmax at ``temperature`` computed once for all teachers."""
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return F.kl_div(student_log_probs, log_p_t, log_target=True, reduction="batchmean") * temperature**2


def kl_rows(student_log_probs: torch.Tensor, probs: torch.Tensor, negent: torch.Tensor | None = None) -> torch.Tensor:
    """(M,) ``KL(p_m || q_m)`` from teacher probabilities ``p`` (M, N) and the student's log-probabilities
    (M, N); ``negent`` (M,) = ``sum_j p log p`` when known (cached), else computed."""
    if negent is None:
        negent = torch.xlogy(probs, probs).sum(dim=1)
    return negent - (probs * student_log_probs).sum(dim=1)


def top_k_kl_rows(student_log_probs: torch.Tensor, probs: torch.Tensor, k: int) -> torch.Tensor:
    """(M,) KL over the teacher's top ``k`` items, both distributions renormalised on them."""
    p, idx = probs.topk(min(k, probs.shape[1]), dim=1)  # (M, k)
    p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-30)
    return kl_rows(F.log_softmax(student_log_probs.gather(1, idx), dim=1), p)


def rank_distillation_rows(student_log_probs: torch.Tensor, probs: torch.Tensor, target: torch.Tensor, k: int,
                           decay: float) -> torch.Tensor:
    """(M,) ranking distillation (Tang & Wang, KDD 2018): ``-sum_r w_r log q(pi_r)`` over the teacher's top
    ``k`` items ``pi`` other than the true item ``target`` (M,), ``w_r`` proportional to ``exp(-r / decay)``
    and summing to 1 (r = 1 for the teacher's best remaining item)."""
    col = (target - 1).clamp_min(0)[:, None]  # (M, 1) column of the true item
    p = probs.scatter(1, col, -1.0)  # the true item is the student's own positive, not an extra one
    idx = p.topk(min(k, p.shape[1] - 1), dim=1).indices  # (M, k), teacher's order
    w = torch.exp(-torch.arange(1, idx.shape[1] + 1, device=probs.device, dtype=student_log_probs.dtype) / decay)
    return -(student_log_probs.gather(1, idx) * (w / w.sum())).sum(dim=1)


def teacher_ranks_higher(probs: torch.Tensor, student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(M,) bool: the teacher ranks item ``target`` (M,) strictly above where the student ranks it
    (rank = items scored higher; ties count against the target, as in the protocol)."""
    col = (target - 1).clamp_min(0)[:, None]  # (M, 1) column of the target
    t_rank = (probs >= probs.gather(1, col)).sum(dim=1)  # (M,) 1 = best
    s_rank = (student_logits.detach() >= student_logits.detach().gather(1, col)).sum(dim=1)
    return t_rank < s_rank


def mse_imitation(student_items: torch.Tensor, teacher_items: torch.Tensor, projection: nn.Module) -> torch.Tensor:
    """Mean over items and dims of ``(P s_j - t_j)^2``; ``student_items`` (N, d_s), ``teacher_items`` (N, d_t)."""
    return F.mse_loss(projection(student_items), teacher_items.detach())


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean ``-log sigmoid(pos_t - neg_k)`` over the valid targets' pairs; pos/valid (M, T), neg (M, K)."""
    pair = -F.logsigmoid(pos.unsqueeze(2) - neg.unsqueeze(1))  # (M, T, K)
    w = valid.to(pair.dtype).unsqueeze(2).expand_as(pair)
    return (pair * w).sum() / w.sum().clamp_min(1)


def ce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the valid (non-zero) targets; logits (M, N) over items 1..N, targets (M, T)."""
    logp = F.log_softmax(logits, dim=-1)  # (M, N)
    valid = targets > 0
    picked = logp.gather(1, (targets - 1).clamp_min(0))  # (M, T)
    return -(picked * valid).sum() / valid.sum().clamp_min(1)


def sample_negatives(targets: torch.Tensor, num_items: int, k: int) -> torch.Tensor:
    """(M, k) uniform item ids in 1..N, none equal to one of the row's targets (M, T).

    Collisions with the rest of the user's history are allowed (about length/N, i.e. < 0.1% here).
    """
    neg = torch.randint(1, num_items + 1, (targets.shape[0], k), device=targets.device)
    for _ in range(100):
        hit = (neg.unsqueeze(2) == targets.unsqueeze(1)).any(dim=2)  # (M, k)
        if not bool(hit.any()):
            break
        neg = torch.where(hit, torch.randint_like(neg, 1, num_items + 1), neg)
    return neg


# ---- training examples --------------------------------------------------------------------------
@dataclass
class Examples:
    """A student's training examples as padded arrays, plus the (user row, prefix length) of each target
    row for the teachers. ``example`` ids index ``teacher_users`` / ``teacher_prefix``; -1 on padding."""

    arrays: dict[str, np.ndarray]  # per-row arrays of the batches (first axis = row)
    teacher_users: np.ndarray  # (E,) user row of example e
    teacher_prefix: np.ndarray  # (E,) length of the history prefix of example e
    trim: bool  # left-padded sequence arrays whose all-padding columns can be dropped per batch
    user_lengths: np.ndarray | None = None  # (rows,) with one row per user: the length its batches sort by

    @property
    def rows(self) -> int:
        return len(next(iter(self.arrays.values())))

    def teacher_histories(self, seqs: list[np.ndarray], width: int) -> np.ndarray:
        """(E, width) left-padded teacher inputs: each example's prefix, most recent ``width`` items."""
        return pad_left([seqs[u][:p] for u, p in zip(self.teacher_users, self.teacher_prefix)], width)


def hgn_windows(seqs: list[np.ndarray], L: int, T: int) -> Examples:
    """HGN windows: ``inputs = s[t-L:t]`` (left-padded), ``targets = s[t:t+T]`` (0-padded), users = row + 1."""
    inputs, targets, users, prefix = [], [], [], []
    for row, s in enumerate(seqs):
        for t in range(1, max(1, len(s) - T) + 1):
            if t >= len(s):
                break
            inputs.append(s[max(0, t - L):t])
            targets.append(s[t:t + T])
            users.append(row)
            prefix.append(t)
    tg = np.zeros((len(targets), T), dtype=np.int64)
    for i, t in enumerate(targets):
        tg[i, :len(t)] = t
    u = np.asarray(users, dtype=np.int64)
    arrays = {"history": pad_left(inputs, L), "user": u + 1, "targets": tg, "example": np.arange(len(u))}
    return Examples(arrays, u, np.asarray(prefix, dtype=np.int64), trim=False)


def prefix_segments(seqs: list[np.ndarray], max_len: int, recent: bool = False) -> Examples:
    """Segments of up to ``max_len + 1`` items: inputs ``seg[:-1]`` and aligned targets ``seg[1:]``.

    ``recent``: only each user's most recent segment, one row per user in user order (a user with fewer than
    two items gets a row without targets): the examples of the ``sasrec_ce`` baseline
    (``training.baselines.NextItemTask``: each user's last ``max_len + 1`` items once an epoch)."""
    inputs, targets, ex_ids, users, prefix = [], [], [], [], []
    n_ex = 0
    for row, s in enumerate(seqs):
        end = len(s)
        if recent and end <= 1:
            inputs.append(s[:0])
            targets.append(s[:0])
            ex_ids.append(np.zeros(0, dtype=np.int64))
        while end > 1:
            start = max(0, end - (max_len + 1))
            seg = s[start:end]
            m = len(seg) - 1
            inputs.append(seg[:-1])
            targets.append(seg[1:])
            ex_ids.append(np.arange(n_ex, n_ex + m) + 1)  # +1 so that 0 marks padding in pad_left
            users += [row] * m
            prefix += list(range(start + 1, end))
            n_ex += m
            end = 1 if recent else start + 1
    arrays = {"history": pad_left(inputs, max_len), "targets": pad_left(targets, max_len),
              "example": pad_left(ex_ids, max_len) - 1}
    lengths = np.asarray([min(len(s), max_len + 1) for s in seqs], dtype=np.int64) if recent else None
    return Examples(arrays, np.asarray(users, dtype=np.int64), np.asarray(prefix, dtype=np.int64), trim=True,
                    user_lengths=lengths)


Queries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ExampleScheme:
    """How a student of one ``training_examples`` kind (``models.contracts.Student``) is trained: its
    examples from the training sequences, a batch's queries (M, D'), targets (M, T), example ids (M,), how
    examples are batched and how validation scores."""

    name: str  # recorded in the run's run.json
    kind: ExampleKind  # the student kind it trains (``Student.training_examples``)
    build: Callable[[Student, list[np.ndarray]], Examples]
    queries: Callable[[Student, dict[str, torch.Tensor]], Queries]
    # one row per user, batched as training.baselines.SequenceTask (batch_size users from length-sorted pools);
    # otherwise fixed batches of windows, or prefix segments cut by a target budget (StudentTask)
    per_user: bool = False
    scorer: Callable[[nn.Module, torch.device], ContractScorer] = ContractScorer


def _window_examples(model: WindowStudent, seqs: list[np.ndarray]) -> Examples:
    return hgn_windows(seqs, model.config.max_len, model.config.targets)


def _window_queries(model: WindowStudent, batch: dict[str, torch.Tensor]) -> Queries:
    return model.encode(batch["history"], batch["user"]), batch["targets"], batch["example"]


def _prefix_examples(model: PrefixStudent, seqs: list[np.ndarray]) -> Examples:
    return prefix_segments(seqs, model.config.max_len)


def _recent_examples(model: PrefixStudent, seqs: list[np.ndarray]) -> Examples:
    return prefix_segments(seqs, model.config.max_len, recent=True)


def _prefix_queries(model: PrefixStudent, batch: dict[str, torch.Tensor]) -> Queries:
    out = model.sequence_output(batch["history"])  # (B, L, d)
    mask = batch["targets"] > 0
    return out[mask], batch["targets"][mask].unsqueeze(1), batch["example"][mask]


# ``Student.training_examples`` -> scheme: the only place that tells the two kinds of students apart.
EXAMPLE_SCHEMES: dict[str, ExampleScheme] = {
    "windows": ExampleScheme("windows", "windows", _window_examples, _window_queries),  # HGN: L-item windows
    "prefixes": ExampleScheme("prefixes", "prefixes", _prefix_examples, _prefix_queries),  # GRU4Rec: every prefix
}
# The sasrec_ce baseline's examples (training.baselines.NextItemTask, SequenceTask): each user's most recent
# max_len + 1 items once an epoch, every position predicting the next item, batch_size users per batch from
# length-sorted pools, validated by TrimmedScorer. A recipe picks it (STUDENT_RECIPES), not the model.
RECENT_SEGMENTS = ExampleScheme("recent_segments", "prefixes", _recent_examples, _prefix_queries, per_user=True,
                                scorer=TrimmedScorer)


def example_scheme(model: nn.Module, scheme: ExampleScheme | None = None) -> ExampleScheme:
    """``scheme``, else the scheme of ``model.training_examples``; ``TypeError`` naming what is missing for a
    non-student, or a scheme made for the other kind of student."""
    problems = student_problems(model)
    if problems:
        raise TypeError(f"{type(model).__name__} does not meet the student contract (models.contracts): "
                        f"{', '.join(problems)}")
    if scheme is not None and scheme.kind != model.training_examples:
        raise TypeError(f"examples {scheme.name!r} train {scheme.kind!r} students; {type(model).__name__} "
                        f"learns from {model.training_examples!r}")
    return scheme or EXAMPLE_SCHEMES[model.training_examples]


def corrupt_sequences(seqs: list[np.ndarray], rate: float, num_items: int,
                      generator: torch.Generator | None = None) -> tuple[list[np.ndarray], float]:
    """Each item swapped for a uniform random item in ``1..num_items`` with probability ``rate`` (the draw of
    ``ImitationConfig.augment``); returns the sequences and the share of positions drawn for a swap."""
    flat = torch.from_numpy(np.concatenate(seqs))
    swap = torch.rand(len(flat), generator=generator) < rate
    noisy = torch.where(swap, torch.randint(1, num_items + 1, flat.shape, generator=generator), flat).numpy()
    return np.split(noisy, np.cumsum([len(s) for s in seqs])[:-1]), float(swap.float().mean())


def build_examples(model: nn.Module, ds: SequenceDataset) -> Examples:
    return example_scheme(model).build(model, train_sequences(ds))


# ---- teachers -----------------------------------------------------------------------------------
class FrozenTeacher:
    """A teacher run used through its servable contract only: logits = encode(history) @ item_vectors().T."""

    def __init__(self, name: str, model: nn.Module, info: dict[str, Any]):
        self.name, self.model, self.info = name, model.eval(), info
        for p in self.model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.items = self.model.item_vectors().detach().float()  # (N, D_t'), scoring table (bias folded in)
            self.table = self.model.output_items().detach().float()  # (N, D_t), imitated by the MSE term
        self.cache: torch.Tensor | None = None  # (E, D_t + 1) queries of every training example
        self.probs: TeacherProbCache | None = None  # (E, N) distributions, with ImitationConfig.cache_probs

    @classmethod
    def load(cls, name: str, run_dir: Path, ds: SequenceDataset) -> FrozenTeacher:
        model, info = load_run_model(run_dir)
        if info.get("data_sha256") not in (None, ds.sha256):
            raise RunError(f"teacher {name!r} ({run_dir}) was trained on other data "
                           f"(sha256 {info['data_sha256'][:12]}, this dataset {ds.sha256[:12]})")
        n = model.item_vectors().shape[0]
        if n != ds.num_items:
            raise RunError(f"teacher {name!r} ({run_dir}) has {n} items, dataset {ds.name} has {ds.num_items}")
        return cls(name, model, info)

    def to(self, device: torch.device) -> FrozenTeacher:
        self.model.to(device)
        with torch.no_grad():
            self.items = self.model.item_vectors().detach().float()
            self.table = self.model.output_items().detach().float()
        if self.cache is not None:
            self.cache = self.cache.to(device)
        return self

    @torch.no_grad()
    def encode(self, histories: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(E, W) left-padded -> (E, D_t + 1) queries. Histories are grouped by length and each batch is
        cut to its longest history: padding width does not change a variable-length encoder's query (the
        contract test checks it), and most histories are far shorter than W (Beauty: ~7 of 50)."""
        self.model.eval()
        if self.model.fixed_length:
            return torch.cat([self.model.encode(histories[i:i + batch_size]).float()
                              for i in range(0, len(histories), batch_size)])
        lengths = (histories > 0).sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        out: torch.Tensor | None = None
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            width = max(1, int(lengths[idx].max()))
            q = self.model.encode(histories[idx, -width:]).float()
            if out is None:
                out = torch.empty(len(histories), q.shape[1], device=q.device)
            out[idx] = q
        return out

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def item_table(self) -> torch.Tensor:
        return self.table  # (N, D_t): the teacher's output item table (no bias column)


# ---- the task -----------------------------------------------------------------------------------
# Cap of the mean targets per sequence in a prefix batch's target budget. Beauty and Toys (mean 5-7 training
# targets per sequence) are below it and unchanged; on LastFM (mean ~48) batches of 128 whole sequences
# were 9 steps an epoch, and a GRU stopped early near popularity (LastFM test N@10 .160 vs MostPop .158).
TARGETS_PER_SEQUENCE = 8.0


class StudentTask(TrainTask):
    """A student's own loss plus imitation of any number of frozen teachers (SSI eq. 5-8)."""

    def __init__(self, model: nn.Module, ds: SequenceDataset, teachers: dict[str, FrozenTeacher],
                 imitation: ImitationConfig, loss: LossName, batch_size: int, teacher_width: int = 50,
                 bucket_pool: int = 50, scheme: ExampleScheme | None = None):
        super().__init__()
        if loss not in ("bpr", "ce"):
            raise ValueError(f"unknown student loss {loss!r}; expected 'bpr' or 'ce'")
        self.model = model
        self.loss_name = loss
        self.imitation = imitation
        self.batch_size = batch_size
        self.bucket_pool = bucket_pool  # batches per length-sorted pool (sequence examples only); 0 = off
        self.num_items = ds.num_items
        self.scheme = example_scheme(model, scheme)  # None: the model's own kind of examples
        self.examples = self.scheme.build(model, train_sequences(ds))
        self.teachers = dict(teachers) if imitation.active else {}  # plain dict: not submodules
        names = ["mean"] if imitation.target == "mean" and self.teachers else list(self.teachers)
        self.lambdas = LambdaWeights(names, imitation.lambda_init, imitation.lambda_param, learn=imitation.learn_lambda)
        d_s = int(model.output_items().shape[1])
        self.projections = nn.ModuleDict({  # student output table (N, d_s) -> teacher space (N, d_t)
            n: nn.Linear(d_s, t.dim, bias=False) if imitation.always_project or d_s != t.dim else nn.Identity()
            for n, t in self.teachers.items()})
        self._train_seqs = train_sequences(ds)
        self._teacher_width = teacher_width
        self._teacher_hist = (torch.from_numpy(self.examples.teacher_histories(self._train_seqs, teacher_width))
                              if self.teachers else None)  # (E, W); kept on CPU
        self._aug_history: np.ndarray | None = None  # (rows, L) the corrupted student inputs of this epoch
        self._lengths = ((self.examples.arrays["history"] > 0).sum(axis=1) if self.examples.trim else None)
        # targets per batch: batch_size sequences of the mean length, at most TARGETS_PER_SEQUENCE each, so that
        # long-sequence data (LastFM, mean ~48) gets as many optimiser steps per epoch as Beauty (mean ~7)
        self._budget = (max(1, round(batch_size * min(float(self._lengths.mean()), TARGETS_PER_SEQUENCE)))
                        if self._lengths is not None else 0)
        self._device: torch.device | None = None
        self.teacher_cache_s: float | None = None
        self._log_extra: dict[str, float] = {}

    # ---- data -----------------------------------------------------------------------------------
    # HGN windows: fixed batches of ``batch_size`` windows. Sequence examples (GRU4Rec): each pool of
    # ``bucket_pool`` batches is sorted by length and cut into batches of about ``batch_size`` x (mean
    # length) targets, each cut to its longest sequence. A random batch of 128 Beauty sequences is 50
    # wide for ~7 items on average; the recurrent pass pays for the width, the softmax for the targets.
    def num_batches(self, world: int) -> int:
        """Exact for windows and per-user rows; for sequence examples the expected count (the cut depends on
        the shuffle)."""
        if self.scheme.per_user:
            return math.ceil((self.examples.rows // world) / self.batch_size)
        if self._lengths is None or self.bucket_pool <= 0:
            per_rank = self.examples.rows // world if world > 1 else self.examples.rows
            return math.ceil(per_rank / self.batch_size)
        return max(1, math.ceil(self._lengths.sum() / self._budget) // world)

    def batches(self, epoch: int, rng: np.random.Generator, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
        for idx in self._batch_indices(rng, rank, world):
            batch = {k: v[idx] for k, v in self.examples.arrays.items()}
            if self._aug_history is not None:
                batch["aug_history"] = self._aug_history[idx]
            if self._lengths is not None:
                width = max(1, int(self._lengths[idx].max()))
                batch = {k: (v[:, -width:] if v.ndim == 2 else v) for k, v in batch.items()}
            yield {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}

    def _batch_indices(self, rng: np.random.Generator, rank: int, world: int) -> list[np.ndarray]:
        if self.scheme.per_user:  # the sasrec_ce baseline's batches, drawn from the same rng the same way
            return user_batches(rng, self.examples.user_lengths, self.batch_size, rank, world)
        n = self.examples.rows
        order = rng.permutation(n)
        if self._lengths is None or self.bucket_pool <= 0:
            if world > 1:
                order = order[rank::world][: n // world]  # equal batch counts on every rank
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches = self._length_batches(order)  # the same on every rank (same rng)
        batches = [batches[i] for i in rng.permutation(len(batches))]
        if world > 1:
            batches = batches[rank::world][: len(batches) // world]
        return batches

    def _length_batches(self, order: np.ndarray) -> list[np.ndarray]:
        pool = self.batch_size * self.bucket_pool
        out: list[np.ndarray] = []
        for i in range(0, len(order), pool):
            chunk = order[i:i + pool]
            chunk = chunk[np.argsort(self._lengths[chunk], kind="stable")]
            cum = np.cumsum(self._lengths[chunk])
            cuts = np.searchsorted(cum, np.arange(self._budget, cum[-1], self._budget), side="right")
            out += [b for b in np.split(chunk, np.unique(cuts)) if len(b)]
        return out

    # ---- teachers -------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        device = next(self.model.parameters()).device
        if self._device != device:
            for t in self.teachers.values():
                t.to(device)
            self._device = device
        if self.imitation.augment and self.teachers:
            self._corrupt_for_epoch()
        if self.imitation.cache_teacher and self.teachers and any(t.cache is None for t in self.teachers.values()):
            t0 = time.time()
            hist = self._teacher_hist.to(device)
            for t in self.teachers.values():
                t.cache = t.encode(hist)
            self.teacher_cache_s = time.time() - t0
            self._log_extra["teacher_cache_s"] = round(self.teacher_cache_s, 2)
            log.info("teacher queries cached for %d examples x %d teachers in %.1fs", len(hist),
                     len(self.teachers), self.teacher_cache_s)
        if self.imitation.cache_probs and self.imitation.use_kl and any(t.probs is None for t in self.teachers.values()):
            t0 = time.time()
            for t in self.teachers.values():
                t.probs = TeacherProbCache.build(t.cache, t.items, self.imitation.temperature)
            self._log_extra["teacher_probs_s"] = round(time.time() - t0, 2)

    def _corrupt_for_epoch(self) -> None:
        """``ImitationConfig.augment``: this epoch's corrupted training sequences, as the student's inputs
        (same rows as the clean examples) and the teachers' histories; the teacher caches are dropped so that
        they are encoded again. Drawn from torch's generator, which the trainer seeds per epoch."""
        seqs, swapped = corrupt_sequences(self._train_seqs, self.imitation.augment, self.num_items)
        history = self.scheme.build(self.model, seqs).arrays["history"]
        assert history.shape == self.examples.arrays["history"].shape  # the rows depend on lengths only
        self._aug_history = history
        self._teacher_hist = torch.from_numpy(self.examples.teacher_histories(seqs, self._teacher_width))
        self._log_extra["augmented_items"] = round(swapped, 4)
        for t in self.teachers.values():
            t.cache = None

    def teacher_logits(self, teacher: FrozenTeacher, example: torch.Tensor) -> torch.Tensor:
        """(M, N) teacher logits of the examples ``example`` (M,)."""
        if teacher.cache is not None:
            q = teacher.cache[example]
        else:
            q = teacher.encode(self._teacher_hist[example.cpu()].to(example.device))
        return q @ teacher.items.T

    # ---- loss -----------------------------------------------------------------------------------
    def queries(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Student queries (M, D'), their targets (M, T) and teacher example ids (M,)."""
        return self.scheme.queries(self.model, batch)

    def student_loss(self, q: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                     logits: torch.Tensor | None) -> torch.Tensor:
        if self.loss_name == "ce":
            return ce_loss(logits if logits is not None else q @ items.T, targets)
        neg = sample_negatives(targets, self.num_items, self.model.config.num_negatives)  # (M, K)
        pos_s = torch.einsum("md,mtd->mt", q, items[(targets - 1).clamp_min(0)])  # (M, T)
        neg_s = torch.einsum("md,mkd->mk", q, items[neg - 1])  # (M, K)
        return bpr_loss(pos_s, neg_s, targets > 0)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        q, targets, example = self.queries(batch)
        items = self.model.item_vectors()  # (N, D')
        need_logits = self.loss_name == "ce" or bool(self.teachers and self.imitation.use_kl)
        logits = q @ items.T if need_logits else None  # (M, N)
        terms: dict[str, torch.Tensor] = {"student": self.student_loss(q, items, targets, logits)}
        loss = terms["student"]
        if self.teachers:
            if "aug_history" in batch:  # imitation on this epoch's corrupted inputs (ImitationConfig.augment)
                q, targets, example = self.queries({**batch, "history": batch["aug_history"]})
                logits = q @ items.T if self.imitation.use_kl else None
            loss = loss + self.imitation_loss(logits, targets, example, terms)
        terms["loss"] = loss
        return terms

    def teacher_probs(self, teacher: FrozenTeacher, example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(M, N) the teacher's distribution at ``tau`` for the examples, and (M,) ``sum p log p`` when cached."""
        if teacher.probs is not None:
            return teacher.probs.rows(example, example.device)
        return F.softmax(self.teacher_logits(teacher, example).detach() / self.imitation.temperature, dim=-1), None

    def imitation_loss(self, logits: torch.Tensor | None, targets: torch.Tensor, example: torch.Tensor,
                       terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum_i lambda_i (KL_i + MSE_i) + reg`` (eq. 5-8), with the options of ``ImitationConfig``;
        the terms are added to ``terms`` for the history."""
        cfg, tau = self.imitation, self.imitation.temperature
        lam = dict(zip(self.lambdas.names, self.lambdas()))  # name -> lambda
        imit: dict[str, torch.Tensor] = {}
        if cfg.use_mse:
            table = self.model.output_items()  # (N, d_s)
            mse = {n: mse_imitation(table, t.item_table(), self.projections[n]) for n, t in self.teachers.items()}
            terms |= {f"mse_{n}": v for n, v in mse.items()}
            imit = {"mean": torch.stack(list(mse.values())).mean()} if cfg.target == "mean" else mse
        if cfg.use_kl:
            log_q = F.log_softmax(logits / tau, dim=-1)  # (M, N)
            probs = {n: self.teacher_probs(t, example) for n, t in self.teachers.items()}
            if cfg.target == "mean":
                probs = {"mean": (torch.stack([p for p, _ in probs.values()]).mean(dim=0), None)}
            for n, (p, negent) in probs.items():
                if cfg.rank_k:
                    rows = rank_distillation_rows(log_q, p, targets[:, 0], cfg.rank_k, cfg.rank_decay)  # (M,)
                elif cfg.top_k:
                    rows = top_k_kl_rows(log_q, p, cfg.top_k)
                else:
                    rows = kl_rows(log_q, p, negent)
                if cfg.gate:
                    keep = teacher_ranks_higher(p, logits, targets[:, 0])  # (M,)
                    terms[f"gate_{n}"] = keep.float().mean()
                    rows = rows[keep]
                key = f"rd_{n}" if cfg.rank_k else f"kl_{n}"
                terms[key] = rows.mean() * tau**2 if len(rows) else log_q.new_zeros(())
                imit[n] = imit.get(n, 0.0) + terms[key]
        terms["lambda_reg"] = self.lambdas.regulariser()
        return sum(lam[n] * v for n, v in imit.items()) + terms["lambda_reg"]

    def scorer(self, device: torch.device) -> ContractScorer:
        return self.scheme.scorer(self.model, device)

    def epoch_log(self) -> dict[str, float]:
        out = {**self.lambdas.as_dict(), **self._log_extra}
        self._log_extra = {}
        return out


# ---- presets and entry point --------------------------------------------------------------------
# The official HGN code (allenjack/HGN, run.py) uses Adam(lr=1e-3, weight_decay=1e-3) on a loss SUMMED
# over a batch of 4096 windows x T=3 (target, negative) pairs. Our losses are means (the fixed bug), so
# the same strength of L2 relative to the data term is 1e-3 / (4096 * 3). Measured on Beauty: with
# weight_decay=1e-3 on the mean loss HGN stays at popularity level (valid N@10 .185, BPR loss .62
# after 7 epochs); with this value it learns (valid N@10 .317 after 3 epochs).
HGN_WEIGHT_DECAY = 1e-3 / (4096 * 3)


# per student: (weight decay, batch size, smoke batch size); batch = HGN windows or GRU4Rec sequences
STUDENT_OPTIM: dict[str, tuple[float, int, int]] = {"hgn": (HGN_WEIGHT_DECAY, 256, 512), "gru4rec": (0.0, 128, 64)}


def train_config(student: StudentName, preset: Preset, seed: int = 42, progress: bool = True) -> TrainConfig:
    """Adam lr 1e-3 for both; HGN with the paper's L2 rescaled to a mean loss (``HGN_WEIGHT_DECAY``).
    Batch = examples (HGN windows) or sequences (GRU4Rec; each holds all its prefixes, ~6 on Beauty)."""
    if student not in STUDENT_OPTIM:
        raise ValueError(f"unknown student {student!r}; expected one of {', '.join(STUDENT_OPTIM)}")
    wd, bs, smoke_bs = STUDENT_OPTIM[student]
    by_preset = {
        # smoke: big batches, so that a LastFM epoch (~50k windows / prefixes) is a few hundred steps
        "smoke": TrainConfig(epochs=2, patience=2, batch_size=smoke_bs, eval_batch_size=256),
        "cpu": TrainConfig(epochs=100, patience=5, batch_size=bs),
        "paper": TrainConfig(epochs=200, patience=10, batch_size=bs),
    }
    if preset not in by_preset:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(by_preset)}")
    return dataclasses.replace(by_preset[preset], lr=1e-3, weight_decay=wd, seed=seed, progress=progress)


@dataclass(frozen=True)
class StudentRecipe:
    """How one student trains, alone or distilled: distillation adds the imitation terms to this recipe and
    changes nothing else. The model is ``MODELS[recipe.model]`` at the preset's sizes (``build_student``), so
    two recipes can train the same architecture (``sasrec``, ``sasrec_prefix``)."""

    model: str  # a key of models.MODELS
    train: Callable[[Preset, nn.Module, int, bool], TrainConfig]  # (preset, built model, seed, progress)
    examples: ExampleScheme | None = None  # None: the scheme of the model's own ``training_examples``
    resize: Callable[[ModelConfig], ModelConfig] | None = None  # the preset's model config -> this recipe's


def _own_train_config(student: StudentName) -> Callable[[Preset, nn.Module, int, bool], TrainConfig]:
    return lambda preset, model, seed, progress: train_config(student, preset, seed, progress)


def _twice_as_wide(config: ModelConfig) -> ModelConfig:
    """A transformer config with twice the width (``dim``, ``ffn_dim``) of the preset's, the rest unchanged."""
    return config.replace(dim=2 * config.dim, ffn_dim=2 * config.ffn_dim)


STUDENT_RECIPES: dict[str, StudentRecipe] = {
    "hgn": StudentRecipe("hgn", _own_train_config("hgn")),
    "gru4rec": StudentRecipe("gru4rec", _own_train_config("gru4rec")),
    # SASRec-CE is the sasrec_ce baseline's recipe, read from training/baselines.py: its model presets (SASRec's,
    # as build_stages builds it), its trainer presets (baselines.train_config: lr, batch, epochs, patience,
    # max_len) and its examples and batches (RECENT_SEGMENTS). Alone, it trains the sasrec_ce row.
    "sasrec": StudentRecipe("sasrec", baseline_train_config, RECENT_SEGMENTS),
    # The same model and trainer config on the model's own examples (every prefix segment of every user, in
    # length-sorted batches of about equal target count): the SASRec consistency teachers' recipe
    # (training/teachers.py BACKBONES["sasrec"]) without the task. Alone, it trains the sasrec_ce_prefix row.
    "sasrec_prefix": StudentRecipe("sasrec", baseline_train_config),
    # The same recipe at twice the width (d=128, ffn 512 at the cpu preset): a student larger than the
    # sasrec_prefix teachers it imitates, alone the sasrec_ce_prefix_wide row
    "sasrec_prefix_wide": StudentRecipe("sasrec", baseline_train_config, resize=_twice_as_wide),
}
STUDENTS = tuple(STUDENT_RECIPES)


def student_loss(student: StudentName, loss: LossName | None = None) -> LossName:
    """The loss a student trains with: ``loss``, else its model's own (HGN: BPR; GRU4Rec, SASRec: CE)."""
    return loss or MODELS[STUDENT_RECIPES[student].model].default_loss


def student_train_config(student: StudentName, preset: Preset, model: nn.Module, seed: int = 42,
                         progress: bool = True) -> TrainConfig:
    """The trainer config of ``student``'s recipe (``STUDENT_RECIPES``) for the built ``model``."""
    return STUDENT_RECIPES[student].train(preset, model, seed, progress)


def build_student(student: StudentName, ds: SequenceDataset, preset: Preset) -> nn.Module:
    if student not in STUDENT_RECIPES:
        raise ValueError(f"unknown student {student!r}; expected one of {', '.join(STUDENTS)}")
    recipe = STUDENT_RECIPES[student]
    cls = MODELS[recipe.model]
    sizes = {"num_items": ds.num_items}
    if cls.uses_user:
        sizes["num_users"] = ds.num_users
    config = cls.config_class.preset(preset, **sizes)
    return cls(recipe.resize(config) if recipe.resize else config)


def anonymous_metrics(model: nn.Module, ds: SequenceDataset, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Valid/test sampled + full metrics with the unknown user (id 0) in place of every user id."""
    scorer = ContractScorer(model.to(device), device, anonymous=True)
    neg = load_or_create_negatives(ds)
    return {split: {p: evaluate(scorer, ds, split, p, max_len=cfg.max_len, batch_size=cfg.eval_batch_size,
                                negatives=neg) for p in ("sampled", "full")} for split in ("valid", "test")}


def _clear_run(run_dir: Path) -> None:
    for name in ("metrics.json", "metrics_anonymous.json", "checkpoint.pt", "model.safetensors",
                 "history.csv", "history.json"):
        (run_dir / name).unlink(missing_ok=True)


def train_student(student: StudentName, ds: SequenceDataset, preset: Preset, run_dir: str | Path,
                  teacher_dirs: dict[str, Path] | None = None, imitation: ImitationConfig | None = None,
                  loss: LossName | None = None, seed: int = 42, resume: bool = True, progress: bool = True,
                  epochs: int | None = None, train: TrainConfig | None = None,
                  device: str | None = None) -> dict[str, Any]:
    """Train ``student`` on ``ds`` (alone when ``teacher_dirs`` is empty) into ``run_dir``; returns metrics.

    For a student with a user embedding (HGN) the returned dict also holds ``anonymous`` (valid/test
    metrics with the unknown user), written to ``run_dir/metrics_anonymous.json``. ``train`` replaces the
    preset's ``TrainConfig`` (``epochs`` still overrides its epoch cap, ``device`` (auto | cpu | cuda) its
    device; None keeps the config's).
    """
    run_dir = Path(run_dir)
    imitation = imitation or ImitationConfig()
    teacher_dirs = {k: Path(v) for k, v in (teacher_dirs or {}).items()}
    if not resume:
        _clear_run(run_dir)
    torch.manual_seed(seed)  # model initialisation
    model = build_student(student, ds, preset)
    recipe = STUDENT_RECIPES[student]
    cfg = train or recipe.train(preset, model, seed, progress)
    if epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=epochs)
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    loss = student_loss(student, loss)
    if not is_finished(run_dir):
        teachers = ({n: FrozenTeacher.load(n, d, ds) for n, d in teacher_dirs.items()}
                    if imitation.active else {})
        task = StudentTask(model, ds, teachers, imitation, loss, cfg.batch_size, teacher_width=cfg.max_len,
                           scheme=recipe.examples)
        info = {"student": student, "preset": preset, "loss": loss, "examples": task.scheme.name,
                "imitation": dataclasses.asdict(imitation),
                "teachers": {n: str(d) for n, d in teacher_dirs.items()},
                "teacher_models": {n: t.info.get("model") for n, t in teachers.items()}}
        metrics = fit(task, ds, cfg, run_dir, resume=resume, run_info=info)
    else:
        metrics = read_json(run_dir / "metrics.json")
    if model.uses_user and (anonymous := _anonymous(model, ds, cfg, run_dir)) is not None:
        metrics["anonymous"] = anonymous
    return metrics


def _anonymous(model: nn.Module, ds: SequenceDataset, cfg: TrainConfig, run_dir: Path) -> dict[str, Any] | None:
    """The metrics with every user embedding replaced by the mean one (``metrics_anonymous.json``, computed once);
    None, with a warning, for a finished run whose weights are not there (its metrics came without them)."""
    path = run_dir / "metrics_anonymous.json"
    if path.is_file():
        return read_json(path)
    if not (run_dir / "model.safetensors").is_file():
        log.warning("%s: no model.safetensors, so no anonymous-history metrics", run_dir)
        return None
    load_best(model, run_dir)
    out = anonymous_metrics(model, ds, cfg, resolve_device(cfg.device))
    atomic_write_json(path, out)
    t, a = read_json(run_dir / "metrics.json")["test"]["sampled"], out["test"]["sampled"]
    log.info("%s test sampled N@10: with user %.4f, anonymous %.4f", run_dir.name, t["ndcg@10"], a["ndcg@10"])
    return out


def default_run_name(student: str, preset: str, teachers: list[str], imitation: ImitationConfig,
                     loss: str | None, seed: int) -> str:
    parts = [student]
    if teachers and imitation.active:
        parts.append("ssi-" + "+".join(teachers))
        parts += [s for s, off in (("nokl", not imitation.use_kl), ("nomse", not imitation.use_mse)) if off]
    if loss:
        parts.append(loss)
    return "-".join(parts + [preset, f"s{seed}"])


def _parse_teacher(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"teacher {spec!r}: expected NAME=RUN_DIR (e.g. temporal=artifacts/runs/...)")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.students", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", choices=STUDENTS, required=True)
    p.add_argument("--dataset", required=True, help="beauty, toys, sports, lastfm or a NAME.txt in the data folder")
    p.add_argument("--data-dir", default=None, help="data folder (default: $SSI_DATA_DIR, else ./data)")
    p.add_argument("--preset", choices=("smoke", "cpu", "paper"), default="cpu")
    p.add_argument("--teachers", nargs="*", default=[], type=_parse_teacher, metavar="NAME=RUN_DIR",
                   help="finished teacher runs to imitate (any number; SSI uses three): temporal=DIR persona=DIR global=DIR")
    p.add_argument("--no-kl", action="store_true", help="no prediction imitation (KL)")
    p.add_argument("--no-mse", action="store_true", help="no item-representation imitation (MSE)")
    p.add_argument("--temperature", type=float, default=1.0, help="KL temperature (default 1)")
    p.add_argument("--no-teacher-cache", action="store_true", help="run the teachers on every batch")
    p.add_argument("--cache-probs", action="store_true",
                   help="precompute the teachers' distributions once (float16 files in $SSI_CACHE_DIR): "
                        "a much cheaper KL per batch on a CPU, ~2 bytes x examples x items of disk per teacher")
    p.add_argument("--loss", choices=("bpr", "ce"), default=None, help="student loss (default: the model's own)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epoch cap")
    p.add_argument("--out", default="artifacts/runs", help="runs root; the run goes to OUT/DATASET/NAME")
    p.add_argument("--run-dir", default=None, help="explicit run folder (overrides --out)")
    p.add_argument("--fresh", action="store_true", help="discard an existing run in the folder and start over")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    teachers = dict(a.teachers)
    if len(teachers) != len(a.teachers):
        p.error("a teacher name is given twice")
    imitation = ImitationConfig(use_kl=not a.no_kl, use_mse=not a.no_mse, temperature=a.temperature,
                                cache_teacher=not a.no_teacher_cache, cache_probs=a.cache_probs)
    try:
        ds = load_dataset(a.dataset, a.data_dir)
        run_dir = Path(a.run_dir) if a.run_dir else Path(a.out) / ds.name / default_run_name(
            a.student, a.preset, list(teachers), imitation, a.loss, a.seed)
        metrics = train_student(a.student, ds, a.preset, run_dir, teachers, imitation, a.loss, a.seed,
                                resume=not a.fresh, progress=not a.no_progress, epochs=a.epochs)
    except (DataError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = metrics["test"]
    print(f"{run_dir}: test sampled R@10 {t['sampled']['recall@10']:.4f} N@10 {t['sampled']['ndcg@10']:.4f} | "
          f"full R@10 {t['full']['recall@10']:.4f} N@10 {t['full']['ndcg@10']:.4f}")
    if "anonymous" in metrics:
        an = metrics["anonymous"]["test"]
        print(f"  anonymous: sampled N@10 {an['sampled']['ndcg@10']:.4f} | full N@10 {an['full']['ndcg@10']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
