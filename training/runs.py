"""Run directories: what a finished training run leaves behind, and how to load its model back.

Layout (see docs/CONTRACTS.md): ``run.json``, ``model_config.json``, ``model.safetensors`` (best),
``checkpoint.pt`` (last epoch, for resume), ``history.csv``/``history.json``, ``metrics.json`` (finished).
"""
from __future__ import annotations

import copy
import dataclasses
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from models import MODELS
from training.io import atomic_write_json, read_json


class RunError(Exception):
    """A run directory that cannot be used; the message names the path."""


def is_finished(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / "metrics.json").is_file()


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[int | None]:
    """Hold an exclusive lock on ``run_dir/.lock`` while training it, so that two invocations sharing
    an ``--out`` (e.g. two ``run_all.py`` side by side) never train the same run at once.

    Yields ``None`` when this process holds the lock, else the PID of the process that does (the
    caller skips the run). ``flock`` locks die with their process: a killed run never leaves a stale one.
    """
    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            yield int(holder) if holder.isdigit() else -1
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield None
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def save_best(model: nn.Module, run_dir: Path) -> None:
    """Write ``model.safetensors`` atomically (config is written once, in ``model_config.json``)."""
    tmp = run_dir / f".model.safetensors.tmp{os.getpid()}"
    save_model(_cpu_twin(model), str(tmp))
    os.replace(tmp, run_dir / "model.safetensors")


def load_best(model: nn.Module, run_dir: Path) -> None:
    """Load ``model.safetensors`` into ``model`` in place, on whatever device it is."""
    twin = _cpu_twin(model)
    load_model(twin, str(run_dir / "model.safetensors"))
    if twin is not model:
        model.load_state_dict(twin.state_dict())


def _cpu_twin(model: nn.Module) -> nn.Module:
    """``model`` itself on the CPU, else a CPU copy: cuDNN keeps an RNN's weights as views of one flat buffer,
    which safetensors refuses to save or load ("None is covering the entire storage"); a CPU copy has a storage
    per tensor and keeps tied weights tied."""
    return copy.deepcopy(model).cpu() if any(p.is_cuda for p in model.parameters()) else model


def write_model_config(model: nn.Module, run_dir: Path) -> None:
    cfg = model.config
    atomic_write_json(run_dir / "model_config.json", {"model": model.model_name, "config": dataclasses.asdict(cfg)})


def build_model(name: str, config: dict[str, Any]) -> nn.Module:
    if name not in MODELS:
        raise RunError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    return cls(cls.config_class(**config))


def load_run_model(run_dir: str | os.PathLike, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a run's best model from ``model_config.json`` + ``model.safetensors`` (no pickle)."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "model_config.json", run_dir / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise RunError(f"{p}: missing; is {run_dir} a finished training run?")
    spec = read_json(cfg_path)
    model = build_model(spec["model"], spec["config"])
    load_model(model, str(weights), device=map_location)
    model.eval()
    info = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    if (run_dir / "metrics.json").is_file():
        info["metrics"] = read_json(run_dir / "metrics.json")
    return model, info


class CheckpointError(RunError):
    """A ``checkpoint.pt`` that cannot be resumed from (truncated, corrupt or not a trainer checkpoint)."""


CHECKPOINT_KEYS = ("task", "optimizer", "epoch", "best", "best_epoch", "bad", "history")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The trainer state in ``path``; ``CheckpointError`` (one line naming the file) when it is unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, zip errors...
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupt ({reason})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a trainer checkpoint (missing {', '.join(missing)})")
    return state
