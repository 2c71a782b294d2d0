"""TeacherTask: cloze masking, DDP sharding, presets/overrides, overfitting, end-to-end runs, resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.bert4rec import BERT4Rec, BERT4RecConfig
from protocol import SequenceDataset, train_sequences
from training.runs import load_run_model
from training.teachers import (
    VARIANTS,
    Backbone,
    ClozeConfig,
    TeacherTask,
    build_teacher,
    main,
    parse_args,
    resolve_setup,
    train_teacher,
)
from training.trainer import fit


def small_task(ds: SequenceDataset, variant: str = "bert4rec", batch: int = 16, **cloze) -> TeacherTask:
    setup = resolve_setup(variant, "smoke", ds.num_items, overrides={"batch_size": batch, **cloze})
    return build_teacher(variant, ds, setup)


# ---- masking ---------------------------------------------------------------------------------------
def test_cloze_masks(tiny_ds: SequenceDataset) -> None:
    task = small_task(tiny_ds, mask_prob=0.3)
    mask_token = task.model.config.mask_token
    rng = np.random.default_rng(0)
    users = np.arange(tiny_ds.num_users)
    width = int(task.lengths.max())
    x = task.padded[users, -width:]
    last = rng.random(len(users)) < 0.3
    inp, target = task.mask(x, last, rng)
    masked = inp == mask_token
    assert np.array_equal(masked, target > 0)  # a target exactly where there is a [MASK]
    assert np.array_equal(target[masked], x[masked])  # ... and it is the hidden item
    assert np.array_equal(inp[~masked], x[~masked])
    assert not (masked & (x == 0)).any()  # padding is never masked
    assert masked.any(1).all()  # at least one target per sequence
    assert np.array_equal(masked[last], np.eye(width, dtype=bool)[[-1] * last.sum()])  # last item only
    share = masked[~last].sum() / (x[~last] > 0).sum()
    assert 0.2 < share < 0.45


def test_epoch_samples_and_batches(tiny_ds: SequenceDataset) -> None:
    task = small_task(tiny_ds, copies=2, last_item_frac=0.5)
    u = tiny_ds.num_users
    users, last = task.epoch_samples(np.random.default_rng(0))
    assert len(users) == task.num_samples() == 2 * u + round(0.5 * u)
    assert np.array_equal(np.bincount(users[~last], minlength=u), np.full(u, 2))
    assert last.sum() == round(0.5 * u) and len(set(users[last].tolist())) == last.sum()
    batches = list(task.batches(1, np.random.default_rng(1), 0, 1))
    assert len(batches) == task.num_batches(1)
    assert sum(len(b["input"]) for b in batches) == task.num_samples()
    for b in batches:
        width = b["input"].shape[1]
        assert width <= task.model.config.max_len
        assert (b["input"][:, 0] != 0).any()  # padded to the batch's longest sequence only


def test_training_items_only(tiny_ds: SequenceDataset) -> None:
    """No validation or test target leaks into training batches."""
    task = small_task(tiny_ds)
    for u, row in enumerate(task.padded):
        expect = train_sequences(tiny_ds)[u][-task.model.config.max_len:]
        assert np.array_equal(row[row > 0], expect)  # s[:-2], most recent max_len items
        assert row[-1] == tiny_ds.sequences[u][-3]


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_equal_and_cover(tiny_ds: SequenceDataset, world: int) -> None:
    task = small_task(tiny_ds, batch=8)
    n = task.num_samples()
    shards = [TeacherTask.shard(n, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert set(np.concatenate(shards).tolist()) == set(range(n))
    if n % world == 0:
        assert len(np.concatenate(shards)) == n
    counts = []
    for r in range(world):
        bs = list(task.batches(3, np.random.default_rng([42, 3]), r, world))
        counts.append(len(bs))
        assert all(len(b["input"]) <= task.rank_batch_size(world) for b in bs)
    assert counts == [task.num_batches(world)] * world
    # together the ranks see every sample of the epoch: as many rows as samples (+ the wrap-around padding)
    assert sum(len(b["input"]) for r in range(world) for b in task.batches(3, np.random.default_rng([42, 3]), r, world)) \
        == len(shards[0]) * world


# ---- configuration ---------------------------------------------------------------------------------
def test_overrides_route_by_field(tiny_ds: SequenceDataset) -> None:
    s = resolve_setup("temporal", "smoke", 100, overrides={"dim": 24, "lr": 5e-4, "mask_prob": 0.4,
                                                           "temperature": 0.5, "max_len": 16})
    assert (s.model.dim, s.train.lr, s.cloze.mask_prob, s.consistency.temperature) == (24, 5e-4, 0.4, 0.5)
    assert s.model.max_len == s.train.max_len == 16
    assert resolve_setup("bert4rec", "cpu", 100).consistency is None
    with pytest.raises(ValueError, match="unknown override"):
        resolve_setup("temporal", "smoke", 100, overrides={"dimension": 3})
    with pytest.raises(ValueError, match="unknown override"):
        resolve_setup("bert4rec", "smoke", 100, overrides={"temperature": 0.5})  # no task to configure
    with pytest.raises(ValueError, match="variant"):
        resolve_setup("sasrec", "smoke", 100)
    with pytest.raises(ValueError, match="seed"):
        resolve_setup("bert4rec", "smoke", 100, overrides={"seed": 1})
    with pytest.raises(ValueError, match="mask_prob"):
        ClozeConfig(mask_prob=0.0)
    with pytest.raises(ValueError, match="last_item_frac"):
        ClozeConfig(last_item_frac=1.5)
    paper = resolve_setup("global", "paper", 100)
    assert (paper.model.dim, paper.model.n_layers, paper.train.lr, paper.train.batch_size) == (256, 8, 1e-3, 256)


# ---- learning --------------------------------------------------------------------------------------
def test_cloze_overfits_a_few_sequences(tmp_path: Path) -> None:
    from protocol import load_dataset

    lines = [" ".join(map(str, [u + 1, *range(8 * u + 1, 8 * u + 11)])) for u in range(8)]  # 8 users, 10 items
    lines.append("9 " + " ".join(map(str, range(100, 300))))  # enough items for the negatives
    (tmp_path / "few.txt").write_text("\n".join(lines) + "\n")
    ds = load_dataset(str(tmp_path / "few.txt"))
    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecConfig(num_items=ds.num_items, max_len=10, dim=64, n_layers=1, n_heads=2, ffn_dim=128,
                                    dropout=0.0, attn_dropout=0.0))
    task = TeacherTask(model, train_sequences(ds)[:8], batch_size=8, cloze=ClozeConfig(mask_prob=0.5))
    probe = task.make_batch(np.arange(8), np.ones(8, bool), np.random.default_rng(0))  # last item masked

    def probe_loss() -> float:
        with torch.no_grad():
            return float(task(probe)["cloze"])

    start = probe_loss()
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)
    for epoch in range(120):
        for batch in task.batches(epoch, np.random.default_rng(epoch), 0, 1):
            loss = task(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    end = probe_loss()
    assert start > 4.0  # ~log(299) before training
    assert end < 0.2 * start, (start, end)


# ---- end to end ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_train_teacher_smoke(tiny_ds: SequenceDataset, tmp_path: Path, variant: str) -> None:
    run = tmp_path / variant
    metrics = train_teacher(variant, tiny_ds, "smoke", run, seed=3, progress=False)
    assert set(metrics["test"]) == {"sampled", "full"} and 0 <= metrics["test"]["sampled"]["ndcg@10"] <= 1
    info = json.loads((run / "run.json").read_text())
    assert info["teacher_variant"] == variant and info["model"] == "bert4rec" and info["train_config"]["seed"] == 3
    assert (info["consistency_config"] is None) == (variant == "bert4rec")
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and "train_cloze" in history[0]
    if variant != "bert4rec":
        assert {f"train_{variant}", "train_task_acc", "train_task_chance", "heldout_task_acc"} <= set(history[0])
        best = metrics["task"]["best"]  # the task's accuracies and chance at the best epoch (issue 26)
        assert best["epoch"] == metrics["best_epoch"] and 0 <= best["heldout_task_acc"] <= 1
        assert 0.5 <= best["heldout_task_chance"] <= 1 if variant != "global" else best["heldout_task_chance"] < 0.1
    else:
        assert "task" not in metrics
    model, loaded = load_run_model(run)
    assert isinstance(model, BERT4Rec) and loaded["teacher_variant"] == variant
    weights = load_file(str(run / "model.safetensors"))
    assert set(weights) == set(model.state_dict())  # the servable BERT4Rec only, no task heads
    # a finished run is returned as it is
    assert train_teacher(variant, tiny_ds, "smoke", run, seed=3, progress=False) == metrics


def test_cli(tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    assert "--variant" in capsys.readouterr().out
    args = parse_args(["--variant", "global", "--dataset", "x", "--out", "o", "--fresh", "--set", "lr=0.002",
                       "--set", "dropout=0.3"])
    assert args.resume is False and dict(args.overrides) == {"lr": 0.002, "dropout": 0.3}
    assert parse_args(["--variant", "global", "--dataset", "x", "--out", "o"]).resume is True
    out = tmp_path / "cli"
    assert main(["--variant", "persona", "--dataset", str(tiny_path), "--preset", "smoke", "--out", str(out),
                 "--no-progress", "--set", "epochs=1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_dir"] == str(out) and (out / "metrics.json").is_file()


@pytest.mark.parametrize("backbone", ["bert4rec", "gru4rec"])
@pytest.mark.parametrize("variant", ["temporal", "persona", "global"])
def test_resume_after_kill_matches_an_uninterrupted_run(variant: str, backbone: Backbone, tiny_ds: SequenceDataset,
                                                        tmp_path: Path) -> None:
    """Every task on the paper's backbone and on a causal one: a killed run resumed from its checkpoint ends where
    an uninterrupted one does (per-epoch seeding, optimizer and history in the checkpoint)."""
    setup = resolve_setup(variant, "smoke", tiny_ds.num_items, seed=5,
                          overrides={"epochs": 4, "patience": 10, "batch_size": 16}, progress=False, backbone=backbone)

    class Killed(Exception):
        pass

    def kill_at_3(epoch: int) -> None:
        if epoch == 3:
            raise Killed

    straight = fit(build_teacher("persona", tiny_ds, setup), tiny_ds, setup.train, tmp_path / "straight")

    victim = build_teacher("persona", tiny_ds, setup)
    victim.on_epoch_start = kill_at_3
    with pytest.raises(Killed):
        fit(victim, tiny_ds, setup.train, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    assert len(json.loads((tmp_path / "resumed" / "history.json").read_text())) == 2

    fresh = build_teacher("persona", tiny_ds, setup)
    with torch.no_grad():  # a different start: only the checkpoint can make it match
        for p in fresh.parameters():
            p.normal_()
    resumed = fit(fresh, tiny_ds, setup.train, tmp_path / "resumed", resume=True)

    assert resumed["best_epoch"] == straight["best_epoch"] and resumed["epochs_run"] == 4
    for split in ("valid", "test"):
        for proto in ("sampled", "full"):
            assert resumed[split][proto] == pytest.approx(straight[split][proto], abs=1e-9)
    h1 = json.loads((tmp_path / "straight" / "history.json").read_text())
    h2 = json.loads((tmp_path / "resumed" / "history.json").read_text())
    for a, b in zip(h1, h2):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    w1 = load_file(str(tmp_path / "straight" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)
