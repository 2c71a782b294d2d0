"""Resume on an unreadable ``checkpoint.pt``: one warning line naming the file (no torch traceback), the
bad file kept aside, and the run trained again from epoch 1 to the result of an uninterrupted run."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from protocol import SequenceDataset, load_dataset, train_sequences
from tests.conftest import capturing
from training.runs import CheckpointError, load_checkpoint
from training.trainer import TrainConfig, TrainTask, fit

NUM_ITEMS = 120


@dataclass
class TinyConfig:
    num_items: int
    dim: int = 8


class Tiny(nn.Module):
    """Mean of item embeddings -> query; dot product with an item table (the servable contract)."""

    model_name = "tiny"
    config_class = TinyConfig
    fixed_length = False
    uses_user = False

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.num_items + 1, config.dim, padding_idx=0)
        self.out = nn.Parameter(0.1 * torch.randn(config.num_items, config.dim))

    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        mask = (history > 0).float().unsqueeze(-1)
        return (self.emb(history) * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def item_vectors(self) -> torch.Tensor:
        return self.out


class NextItemTask(TrainTask):
    def __init__(self, ds: SequenceDataset) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = Tiny(TinyConfig(ds.num_items))
        seqs = [s for s in train_sequences(ds) if len(s) >= 2]
        self.hist = torch.tensor(np.stack([np.pad(s[-6:-1], (5 - len(s[-6:-1]), 0)) for s in seqs]))
        self.target = torch.tensor([int(s[-1]) for s in seqs])

    def num_batches(self, world: int) -> int:
        return 2

    def batches(self, epoch: int, rng: np.random.Generator, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.from_numpy(rng.permutation(len(self.target)))
        for part in order.chunk(2):
            yield {"hist": self.hist[part], "target": self.target[part]}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model.encode(batch["hist"]) @ self.model.item_vectors().T
        return {"loss": nn.functional.cross_entropy(logits, batch["target"] - 1)}


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> SequenceDataset:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("ckpt_data") / "Walk.txt"
    lines = []
    for u in range(1, 61):
        start, n = int(rng.integers(0, NUM_ITEMS)), int(rng.integers(5, 10))
        lines.append(f"{u} " + " ".join(str((start + k) % NUM_ITEMS + 1) for k in range(n)))
    path.write_text("\n".join(lines) + "\n")
    return load_dataset(str(path))


CFG = TrainConfig(epochs=3, patience=10, batch_size=32, progress=False, device="cpu", eval_batch_size=64)


class Stop(Exception):
    pass


def _interrupted(ds: SequenceDataset, run_dir: Path, at_epoch: int) -> None:
    task = NextItemTask(ds)

    def stop(epoch: int) -> None:
        if epoch == at_epoch:
            raise Stop

    task.on_epoch_start = stop  # type: ignore[method-assign]
    with pytest.raises(Stop):
        fit(task, ds, CFG, run_dir)
    assert (run_dir / "checkpoint.pt").is_file()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_load_checkpoint_names_the_file_in_one_line(ds: SequenceDataset, tmp_path: Path, damage: str) -> None:
    _interrupted(ds, tmp_path / "run", at_epoch=2)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(e.value) and "\n" not in str(e.value)


def test_not_a_trainer_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError, match="missing task, optimizer"):
        load_checkpoint(path)


def test_truncated_checkpoint_trains_again_with_one_warning(ds: SequenceDataset, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    straight = fit(NextItemTask(ds), ds, CFG, tmp_path / "straight")
    run_dir = tmp_path / "resumed"
    _interrupted(ds, run_dir, at_epoch=3)
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # a copy cut short / a full disk

    with capturing(caplog, "ssi.train", logging.INFO):
        metrics = fit(NextItemTask(ds), ds, CFG, run_dir)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    line = warnings[0].getMessage()
    assert str(ckpt) in line and "unreadable checkpoint" in line and "--fresh" in line and "\n" not in line
    assert not warnings[0].exc_info and "Traceback" not in caplog.text
    assert (run_dir / "checkpoint.pt.corrupt").is_file() and ckpt.is_file()  # kept aside; a new one written
    assert metrics["epochs_run"] == CFG.epochs
    assert metrics["test"] == straight["test"] and metrics["valid"] == straight["valid"]
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]


@pytest.mark.parametrize("select", ["full", "sampled"])
def test_the_kept_epoch_follows_the_configured_validation_protocol(ds: SequenceDataset, tmp_path: Path,
                                                                   select: str) -> None:
    """Both validation NDCG@10 are logged per epoch; the best weights are those of the epoch with the best
    value of the one ``select`` names (full ranking by default: what the server returns)."""
    import dataclasses

    cfg = dataclasses.replace(CFG, epochs=4, select=select)  # type: ignore[arg-type]
    metrics = fit(NextItemTask(ds), ds, cfg, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all("valid_ndcg@10" in row and "valid_full_ndcg@10" in row for row in history)
    key = "valid_full_ndcg@10" if select == "full" else "valid_ndcg@10"
    best = max(history, key=lambda row: (row[key], -row["epoch"]))
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["valid"]["full" if select == "full" else "sampled"]["ndcg@10"] == pytest.approx(best[key])


def test_a_checkpoint_chosen_on_the_other_protocol_is_chosen_again(ds: SequenceDataset, tmp_path: Path) -> None:
    import dataclasses

    run_dir = tmp_path / "run"
    _interrupted(ds, run_dir, at_epoch=3)  # epochs 1-2 chosen on full (the default)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    state["select"] = "sampled"
    torch.save(state, run_dir / "checkpoint.pt")
    metrics = fit(NextItemTask(ds), ds, dataclasses.replace(CFG, epochs=4), run_dir)
    history = json.loads((run_dir / "history.json").read_text())
    best = max(history, key=lambda row: (row["valid_full_ndcg@10"], -row["epoch"]))
    assert metrics["best_epoch"] == best["epoch"]
