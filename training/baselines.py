"""Table 2 baselines trained here: SASRec (BCE and CE), S3-Rec (MIP + SP pre-training, then SASRec
fine-tuning) and GREC (gap filling). MostPop, GRU4Rec, HGN and BERT4Rec are trained elsewhere.

    python -m training.baselines --model sasrec --dataset beauty --preset cpu
    python -m training.baselines --model s3rec --dataset lastfm --preset smoke --out /tmp/s3rec

Every baseline is a ``TrainTask`` trained by ``training.trainer.fit``, so it is validated, early
stopped, checkpointed, resumed and evaluated (sampled + full ranking) exactly like every other model.
One training example per user per epoch: the most recent items of its training part ``s[:-2]``.

- ``sasrec``: next item at every position, the paper's loss: BCE with one sampled negative per
  position (an item the user never interacted with in the window), averaged over real positions.
- ``sasrec_ce``: the same model with softmax cross-entropy over all items (``NextItemConfig.loss``). This
  recipe (``train_config``, ``user_batches``, one window per user) is also the SASRec-CE student's
  (``training.students.STUDENT_RECIPES``), which trains the catalogue's ``sasrec_ce`` row in run_all, alone
  (the same weights as here, bit for bit) or distilled from teachers.
- ``s3rec``: stage 1 in ``run_dir/pretrain`` (MIP + SP, bidirectional encoder; validated with the
  MIP head on a [MASK] appended to the history), stage 2 in ``run_dir``: SASRec-BCE fine-tuning
  from stage 1's best weights (with 3x the patience). Resume works for both stages.
- ``grec``: cross-entropy at the gap positions (see ``models/grec.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model
from torch import nn

from models.grec import GRec
from models.s3rec import S3Rec
from models.sasrec import SASRec
from protocol import SequenceDataset, load_dataset, pad_left, train_sequences
from protocol.data import sha256_file
from training.scoring import ContractScorer
from training.trainer import TrainConfig, TrainTask, fit

log = logging.getLogger("ssi.baselines")

BASELINES = ("sasrec", "sasrec_ce", "s3rec", "grec")

# Optimisation per preset (the S3-Rec authors' schedule for cpu/paper: Adam 1e-3, batch 256, patience 10).
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "smoke": TrainConfig(epochs=5, lr=5e-3, batch_size=64, patience=5, eval_batch_size=256),
    "cpu": TrainConfig(epochs=200, patience=10),
    "paper": TrainConfig(epochs=200, patience=10),
}
# S3-Rec pre-training epochs (the authors fine-tune from epoch 150 of their pre-training run).
PRETRAIN_EPOCHS: dict[str, int] = {"smoke": 2, "cpu": 40, "paper": 150}


# ---- sampling helpers ---------------------------------------------------------------------------
def sample_unseen(rng: np.random.Generator, num_items: int, seen: np.ndarray, shape: tuple[int, int],
                  tries: int = 20) -> np.ndarray:
    """(B, K) items uniform in 1..N, redrawn (up to ``tries`` times) where they hit the row's ``seen`` (B, L)
    (SASRec's and S3-Rec's negatives: items the user has not interacted with)."""
    out = rng.integers(1, num_items + 1, size=shape)
    for _ in range(tries):
        hit = (out[:, :, None] == seen[:, None, :]).any(-1)  # (B, K)
        if not hit.any():
            break
        out[hit] = rng.integers(1, num_items + 1, size=int(hit.sum()))
    return out


def first_items(rows: np.ndarray) -> np.ndarray:
    """(B, L) left-padded -> (B, L) bool, True at each row's first real item."""
    real = rows != 0
    before = np.zeros_like(real)
    before[:, 1:] = real[:, :-1]
    return real & ~before


def choose_gaps(rows: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """GREC's gap masking: (B, L) bool, True where an item is hidden from the encoder and predicted.

    Each real item is chosen with probability ``p``; the last item always is (as at inference, where
    the gap follows the history); a row's first item never is (nothing precedes it to predict from).
    """
    real = rows != 0
    first = first_items(rows)
    chosen = real & ~first & (rng.random(rows.shape) < p)
    chosen[:, -1] = real[:, -1] & ~first[:, -1]
    return chosen


def segments(rows: np.ndarray, rng: np.random.Generator, corpus: np.ndarray, mask_token: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """S3-Rec's segment prediction inputs for left-padded rows (B, L).

    Per row of n >= 2 items: a segment of length U[1, n // 2] at a uniform start. Returns the sequence
    with the segment masked, the segment alone ([MASK] at the row's other real positions), a negative
    segment of the same length and positions cut from ``corpus`` (all training items, concatenated),
    and the (B,) rows that have a segment.
    """
    b, width = rows.shape
    n = (rows != 0).sum(1)  # (B,)
    seg_len = (rng.random(b) * np.maximum(n // 2, 1)).astype(np.int64) + 1  # (B,) in [1, n // 2]
    start = width - n + (rng.random(b) * (n - seg_len + 1)).astype(np.int64)  # (B,) column of the segment
    neg_start = (rng.random(b) * (len(corpus) - seg_len + 1)).astype(np.int64)  # (B,)
    col = np.arange(width)[None, :] - start[:, None]  # (B, L) offset inside the segment
    inside = (col >= 0) & (col < seg_len[:, None])  # (B, L)
    masked_real = np.where(rows != 0, mask_token, 0)  # (B, L)
    context = np.where(inside, mask_token, rows)
    pos = np.where(inside, rows, masked_real)
    neg_items = corpus[np.clip(neg_start[:, None] + col, 0, len(corpus) - 1)]  # (B, L)
    neg = np.where(inside, neg_items, masked_real)
    return context, pos, neg, n >= 2


class TrimmedScorer(ContractScorer):
    """``ContractScorer`` that encodes rows of similar history length together, each chunk cut to its
    longest history. Exact for padding-invariant encoders (all of these baselines); on Beauty it
    skips the ~87% of a ``max_len``-wide evaluation batch that is padding."""

    CHUNK = 128

    def __call__(self, histories: np.ndarray, users: np.ndarray, candidates: np.ndarray | None) -> np.ndarray:
        lengths = (histories != 0).sum(1)  # (B,)
        order = np.argsort(lengths, kind="stable")
        parts = []
        for rows in np.array_split(order, math.ceil(len(order) / self.CHUNK)):
            width = max(1, int(lengths[rows].max()))
            cand = None if candidates is None else candidates[rows]
            parts.append(super().__call__(histories[rows][:, -width:], users[rows], cand))
        out = np.empty((len(order), parts[0].shape[1]), dtype=parts[0].dtype)
        out[order] = np.concatenate(parts)
        return out


# ---- tasks --------------------------------------------------------------------------------------
def user_batches(rng: np.random.Generator, lengths: np.ndarray, batch_size: int, rank: int, world: int,
                 pool: int = 16) -> list[np.ndarray]:
    """One epoch's batches of user rows for this rank (equal shards: every rank runs as many steps): the users
    shuffled, each pool of ``pool`` batches sorted by ``lengths`` (U,) and cut into ``batch_size`` rows, the
    batches shuffled again. ``SequenceTask``'s batches, and the SASRec student's (``training.students``), so
    that SASRec-CE distilled trains on exactly the batches of the ``sasrec_ce`` baseline."""
    per_rank = len(lengths) // world
    mine = rng.permutation(len(lengths))[rank * per_rank : (rank + 1) * per_rank]
    size = pool * batch_size
    pools = np.split(mine, range(size, per_rank, size))
    pools = [p[np.argsort(lengths[p], kind="stable")] for p in pools]  # sorted by length
    batches = [b for p in pools for b in np.split(p, range(batch_size, len(p), batch_size))]
    return [batches[i] for i in rng.permutation(len(batches))]


class SequenceTask(TrainTask):
    """One window per user per epoch (the last ``window`` items of its training part), shuffled.

    Length bucketing: users are shuffled, each pool of ``POOL`` batches is sorted by length, and the
    batches are shuffled again; a batch is padded only to its longest row. Padding changes no result
    (right-aligned positions, masked keys), so this only removes work: on Beauty 87% of a
    ``max_len``-wide batch would be padding.
    """

    POOL = 16  # batches per sorted pool

    def __init__(self, model: nn.Module, ds: SequenceDataset, batch_size: int, window: int):
        super().__init__()
        self.model = model
        self.seqs = train_sequences(ds)
        self.lengths = np.asarray([min(len(s), window) for s in self.seqs])
        self.num_items = ds.num_items
        self.batch_size, self.window = batch_size, window

    def num_batches(self, world: int) -> int:
        return math.ceil((len(self.seqs) // world) / self.batch_size)

    def batch_users(self, rng: np.random.Generator, rank: int, world: int) -> list[np.ndarray]:
        """This rank's batches of user rows for one epoch (equal shards: every rank runs as many steps)."""
        return user_batches(rng, self.lengths, self.batch_size, rank, world, self.POOL)

    def batches(self, epoch: int, rng: np.random.Generator, rank: int,
                world: int) -> Iterator[dict[str, torch.Tensor]]:
        for users in self.batch_users(rng, rank, world):
            width = max(2, int(self.lengths[users].max()))
            rows = pad_left([self.seqs[u] for u in users], width)  # (B, width <= window)
            yield {k: torch.from_numpy(v) for k, v in self.make_batch(rows, rng).items()}

    def make_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def scorer(self, device: torch.device) -> ContractScorer:
        return TrimmedScorer(self.model, device)


@dataclass
class NextItemConfig:
    loss: Literal["bce", "ce"] = "bce"  # bce: SASRec's loss (one sampled negative per position)


class NextItemTask(SequenceTask):
    """SASRec training (and S3-Rec fine-tuning): causal encoder, every position predicts the next item."""

    def __init__(self, model: SASRec, ds: SequenceDataset, batch_size: int, cfg: NextItemConfig):
        super().__init__(model, ds, batch_size, model.config.max_len + 1)
        self.cfg = cfg

    def make_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        inputs, targets = rows[:, :-1], rows[:, 1:]  # (B, L) each
        targets = np.where(inputs != 0, targets, 0)  # a target needs an input before it
        batch = {"inputs": inputs, "targets": targets}
        if self.cfg.loss == "bce":
            batch["negatives"] = sample_unseen(rng, self.num_items, rows, targets.shape)
        return batch

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.model.hidden_states(batch["inputs"], causal=True)  # (B, L, d)
        valid = batch["targets"] != 0  # (B, L)
        hv, targets = h[valid], batch["targets"][valid]  # (T, d), (T,)
        if self.cfg.loss == "ce":
            return {"loss": F.cross_entropy(self.model.logits(hv), targets - 1)}
        items = self.model.item_embeddings()  # (N, d)
        pos = (hv * items[targets - 1]).sum(-1)  # (T,)
        neg = (hv * items[batch["negatives"][valid] - 1]).sum(-1)  # (T,)
        return {"loss": (F.softplus(-pos) + F.softplus(neg)).mean()}


@dataclass
class S3RecPretrainConfig:
    mask_p: float = 0.2  # MIP: probability that an item is masked (the last item always is)
    mip_weight: float = 1.0  # the S3-Rec authors' weights
    sp_weight: float = 0.5


class ClozeView(nn.Module):
    """S3-Rec's pre-trained encoder as a next-item scorer: MIP head on a [MASK] after the history."""

    uses_user = False

    def __init__(self, model: S3Rec):
        super().__init__()
        self.model = model
        self.train(model.training)  # a scorer restores the view's mode, i.e. the model's

    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.cloze_encode(history)

    def item_vectors(self) -> torch.Tensor:
        return self.model.item_embeddings()


class S3RecPretrainTask(SequenceTask):
    """MIP + SP on a bidirectional encoder, each with one sampled negative and the pairwise loss
    ``softplus(f(neg) - f(pos)) = -log sigmoid(f(pos) - f(neg))`` on raw bilinear scores.

    Choice: the S3-Rec paper writes the pairwise ranking loss on the scores; the authors' code applies
    ``sigmoid(sigmoid(f_pos) - sigmoid(f_neg))`` inside a BCE, which bounds the loss and saturates the
    gradient, so the paper's form is used. Losses are means (MIP over masked positions, SP over rows),
    not sums, so ``sp_weight`` weighs a row's SP against one masked item. One window per user per epoch,
    not every prefix as in the authors' code (the bidirectional MIP already trains every position).
    """

    def __init__(self, model: S3Rec, ds: SequenceDataset, batch_size: int, cfg: S3RecPretrainConfig):
        super().__init__(model, ds, batch_size, model.config.max_len)
        self.cfg = cfg
        self.corpus = np.concatenate([s for s in self.seqs if len(s)])  # negative segments come from here

    def make_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        mask = self.model.config.mask_token
        real = rows != 0
        chosen = real & (rng.random(rows.shape) < self.cfg.mask_p)
        chosen[:, -1] = real[:, -1]
        context, pos, neg, has_segment = segments(rows, rng, self.corpus, mask)
        return {"items": rows, "masked": np.where(chosen, mask, rows), "chosen": chosen,
                "negatives": sample_unseen(rng, self.num_items, rows, rows.shape),
                "sp_context": context, "sp_pos": pos, "sp_neg": neg, "sp_valid": has_segment}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m, items = self.model, self.model.item_embeddings()  # (N, d)
        chosen = batch["chosen"]
        h = m.hidden_states(batch["masked"], causal=False)[chosen]  # (T, d)
        f_pos = m.mip_scores(h, items[batch["items"][chosen] - 1])  # (T,)
        f_neg = m.mip_scores(h, items[batch["negatives"][chosen] - 1])
        mip = F.softplus(f_neg - f_pos).mean()
        seqs = torch.cat([batch["sp_context"], batch["sp_pos"], batch["sp_neg"]])  # (3B, L)
        ctx, seg_pos, seg_neg = m.hidden_states(seqs, causal=False)[:, -1].chunk(3)  # (B, d) each
        v = batch["sp_valid"].to(ctx.dtype)  # (B,) rows with a segment (n >= 2)
        sp_rows = F.softplus(m.sp_scores(ctx, seg_neg) - m.sp_scores(ctx, seg_pos))  # (B,)
        sp = (sp_rows * v).sum() / v.sum().clamp(min=1)
        return {"loss": self.cfg.mip_weight * mip + self.cfg.sp_weight * sp, "mip": mip, "sp": sp}

    def scorer(self, device: torch.device) -> ContractScorer:
        return TrimmedScorer(ClozeView(self.model), device)


@dataclass
class GRecTaskConfig:
    gap_p: float = 0.3  # probability that an item is a gap (the last one always is); the paper gives none


class GRecTask(SequenceTask):
    """GREC's gap filling: softmax cross-entropy over all items at the chosen (gap) positions."""

    def __init__(self, model: GRec, ds: SequenceDataset, batch_size: int, cfg: GRecTaskConfig):
        super().__init__(model, ds, batch_size, model.config.max_len)
        self.cfg = cfg

    def make_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"items": rows, "chosen": choose_gaps(rows, rng, self.cfg.gap_p)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        items, chosen = batch["items"], batch["chosen"]
        h = self.model.decode(*self.model.gap_inputs(items, chosen))  # (B, L, d)
        predict = chosen[:, 1:]  # position t predicts the item at t + 1
        logits = self.model.logits(h[:, :-1][predict])  # (T, N)
        return {"loss": F.cross_entropy(logits, items[:, 1:][predict] - 1)}


# ---- stages and entry point ---------------------------------------------------------------------
@dataclass
class Stage:
    """One ``fit``: a task, its optimisation, its run folder, and optionally a run to start from."""

    task: TrainTask
    config: TrainConfig
    run_dir: Path
    info: dict[str, Any]
    init_from: Path | None = None  # a run folder whose best weights (model.safetensors) initialise the model


def train_config(preset: str, model: nn.Module, seed: int, progress: bool, **changes: Any) -> TrainConfig:
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(TRAIN_PRESETS)}")
    return dataclasses.replace(TRAIN_PRESETS[preset], seed=seed, max_len=model.config.max_len,
                               progress=progress, **changes)


def build_stages(name: str, ds: SequenceDataset, preset: str, run_dir: Path, seed: int = 42,
                 progress: bool = True) -> list[Stage]:
    """The ``fit`` calls that train baseline ``name`` (two for S3-Rec, one otherwise)."""
    torch.manual_seed(seed)  # model initialisation
    if name in ("sasrec", "sasrec_ce"):
        model = SASRec(SASRec.config_class.preset(preset, num_items=ds.num_items))
        cfg = train_config(preset, model, seed, progress)
        task_cfg = NextItemConfig(loss="ce" if name == "sasrec_ce" else "bce")
        task = NextItemTask(model, ds, cfg.batch_size, task_cfg)
        return [Stage(task, cfg, run_dir, {"baseline": name, "task": dataclasses.asdict(task_cfg)})]
    if name == "s3rec":
        pre_model = S3Rec(S3Rec.config_class.preset(preset, num_items=ds.num_items))
        pre_cfg = train_config(preset, pre_model, seed, progress, epochs=PRETRAIN_EPOCHS[preset])
        pre_task_cfg = S3RecPretrainConfig()
        pre_task = S3RecPretrainTask(pre_model, ds, pre_cfg.batch_size, pre_task_cfg)
        model = S3Rec(pre_model.config)
        # Fine-tuning starts from features that already score well (epoch 1 matches SASRec's epoch ~9 on
        # Beauty) and then dips while the causal head re-learns them: a patience of 10 stops it right there.
        cfg = train_config(preset, model, seed, progress, patience=3 * TRAIN_PRESETS[preset].patience)
        task_cfg = NextItemConfig(loss="bce")  # the authors fine-tune with SASRec's BCE
        return [Stage(pre_task, pre_cfg, run_dir / "pretrain",
                      {"baseline": name, "stage": "pretrain", "task": dataclasses.asdict(pre_task_cfg)}),
                Stage(NextItemTask(model, ds, cfg.batch_size, task_cfg), cfg, run_dir,
                      {"baseline": name, "stage": "finetune", "task": dataclasses.asdict(task_cfg)},
                      init_from=run_dir / "pretrain")]
    if name == "grec":
        model = GRec(GRec.config_class.preset(preset, num_items=ds.num_items))
        cfg = train_config(preset, model, seed, progress)
        task_cfg = GRecTaskConfig()
        task = GRecTask(model, ds, cfg.batch_size, task_cfg)
        return [Stage(task, cfg, run_dir, {"baseline": name, "task": dataclasses.asdict(task_cfg)})]
    raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")


def init_from_run(model: nn.Module, source: Path) -> str:
    """Load ``source/model.safetensors`` (strict) into ``model``; returns the file's sha256."""
    weights = source / "model.safetensors"
    load_model(model, str(weights))
    return sha256_file(weights)


def train_baseline(name: str, ds: SequenceDataset, preset: str, run_dir: str | Path, seed: int = 42,
                   resume: bool = True, progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Train baseline ``name`` (``sasrec``, ``sasrec_ce``, ``s3rec``, ``grec``) into ``run_dir``; returns
    the final metrics (a finished run is loaded, an interrupted one resumed, stage by stage). ``device``
    (auto | cpu | cuda) sets every stage's ``TrainConfig.device``; None keeps the preset's (auto)."""
    metrics: dict[str, Any] = {}
    for stage in build_stages(name, ds, preset, Path(run_dir), seed, progress):
        if device is not None:
            stage.config = dataclasses.replace(stage.config, device=device)
        if stage.init_from is not None:  # a resumed stage's checkpoint overrides these weights
            stage.info["init_from"] = str(stage.init_from)
            stage.info["init_sha256"] = init_from_run(stage.task.model, stage.init_from)
            log.info("%s: %s starts from %s (sha256 %s)", name, stage.run_dir, stage.init_from,
                     stage.info["init_sha256"][:12])
        metrics = fit(stage.task, ds, stage.config, stage.run_dir, resume=resume, run_info=stage.info)
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=BASELINES, help="baseline to train")
    p.add_argument("--dataset", required=True,
                   help="dataset name (beauty, toys, sports, lastfm or any NAME.txt)")
    p.add_argument("--preset", default="cpu", choices=tuple(TRAIN_PRESETS),
                   help="sizes and schedule: smoke (seconds), cpu (default), paper")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default: artifacts/runs/<dataset>/<model>/seed<seed>)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data folder (default: $SSI_DATA_DIR, else ./data)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fresh", action="store_true", help="ignore a finished or interrupted run and retrain")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, args.data_dir)
    out = args.out or Path("artifacts/runs") / ds.name / args.model / f"seed{args.seed}"
    m = train_baseline(args.model, ds, args.preset, out, seed=args.seed, resume=not args.fresh,
                       progress=not args.quiet)
    for split in ("valid", "test"):
        for proto in ("sampled", "full"):
            r = m[split][proto]
            print(f"{args.model} {ds.name} {split:5s} {proto:7s} "
                  f"R@10 {r['recall@10']:.4f} N@10 {r['ndcg@10']:.4f}")
    print(f"run folder: {out}")


if __name__ == "__main__":
    main()
