"""SSI teachers: BERT4Rec trained with the cloze objective, alone or plus one consistency task (eq. 4);
or the same tasks on a causal backbone (GRU4Rec, SASRec-CE) trained with next-item cross-entropy.

``L = L_MLM + lambda * L_task`` with ``L_task`` one of temporal, persona or global-session consistency
(``models/consistency.py``). The four variants: ``bert4rec`` (cloze only), ``temporal``, ``persona``,
``global``. The saved model is the plain BERT4Rec (``training.runs.load_run_model`` rebuilds it, which
is all students need); ``run.json`` also records the variant and the cloze/consistency configs.

Cloze batches (``TeacherTask.batches``): the training part ``s[:-2]`` of every user, its most recent
``max_len`` items; per epoch ``copies`` randomly masked copies of each user (each item masked with
``mask_prob``, at least one per sequence) plus ``last_item_frac * U`` last-item-masked samples (only
the last item masked, exactly the inference situation). Samples are sharded over DDP ranks like
``DistributedSampler`` (one permutation from the epoch rng on every rank, rank ``r`` takes
``perm[r::world]``, padded to equal counts). Within a rank, windows of ``bucket_batches`` batches
are sorted by length so that a batch is padded to its own longest sequence, not to ``max_len``.

Teachers on a causal backbone (``NextItemTeacherTask``): the same three tasks on a model with [MASK]/[INT]
tokens whose main loss is cross-entropy on every next item instead of the cloze. Not the paper's teacher: a
stronger recommender to imitate on small data, where the cloze-trained BERT4Rec falls below the students it
should teach (docs/results). ``BACKBONES`` is the table of backbones (model class, trainer preset, the row of
the same model trained alone); a causal backbone is any ``models.contracts.ConsistencyBackbone``:

- ``--backbone gru4rec``: GRU4Rec; model and trainer presets of the GRU4Rec (CE) student (catalogue rows
  ``teacher_gru_{temporal,persona,global}``).
- ``--backbone sasrec``: SASRec-CE (causal self-attention); model presets (width, depth, dropout, history
  length) and trainer presets (Adam lr 1e-3, batch 256, patience 10 at cpu/paper) of the ``sasrec_ce``
  baseline (rows ``teacher_sas_{temporal,persona,global}``). Its examples are every prefix of every training
  sequence (segments of ``max_len + 1`` items, as GRU4Rec's), where ``sasrec_ce`` takes each user's last
  ``max_len + 1`` items once an epoch: the same targets wherever a sequence fits in one segment (Beauty, Toys),
  more on long sequences (LastFM), in batches of about equal target count (``StudentTask``) where ``sasrec_ce``
  batches ``batch_size`` users. That recipe without the task is the ``sasrec_ce_prefix`` row (``training.students``
  recipe ``sasrec_prefix``), the control of these teachers.

Task accuracy (issue 26): every epoch's history holds ``train_task_acc`` (over the epoch's batches),
``train_task_chance``, and ``heldout_task_acc`` / ``heldout_task_chance`` / ``heldout_task_loss`` on a fixed
held-out batch (``HeldoutTask``); ``metrics.json`` holds them at the best and at the last epoch (``task``).
``--set task_first_epochs=N`` trains the task alone for N epochs before the joint loss (those epochs are
validated but neither selected nor counted against the patience).

CLI (also under ``torchrun --nproc_per_node N -m training.teachers ...``)::

    python -m training.teachers --variant temporal --dataset beauty --preset cpu \
        --out artifacts/runs/beauty/teacher-temporal [--backbone {bert4rec,gru4rec,sasrec}] [--seed 42] [--fresh] \
        [--data-dir DIR] [--set lr=5e-4] [--set epochs=5]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models.bert4rec import BERT4Rec
from models.consistency import VARIANTS as TASKS
from models.consistency import ConsistencyConfig, SequencePool, build_consistency
from models.contracts import ConsistencyBackbone, TokenConfig, missing
from models.gru4rec import GRU4Rec
from models.sasrec import SASRec
from protocol import (
    SequenceDataset,
    eval_examples,
    load_dataset,
    load_or_create_negatives,
    pad_left,
    train_sequences,
)
from training.baselines import TRAIN_PRESETS as BASELINE_TRAIN_PRESETS
from training.catalogue import PLAIN_ROWS
from training.cli import init_distributed, parse_override
from training.students import ImitationConfig, StudentTask
from training.students import train_config as student_train_config
from training.trainer import TrainConfig, TrainTask, dist_info, fit

log = logging.getLogger("ssi.teachers")

VARIANTS = ("bert4rec", "temporal", "persona", "global")
PRESETS = ("smoke", "cpu", "paper")


@dataclass
class ClozeConfig:
    """Cloze sampling. ``last_item_frac=0.25``: a quarter of the users get an extra sample with only the
    last item masked (BERT4Rec's own data script adds one per user next to 10 random copies; with one
    random copy a full extra set would double the epoch). ``bucket_batches=16``: length-sorted windows
    of 16 batches make a Beauty epoch ~3.4x faster than padding every batch to ``max_len`` (measured,
    2 cores) while the batch order stays random."""

    mask_prob: float = 0.2  # each item masked with this probability (RecBole's 0.2)
    copies: int = 1  # randomly masked copies of each user per epoch
    last_item_frac: float = 0.25  # extra last-item-masked samples per epoch, as a share of the users (<= 1)
    bucket_batches: int = 16  # length-sorting window in batches (0 = no bucketing)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")
        if not 0.0 <= self.last_item_frac <= 1.0:
            raise ValueError(f"last_item_frac must be in [0, 1], got {self.last_item_frac}")
        if self.copies < 0 or (self.copies == 0 and self.last_item_frac == 0):
            raise ValueError("need copies >= 1 or last_item_frac > 0")


# Optimisation per preset (model sizes: models/bert4rec.py PRESETS). cpu: a Beauty epoch is 110 length-
# bucketed batches of 256 (REFERENCE.md section 8 measured ~17 s for one masked copy per user on 2 idle
# cores), so 60 epochs with validation fit ~20 min; early stopping after 8 validations without a better
# NDCG@10. On a busy shared machine use --threads 1 (two threads there were >10x slower per step).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"epochs": 2, "batch_size": 64, "patience": 2, "max_len": 20, "eval_batch_size": 256},
    "cpu": {"epochs": 60, "batch_size": 256, "patience": 8, "max_len": 50},
    "paper": {"epochs": 400, "batch_size": 256, "patience": 20, "max_len": 50},
}


# ---- task accuracy and schedule, shared by both backbones --------------------------------------------
@dataclass
class HeldoutTask:
    """The fixed held-out batch on which a teacher's task accuracy is measured after every epoch.

    Definition (issue 26): ``heldout_users`` users (all when fewer) drawn with ``heldout_seed``; each gives its
    validation view ``s[:-1]`` (the training part plus the validation target, an item no training batch
    holds), its most recent ``max_len - 1`` items, and the task's views of it (negatives, donors, segments;
    the binary tasks' labels) are drawn once with a generator seeded by ``heldout_seed``. Leave-one-out
    trains on every user, so the users are not unseen: held out are the augmented views (never a training
    batch) and the last item. ``training.task_probe`` measures on disjoint users. Evaluated in eval mode,
    without gradients, in one pass: deterministic for given weights. Chance: the majority-label share for
    the binary tasks (>= 0.5; a negative equal to its original is labelled positive), 1/B for the global
    task (top-1 among the B held-out segments).
    """

    batch: dict[str, torch.Tensor]

    @classmethod
    def build(cls, consistency: torch.nn.Module, ds: SequenceDataset, max_len: int, cfg: ConsistencyConfig) -> HeldoutTask:
        inputs, targets = eval_examples(ds, "valid")
        rng = np.random.default_rng(cfg.heldout_seed)
        users = np.sort(rng.choice(len(inputs), min(cfg.heldout_users, len(inputs)), replace=False))  # (H,)
        views = [np.append(inputs[u], targets[u])[-(max_len - 1):] for u in users]
        width = max(len(v) for v in views)
        tokens = torch.from_numpy(pad_left(views, width))  # (H, W) left-padded, W <= max_len - 1
        gen = torch.Generator().manual_seed(cfg.heldout_seed)
        return cls(consistency.views(tokens, torch.from_numpy(users), gen))

    @torch.no_grad()
    def evaluate(self, consistency: torch.nn.Module, encoder: torch.nn.Module) -> dict[str, float]:
        """``heldout_task_{acc,chance,loss}`` of the task head on the encoder, in eval mode."""
        device = next(encoder.parameters()).device
        modes = encoder.training, consistency.training
        encoder.eval()
        consistency.eval()
        out = consistency(encoder.hidden_states, {k: v.to(device) for k, v in self.batch.items()})
        encoder.train(modes[0])
        consistency.train(modes[1])
        return {f"heldout_task_{k}": float(out[k]) for k in ("acc", "chance", "loss")}


TASK_KEYS = ("train_task_acc", "train_task_chance", "heldout_task_acc", "heldout_task_chance", "heldout_task_loss")


def task_summary(variant: str, history: list[dict[str, Any]], best_epoch: int) -> dict[str, Any]:
    """``metrics.json``'s ``task``: the task's accuracies and chance at the best epoch and at the last one."""
    def at(row: dict[str, Any]) -> dict[str, Any]:
        return {"epoch": row["epoch"], **{k: row.get(k) for k in TASK_KEYS}}

    best = next((r for r in history if r["epoch"] == best_epoch), history[-1] if history else None)
    return {"task": {"variant": variant, "best": at(best), "last": at(history[-1])}} if history else {}


class ConsistencyTeacher:
    """Mixin of both teacher tasks: ``main + weight * task`` with the task-first schedule, the train-batch
    task terms, the held-out task accuracy per epoch (``epoch_log``) and its summary (``final_log``).
    Expects ``self.model`` (with ``hidden_states``), ``self.variant``, ``self.consistency`` (None: no task),
    ``self.consistency_config`` and ``self.heldout``."""

    model: torch.nn.Module
    variant: str
    consistency: torch.nn.Module | None
    consistency_config: ConsistencyConfig | None
    heldout: HeldoutTask | None
    _epoch: int = 1

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch
        super().on_epoch_start(epoch)  # type: ignore[misc]

    def in_task_first(self, epoch: int | None = None) -> bool:
        """True in the task-only epochs of the schedule (``task_first_epochs``)."""
        cfg = self.consistency_config
        return cfg is not None and (self._epoch if epoch is None else epoch) <= cfg.task_first_epochs

    def selects(self, epoch: int) -> bool:
        """Task-only epochs do not take part in model selection or early stopping."""
        return not self.in_task_first(epoch)

    def with_task(self, main: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, task terms): ``main + weight * L_task`` (``main`` left out in task-first epochs)."""
        t = self.consistency(self.model.hidden_states, batch)
        loss = self.consistency_config.weight * t["loss"] + (0.0 if self.in_task_first() else main)
        return loss, {self.variant: t["loss"].detach(), "task_acc": t["acc"]}

    def epoch_log(self) -> dict[str, float]:
        out = super().epoch_log()  # type: ignore[misc]
        if self.consistency is not None:
            out["train_task_chance"] = self.consistency.epoch_chance()
        if self.heldout is not None:
            out |= self.heldout.evaluate(self.consistency, self.model)
        return out

    def final_log(self, history: list[dict[str, Any]], best_epoch: int) -> dict[str, Any]:
        return task_summary(self.variant, history, best_epoch) if self.consistency is not None else {}


class TeacherTask(ConsistencyTeacher, TrainTask):
    """Cloze loss (+ lambda * a consistency loss) on BERT4Rec, with sharded, length-bucketed batches."""

    def __init__(self, model: BERT4Rec, train_seqs: Sequence[np.ndarray], batch_size: int,
                 cloze: ClozeConfig | None = None, variant: str = "bert4rec",
                 consistency: ConsistencyConfig | None = None, heldout_ds: SequenceDataset | None = None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown teacher variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        self.model = model
        self.variant = variant
        self.cloze = cloze or ClozeConfig()
        self.batch_size = batch_size
        c = model.config
        seqs = [np.asarray(s, dtype=np.int64)[-c.max_len:] for s in train_seqs]
        if any(len(s) == 0 for s in seqs):
            raise ValueError("every training sequence needs at least one item")
        self.padded = pad_left(seqs, c.max_len)  # (U, max_len) most recent items, left-padded
        self.lengths = np.asarray([len(s) for s in seqs], dtype=np.int64)  # (U,)
        self.consistency_config: ConsistencyConfig | None = None
        self.consistency: torch.nn.Module | None = None
        self.heldout: HeldoutTask | None = None  # from ``heldout_ds`` (None: no held-out task accuracy)
        if variant != "bert4rec":
            self.consistency_config = consistency or ConsistencyConfig()
            pool = SequencePool.from_sequences([torch.from_numpy(s) for s in train_seqs]) if variant == "persona" else None
            self.consistency = build_consistency(variant, c.dim, self.consistency_config, c.mask_token, c.int_token,
                                                 c.max_len, pool)
            if heldout_ds is not None:
                self.heldout = HeldoutTask.build(self.consistency, heldout_ds, c.max_len, self.consistency_config)

    # ---- batches ---------------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        return len(self.lengths)

    def num_samples(self) -> int:
        return self.cloze.copies * self.num_users + round(self.cloze.last_item_frac * self.num_users)

    def rank_batch_size(self, world: int) -> int:
        """Per-rank batch: the global batch ``batch_size`` split over the ranks."""
        return math.ceil(self.batch_size / world)

    def num_batches(self, world: int) -> int:
        return math.ceil(math.ceil(self.num_samples() / world) / self.rank_batch_size(world))

    def epoch_samples(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(S,) user rows and (S,) last-item flags of one epoch, in the epoch's random order."""
        users = np.tile(np.arange(self.num_users), self.cloze.copies)
        last = rng.choice(self.num_users, round(self.cloze.last_item_frac * self.num_users), replace=False)
        users = np.concatenate([users, last])
        flags = np.concatenate([np.zeros(len(users) - len(last), bool), np.ones(len(last), bool)])
        perm = rng.permutation(len(users))
        return users[perm], flags[perm]

    @staticmethod
    def shard(n: int, rank: int, world: int) -> np.ndarray:
        """Indices of rank ``rank``: ``[0..n)`` padded by wrapping to a multiple of ``world``, then ``[rank::world]``."""
        total = math.ceil(n / world) * world
        return (np.arange(total) % n)[rank::world]

    def _bucketed(self, idx: np.ndarray, users: np.ndarray, b: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Split ``idx`` into batches of ``b``; inside windows of ``bucket_batches`` batches, sort by length."""
        window = self.cloze.bucket_batches * b
        if window <= 0:
            return [idx[i:i + b] for i in range(0, len(idx), b)]
        out: list[np.ndarray] = []
        for w in range(0, len(idx), window):
            chunk = idx[w:w + window]
            chunk = chunk[np.argsort(self.lengths[users[chunk]], kind="stable")]
            out += [chunk[i:i + b] for i in range(0, len(chunk), b)]
        return [out[i] for i in rng.permutation(len(out))]

    def batches(self, epoch: int, rng: np.random.Generator, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
        users, last = self.epoch_samples(rng)  # identical on every rank
        seed = int(rng.integers(2**62))
        local = np.random.default_rng([seed, rank])  # masks and augmentations of this rank
        gen = torch.Generator().manual_seed(int(local.integers(2**62)))
        idx = self.shard(len(users), rank, world)
        for rows in self._bucketed(idx, users, self.rank_batch_size(world), local):
            yield self.make_batch(users[rows], last[rows], local, gen)

    def make_batch(self, users: np.ndarray, last: np.ndarray, rng: np.random.Generator,
                   gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Cloze ``input``/``target`` (B, L_b) for user rows ``users`` (+ the task's inputs)."""
        width = int(self.lengths[users].max())
        x = self.padded[users, -width:]  # (B, L_b) clean, left-padded
        inp, target = self.mask(x, last, rng)
        batch = {"input": torch.from_numpy(inp), "target": torch.from_numpy(target)}
        if self.consistency is not None:
            batch.update(self.consistency.make_batch(torch.from_numpy(x), torch.from_numpy(users), gen))
        return batch

    def mask(self, x: np.ndarray, last: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Cloze masking of (B, L) ``x``: rows flagged ``last`` mask only their last item; the others mask
        each item with ``mask_prob`` (at least one). Returns (input with [MASK], targets: item or 0)."""
        b, width = x.shape
        real = x > 0
        m = real & (rng.random((b, width)) < self.cloze.mask_prob)
        lengths = real.sum(1)
        empty = ~m.any(1)
        pick = width - 1 - np.floor(rng.random(b) * lengths).astype(np.int64)  # a random real column
        m[empty, pick[empty]] = True
        m[last] = False
        m[last, width - 1] = True
        inp = np.where(m, self.model.config.mask_token, x)
        return inp, np.where(m, x, 0)

    # ---- loss ------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = self.model(batch["input"])  # (B, L, d)
        target = batch["target"]  # (B, L), 0 where not masked
        at = target > 0
        logits = self.model.logits(hidden[at])  # (M, N) masked positions only
        cloze = F.cross_entropy(logits.float(), target[at] - 1)
        terms = {"cloze": cloze}
        loss = cloze
        if self.consistency is not None:
            loss, task_terms = self.with_task(cloze, batch)
            terms |= task_terms
        return {"loss": loss, **terms}


class NextItemTeacherTask(ConsistencyTeacher, StudentTask):
    """An SSI teacher on a causal backbone: cross-entropy on every next item + lambda * a consistency loss.

    The backbone is any ``models.contracts.ConsistencyBackbone`` (GRU4Rec, SASRec) with two extra tokens
    ([MASK], [INT]); its main objective is exactly the prefix student's (every prefix scored in one pass, full
    softmax), so the teacher without its task is that model trained alone with cross-entropy. The consistency
    task (``models/consistency.py``, unchanged) reads the backbone's last hidden state, as it reads BERT4Rec's.
    The task sees each batch row's full training segment (its inputs plus the last target) and the row's user
    (for persona's donors).
    """

    def __init__(self, model: ConsistencyBackbone, ds: SequenceDataset, batch_size: int, variant: str,
                 consistency: ConsistencyConfig):
        problems = missing(model, ConsistencyBackbone) + missing(model.config, TokenConfig)
        if problems:
            raise TypeError(f"{type(model).__name__} is not a consistency backbone (models.contracts): "
                            f"{', '.join(problems)}")
        super().__init__(model, ds, {}, ImitationConfig(use_kl=False, use_mse=False), "ce", batch_size,
                         teacher_width=model.config.max_len)
        if variant not in TASKS:
            raise ValueError(f"unknown consistency task {variant!r}; expected one of {', '.join(TASKS)}")
        c = model.config
        if c.special_tokens < 2:
            raise ValueError("a next-item teacher needs a backbone with [MASK] and [INT] tokens (special_tokens=2)")
        self.variant, self.consistency_config = variant, consistency
        pool = SequencePool.from_sequences([torch.from_numpy(s) for s in train_sequences(ds)]) if variant == "persona" else None
        self.consistency = build_consistency(variant, c.dim, consistency, c.mask_token, c.int_token, c.max_len, pool)
        self.heldout: HeldoutTask | None = HeldoutTask.build(self.consistency, ds, c.max_len, consistency)

    def batches(self, epoch: int, rng: np.random.Generator, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))  # this epoch's augmentations
        users = torch.from_numpy(self.examples.teacher_users)  # (E,) user row of every example
        for batch in super().batches(epoch, rng, rank, world):
            clean = torch.cat([batch["history"], batch["targets"][:, -1:]], dim=1)  # (B, W + 1) whole segment
            clean = clean[:, -self.model.config.max_len:]
            batch.update(self.consistency.make_batch(clean, users[batch["example"][:, -1]], gen))
            yield batch

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = super().forward(batch)  # {"student": next-item CE, "loss"}
        loss, task_terms = self.with_task(terms.pop("student"), batch)
        return {"loss": loss, "next_item": terms["loss"].detach(), **task_terms}


# ---- building and training -------------------------------------------------------------------------
Backbone = Literal["bert4rec", "gru4rec", "sasrec"]


@dataclass(frozen=True)
class BackboneSpec:
    """One teacher backbone: its model class (presets: ``model.config_class``), whether it is trained with the
    cloze (``TeacherTask``, the paper's) or causally (``NextItemTeacherTask``), the trainer preset of the same
    model trained alone (``(preset, seed, progress) -> TrainConfig`` fields) and the config fields that give it
    the task tokens. The catalogue row of that model trained alone (what the backbone is without a task) is
    ``training.catalogue.PLAIN_ROWS[backbone]``."""

    model: type[nn.Module]
    cloze: bool
    train: Callable[[str, int, bool], dict[str, Any]]
    tokens: dict[str, Any]


BACKBONES: dict[str, BackboneSpec] = {
    # the paper's teacher: cloze (+ task); vocab already holds [MASK] and [INT]
    "bert4rec": BackboneSpec(BERT4Rec, True, lambda preset, seed, progress: TRAIN_PRESETS[preset], {}),
    # GRU4Rec (CE), the GRU4Rec student's trainer preset
    "gru4rec": BackboneSpec(GRU4Rec, False, lambda preset, seed, progress: dataclasses.asdict(
        student_train_config("gru4rec", preset, seed, progress)), {"special_tokens": 2}),
    # SASRec-CE, the sasrec_ce baseline's trainer preset (training/baselines.py) on every prefix (StudentTask's
    # examples and batches): without the task, the sasrec_ce_prefix row (training/students.py "sasrec_prefix")
    "sasrec": BackboneSpec(SASRec, False, lambda preset, seed, progress: dataclasses.asdict(
        BASELINE_TRAIN_PRESETS[preset]), {"special_tokens": 2}),
}


@dataclass
class TeacherSetup:
    """Everything a teacher run is built from. ``cloze`` is None on a causal backbone (next-item loss)."""

    model: Any  # the backbone's config (``BACKBONES[backbone].model.config_class``)
    train: TrainConfig
    cloze: ClozeConfig | None
    consistency: ConsistencyConfig | None
    backbone: str = "bert4rec"  # a key of BACKBONES


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def resolve_setup(variant: str, preset: str, num_items: int, seed: int = 42,
                  overrides: dict[str, Any] | None = None, progress: bool = True,
                  backbone: Backbone = "bert4rec") -> TeacherSetup:
    """Preset configs with ``overrides`` applied by field name (``max_len`` sets model and trainer).

    ``backbone="bert4rec"``: the paper's teacher (cloze + task). A causal backbone (``"gru4rec"``,
    ``"sasrec"``): the model with [MASK]/[INT] tokens, trained with next-item cross-entropy on every prefix +
    task; model and trainer presets are those of the same model trained alone (``BACKBONES``), and the
    variant must be a task.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown teacher variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown teacher backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    spec = BACKBONES[backbone]
    causal = not spec.cloze
    if causal and variant == "bert4rec":
        raise ValueError(f"a {backbone} teacher without a consistency task is the {PLAIN_ROWS[backbone]} baseline; "
                         "pick a task")
    overrides = dict(overrides or {})
    if "seed" in overrides or "num_items" in overrides:
        raise ValueError("seed and num_items are not overrides (use the seed argument; num_items comes from the data)")
    model_cls = spec.model.config_class
    targets = {"model": _fields(model_cls) - set(spec.tokens), "train": _fields(TrainConfig),
               "cloze": set() if causal else _fields(ClozeConfig),
               "consistency": _fields(ConsistencyConfig) if variant != "bert4rec" else set()}
    unknown = [k for k in overrides if not any(k in names for names in targets.values())]
    if unknown:
        raise ValueError(f"unknown override(s) {unknown}; fields: {sorted(set().union(*targets.values()))}")
    pick = {part: {k: v for k, v in overrides.items() if k in names} for part, names in targets.items()}
    model = model_cls.preset(preset, num_items=num_items, **spec.tokens, **pick["model"])
    base = spec.train(preset, seed, progress)
    train = TrainConfig(**{**base, "max_len": model.max_len, **pick["train"], "seed": seed, "progress": progress})
    if train.max_len != model.max_len:
        raise ValueError(f"max_len differs: model {model.max_len}, trainer {train.max_len}")
    cloze = None if causal else ClozeConfig(**pick["cloze"])
    consistency = ConsistencyConfig(**pick["consistency"]) if variant != "bert4rec" else None
    return TeacherSetup(model, train, cloze, consistency, backbone)


def build_teacher(variant: str, ds: SequenceDataset, setup: TeacherSetup) -> TeacherTask | NextItemTeacherTask:
    """A freshly initialised teacher task (seeded with ``setup.train.seed``)."""
    torch.manual_seed(setup.train.seed)
    model = BACKBONES[setup.backbone].model(setup.model)
    if setup.cloze is None:
        return NextItemTeacherTask(model, ds, setup.train.batch_size, variant, setup.consistency)
    return TeacherTask(model, train_sequences(ds), setup.train.batch_size, setup.cloze, variant, setup.consistency,
                       heldout_ds=ds)


def run_info(variant: str, preset: str, setup: TeacherSetup) -> dict[str, Any]:
    """What ``run.json`` records beside the trainer's fields, so that students can rebuild the teacher."""
    return {"teacher_variant": variant, "teacher_backbone": setup.backbone, "preset": preset,
            "cloze_config": dataclasses.asdict(setup.cloze) if setup.cloze else None,
            "consistency_config": dataclasses.asdict(setup.consistency) if setup.consistency else None}


def train_teacher(variant: str, ds: SequenceDataset, preset: str, run_dir: str | os.PathLike, seed: int = 42,
                  resume: bool = True, overrides: dict[str, Any] | None = None, progress: bool = True,
                  backbone: Backbone = "bert4rec", device: str | None = None) -> dict[str, Any]:
    """Train one teacher into ``run_dir`` (a finished run is returned as is); returns its metrics.

    ``device`` (auto | cpu | cuda) sets ``TrainConfig.device``; None keeps the setup's (an override or auto).
    Under DDP every rank calls this; only rank 0 writes and returns metrics (the others return {}).
    """
    setup = resolve_setup(variant, preset, ds.num_items, seed, overrides, progress, backbone)
    if device is not None:
        setup.train = dataclasses.replace(setup.train, device=device)
    task = build_teacher(variant, ds, setup)
    rank, world = dist_info()
    if world > 1 and rank != 0:
        dist.barrier()  # rank 0 draws the negatives file first
    negatives = load_or_create_negatives(ds)
    if world > 1 and rank == 0:
        dist.barrier()
    if rank == 0:
        log.info("teacher %s (%s backbone) on %s (%s): %d users, %d items, %d parameters, %d batches/epoch",
                 variant, setup.backbone, ds.name, preset, ds.num_users, ds.num_items, sum(p.numel() for p in task.model.parameters()), task.num_batches(world))
    return fit(task, ds, setup.train, run_dir, resume=resume, negatives=negatives,
               run_info=run_info(variant, preset, setup))


# ---- CLI -----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.teachers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", required=True, choices=VARIANTS, help="teacher: cloze only or cloze + a consistency task")
    p.add_argument("--backbone", default="bert4rec", choices=tuple(BACKBONES),
                   help="bert4rec: the paper's cloze teacher (default); gru4rec / sasrec: GRU4Rec / SASRec-CE "
                        "trained with next-item CE on every prefix + the task (presets of gru4rec / sasrec_ce)")
    p.add_argument("--dataset", required=True, help="beauty, toys, sports, lastfm, NAME (in the data folder) or a .txt path")
    p.add_argument("--preset", default="cpu", choices=PRESETS, help="model size and optimisation (default: cpu)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--seed", type=int, default=42)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from the run's checkpoint; a finished run is kept as is (default)")
    g.add_argument("--fresh", dest="resume", action="store_false", help="ignore any checkpoint and train from scratch")
    p.add_argument("--data-dir", default=None, help="data folder (default: $SSI_DATA_DIR, else ./data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
                   help="override a model/trainer/cloze/consistency config field, e.g. --set dim=128 --set lr=5e-4")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads per process (default: torch's choice; 1 helps on a busy machine)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world = init_distributed()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s [rank {rank}/{world}] %(name)s: %(message)s")
    try:
        ds = load_dataset(args.dataset, args.data_dir)
        metrics = train_teacher(args.variant, ds, args.preset, args.out, seed=args.seed, resume=args.resume,
                                overrides=dict(args.overrides), progress=args.progress, backbone=args.backbone)
        if rank == 0:
            print(json.dumps({"run_dir": str(args.out), "test": metrics["test"],
                              "best_epoch": metrics["best_epoch"], "wall_time_s": metrics["wall_time_s"]}, indent=2))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
