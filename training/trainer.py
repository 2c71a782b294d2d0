"""One trainer for every model: epochs, validation, early stopping, checkpoints, resume, DDP.

A model's training objective is a ``TrainTask``: an ``nn.Module`` that owns the servable ``model``
(plus any heads or learnable weights), yields CPU batches for an epoch and returns its loss terms.
The trainer is the same for teachers, students and baselines.

Determinism: epoch ``e`` draws from ``np.random.default_rng([seed, e])`` and ``torch.manual_seed``
of the same pair, so a run resumed from the checkpoint of epoch ``e - 1`` sees exactly the batches,
masks and dropout of an uninterrupted run and ends with the same best metrics.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from protocol import Negatives, SequenceDataset, evaluate, load_or_create_negatives
from training.io import atomic_torch_save, atomic_write_json, atomic_write_text
from training.runs import (
    CheckpointError,
    is_finished,
    load_best,
    load_checkpoint,
    save_best,
    write_model_config,
)
from training.scoring import ContractScorer

log = logging.getLogger("ssi.train")

SELECT_METRIC = "ndcg@10"
# Checkpoints and early stopping follow validation NDCG@10 under the full ranking: the ranking the server
# returns (every item, the user's history excluded). Sampled NDCG@10 (99 stored negatives, the paper's
# protocol) is logged beside it as ``valid_ndcg@10``; it can order models differently (Krichene & Rendle,
# KDD 2020), so it chooses only where ``TrainConfig.select = "sampled"`` asks for it.
SelectProtocol = Literal["full", "sampled"]


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping; model hyper-parameters live in each model's own config."""

    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    batch_size: int = 256
    grad_clip: float | None = 5.0
    patience: int = 10  # validations without a better validation NDCG@10 before stopping
    select: SelectProtocol = "full"  # which validation NDCG@10 keeps the best weights and stops early
    eval_every: int = 1
    max_len: int = 50
    seed: int = 42
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA only
    eval_batch_size: int = 512
    progress: bool = True


def resolve_device(name: str = "auto") -> torch.device:
    """``TrainConfig.device`` -> a torch device: ``auto`` is CUDA when present, else CPU; any other name as
    given. The device comes only from the config (``run_all --device`` passes it down as an argument)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TrainTask(nn.Module):
    """Base class of a training objective. Subclasses set ``self.model`` and implement the hooks."""

    model: nn.Module

    def batches(self, epoch: int, rng: np.random.Generator, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
        """CPU batches of one epoch for this rank (shard by ``rank``/``world`` under DDP)."""
        raise NotImplementedError

    def num_batches(self, world: int) -> int:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms; must include ``loss`` (what is minimised)."""
        raise NotImplementedError

    def scorer(self, device: torch.device) -> ContractScorer:
        return ContractScorer(self.model, device)

    def epoch_log(self) -> dict[str, float]:
        """Extra per-epoch values for the history (e.g. learned teacher weights)."""
        return {}

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for per-epoch preparation (e.g. precomputing teacher logits)."""

    def selects(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` takes part in model selection and early stopping (False: a warm-up epoch,
        validated and logged but neither kept as best nor counted against the patience)."""
        return True

    def final_log(self, history: list[dict[str, Any]], best_epoch: int) -> dict[str, Any]:
        """Extra entries of ``metrics.json`` from the history (e.g. a teacher's task accuracy at the best epoch)."""
        return {}


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _seed_epoch(seed: int, epoch: int) -> np.random.Generator:
    torch.manual_seed(seed * 100_003 + epoch)
    return np.random.default_rng([seed, epoch])


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_json(run_dir / "history.json", history)
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in d.items())


class Trainer:
    def __init__(self, task: TrainTask, ds: SequenceDataset, cfg: TrainConfig, run_dir: str | os.PathLike,
                 negatives: Negatives | None = None, run_info: dict[str, Any] | None = None):
        self.task, self.ds, self.cfg = task, ds, cfg
        self.run_dir = Path(run_dir)
        self.negatives = negatives or load_or_create_negatives(ds)
        self.rank, self.world = dist_info()
        self.device = resolve_device(cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.run_info = run_info or {}
        self.task.to(self.device)
        params = [p for p in self.task.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.wrapped: nn.Module = self.task
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.task, device_ids=ids, find_unused_parameters=True)

    # ---- bookkeeping ----------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _state(self, epoch: int, best: float, best_epoch: int, bad: int, history: list) -> dict[str, Any]:
        return {"task": self.task.state_dict(), "optimizer": self.opt.state_dict(), "epoch": epoch,
                "best": best, "best_epoch": best_epoch, "bad": bad, "history": history,
                "select": self.cfg.select, "torch_rng": torch.get_rng_state()}

    def _resume_state(self, ckpt: Path) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None when it is unreadable (truncated by a full disk, a bad copy):
        then the run starts again from epoch 1, which ends where an uninterrupted run would (per-epoch
        seeding), and the bad file is kept beside it for inspection. One warning line, no traceback."""
        try:
            return load_checkpoint(ckpt)
        except CheckpointError as e:
            if self.is_main:
                kept = ckpt.with_name(ckpt.name + ".corrupt")
                try:
                    os.replace(ckpt, kept)
                except OSError:
                    kept = ckpt
                log.warning("%s; training this run again from epoch 1 (the file is kept as %s; run with --fresh "
                            "to start over on purpose)", e, kept.name)
            return None

    def _write_run_json(self) -> None:
        info = {"model": self.task.model.model_name, "model_config": dataclasses.asdict(self.task.model.config),
                "train_config": dataclasses.asdict(self.cfg), "dataset": self.ds.name,
                "data_sha256": self.ds.sha256, "negatives_sha256": self.negatives.sha256,
                "world_size": self.world, **self.run_info}
        atomic_write_json(self.run_dir / "run.json", info)
        write_model_config(self.task.model, self.run_dir)

    def validate(self) -> dict[str, float]:
        """Validation metrics of both protocols: sampled as ``ndcg@10`` (the history's long-standing keys),
        full ranking as ``full_ndcg@10``; ``select_key`` names the one that chooses."""
        scorer = self.task.scorer(self.device)
        out: dict[str, float] = {}
        for proto, prefix in (("sampled", ""), ("full", "full_")):
            val = evaluate(scorer, self.ds, "valid", proto, max_len=self.cfg.max_len,
                           batch_size=self.cfg.eval_batch_size, negatives=self.negatives)
            out |= {f"{prefix}{k}": v for k, v in val.items()}
        return out

    @property
    def select_key(self) -> str:
        return SELECT_METRIC if self.cfg.select == "sampled" else f"full_{SELECT_METRIC}"

    # ---- training -------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        rng = _seed_epoch(self.cfg.seed, epoch)
        self.task.train()
        self.task.on_epoch_start(epoch)
        sums: dict[str, float] = defaultdict(float)
        n = 0
        total = self.task.num_batches(self.world)
        bar = tqdm(self.task.batches(epoch, rng, self.rank, self.world), total=total, leave=False,
                   desc=f"epoch {epoch}", disable=not (self.cfg.progress and self.is_main), dynamic_ncols=True)
        use_amp = self.cfg.amp and self.device.type == "cuda"
        for batch in bar:
            batch = _to(batch, self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                terms = self.wrapped(batch)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}: {_fmt({k: float(v) for k, v in terms.items()})}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.task.parameters(), self.cfg.grad_clip)
            self.opt.step()
            for k, v in terms.items():
                sums[k] += float(v.detach())
            n += 1
            if n % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
        return {f"train_{k}": v / max(n, 1) for k, v in sums.items()}

    def _stop_flag(self, stop: bool) -> bool:
        if self.world == 1:
            return stop
        t = torch.tensor([int(stop)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.broadcast(t, 0)
        return bool(t.item())

    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train to early stopping (or ``epochs``), keep the best weights, evaluate; returns metrics."""
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_json()
        ckpt = self.run_dir / "checkpoint.pt"
        start, best, best_epoch, bad, history = 1, -math.inf, 0, 0, []
        state = self._resume_state(ckpt) if resume and ckpt.is_file() else None
        if state is not None:
            self.task.load_state_dict(state["task"])
            self.opt.load_state_dict(state["optimizer"])
            start, best, best_epoch, bad = state["epoch"] + 1, state["best"], state["best_epoch"], state["bad"]
            history = list(state["history"])
            if state.get("select", "sampled") != cfg.select:  # a checkpoint chosen on the other protocol
                best, bad = self._rescore(history, best_epoch)
            if self.is_main:
                log.info("%s: resumed after epoch %d (best %s %.4f at epoch %d)", self.run_dir.name, start - 1,
                         self.select_key, best, best_epoch)
        t0 = time.time()
        for epoch in range(start, cfg.epochs + 1):
            if bad >= cfg.patience:
                break
            te = time.time()
            row: dict[str, Any] = {"epoch": epoch, **self.train_epoch(epoch), **self.task.epoch_log()}
            stop = False
            if self.is_main:
                if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                    val = self.validate()
                    row.update({f"valid_{k}": v for k, v in val.items()})
                    if self.task.selects(epoch):  # a warm-up epoch is logged, never kept nor counted
                        if val[self.select_key] > best:
                            best, best_epoch, bad = val[self.select_key], epoch, 0
                            save_best(self.task.model, self.run_dir)
                        else:
                            bad += 1
                row["epoch_time_s"] = round(time.time() - te, 2)
                history.append(row)
                _write_history(self.run_dir, history)
                atomic_torch_save(ckpt, self._state(epoch, best, best_epoch, bad, history))
                log.info("%s epoch %d %s | best %s %.4f @%d | %.1fs", self.run_dir.name, epoch,
                         _fmt({k: v for k, v in row.items() if k.startswith(("train_", "valid_ndcg@10", "valid_full_ndcg@10", "lambda", "heldout_task_acc"))}),
                         self.select_key, best, best_epoch, row["epoch_time_s"])
                stop = bad >= cfg.patience
            if self._stop_flag(stop):
                break
        if not self.is_main:
            return {}
        return self._finish(best_epoch, time.time() - t0, history)

    def _rescore(self, history: list[dict[str, Any]], best_epoch: int) -> tuple[float, int]:
        """(best, validations since) of a resumed history under this run's ``select``: the saved weights stay
        those of ``best_epoch`` (chosen under the other protocol), now worth their value on this one (-inf when
        that epoch logged none: older runs logged sampled only), so any later epoch that beats it replaces them."""
        key = f"valid_{self.select_key}"
        if self.is_main:
            log.warning("%s: checkpoint chosen on another validation metric; %s decides from here on",
                        self.run_dir.name, key)
        best = next((r[key] for r in history if r["epoch"] == best_epoch and key in r), -math.inf)
        return best, sum(1 for r in history if r["epoch"] > best_epoch and key in r)

    def _finish(self, best_epoch: int, wall: float, history: list) -> dict[str, Any]:
        if not (self.run_dir / "model.safetensors").is_file():
            save_best(self.task.model, self.run_dir)
        load_best(self.task.model, self.run_dir)
        scorer = self.task.scorer(self.device)
        metrics: dict[str, Any] = {}
        for split in ("valid", "test"):
            metrics[split] = {p: evaluate(scorer, self.ds, split, p, max_len=self.cfg.max_len,
                                          batch_size=self.cfg.eval_batch_size, negatives=self.negatives)
                              for p in ("sampled", "full")}
        prev_wall = sum(r.get("epoch_time_s", 0.0) for r in history)
        metrics.update({"best_epoch": best_epoch, "epochs_run": len(history), "data_sha256": self.ds.sha256,
                        "negatives_sha256": self.negatives.sha256, "dataset": self.ds.name,
                        "model": self.task.model.model_name, "seed": self.cfg.seed,
                        "wall_time_s": round(max(wall, prev_wall), 1), "device": str(self.device),
                        **self.task.final_log(history, best_epoch)})
        atomic_write_json(self.run_dir / "metrics.json", metrics)
        t = metrics["test"]["sampled"]
        log.info("%s done: test sampled R@10 %.4f N@10 %.4f | full R@10 %.4f N@10 %.4f", self.run_dir.name,
                 t["recall@10"], t["ndcg@10"], metrics["test"]["full"]["recall@10"], metrics["test"]["full"]["ndcg@10"])
        return metrics


def fit(task: TrainTask, ds: SequenceDataset, cfg: TrainConfig, run_dir: str | os.PathLike, resume: bool = True,
        negatives: Negatives | None = None, run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``task`` into ``run_dir``; a finished run (``metrics.json``) is returned as is."""
    if resume and is_finished(run_dir):
        from training.io import read_json
        return read_json(Path(run_dir) / "metrics.json")
    return Trainer(task, ds, cfg, run_dir, negatives, run_info).fit(resume=resume)
