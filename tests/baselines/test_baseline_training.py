"""Baseline training: smoke runs learn, write their run folder, batches and scorers are right."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from models.sasrec import SASRec, SASRecConfig
from protocol import pad_left
from training.baselines import (
    BASELINES,
    NextItemConfig,
    NextItemTask,
    TrimmedScorer,
    build_stages,
    sample_unseen,
)
from training.runs import load_run_model
from training.scoring import ContractScorer

RANDOM_NDCG10 = sum(1 / np.log2(r + 2) for r in range(10)) / 100  # target among 100 random candidates


@pytest.mark.parametrize("name", BASELINES)
def test_smoke_run_learns_and_writes_its_run(name, smoke_runs, pattern_ds):
    run_dir, metrics = smoke_runs[name]
    for f in ("run.json", "model_config.json", "model.safetensors", "checkpoint.pt", "history.csv",
              "metrics.json"):
        assert (run_dir / f).is_file(), f
    for split in ("valid", "test"):
        for proto in ("sampled", "full"):
            assert 0.0 <= metrics[split][proto]["ndcg@10"] <= 1.0
    # the next item is always last + 1: a trained model is far above chance (~0.045)
    assert metrics["test"]["sampled"]["ndcg@10"] > 3 * RANDOM_NDCG10, metrics["test"]["sampled"]
    model, info = load_run_model(run_dir)
    assert (model.model_name, info["dataset"]) == (name.removesuffix("_ce"), pattern_ds.name)
    assert info["baseline"] == name


def test_sasrec_variants_differ_only_in_loss(smoke_runs):
    from training.io import read_json

    bce, ce = (read_json(smoke_runs[n][0] / "run.json") for n in ("sasrec", "sasrec_ce"))
    assert bce["model"] == ce["model"] == "sasrec" and bce["model_config"] == ce["model_config"]
    assert (bce["task"]["loss"], ce["task"]["loss"]) == ("bce", "ce")


def test_next_item_batch(pattern_ds):
    model = SASRec(SASRecConfig.preset("smoke", num_items=pattern_ds.num_items))
    task = NextItemTask(model, pattern_ds, 32, NextItemConfig(loss="bce"))
    batch = next(iter(task.batches(1, np.random.default_rng(0), 0, 1)))
    inputs, targets, negs = (batch[k].numpy() for k in ("inputs", "targets", "negatives"))
    valid = targets != 0
    assert (inputs[valid] != 0).all()
    assert ((inputs[valid] % pattern_ds.num_items) + 1 == targets[valid]).all()  # the pattern: next = i + 1
    assert not (negs[:, :, None] == np.concatenate([inputs, targets], 1)[:, None, :]).any(-1)[valid].any()
    assert inputs.shape[1] == (inputs != 0).sum(1).max() < task.window - 1  # padded to the longest row only


@pytest.mark.parametrize("loss", ("bce", "ce"))
def test_next_item_losses(pattern_ds, loss):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig.preset("smoke", num_items=pattern_ds.num_items)).eval()
    task = NextItemTask(model, pattern_ds, 32, NextItemConfig(loss=loss))
    batch = next(iter(task.batches(1, np.random.default_rng(0), 0, 1)))
    with torch.no_grad():
        got = task(batch)["loss"]
        logits = model.logits(model.hidden_states(batch["inputs"]))  # (B, L, N)
        valid = batch["targets"] != 0
        t = batch["targets"][valid] - 1
        if loss == "ce":
            want = torch.nn.functional.cross_entropy(logits[valid], t)
        else:
            pos = logits[valid].gather(1, t[:, None])[:, 0]
            neg = logits[valid].gather(1, batch["negatives"][valid][:, None] - 1)[:, 0]
            want = -(torch.log(torch.sigmoid(pos)) + torch.log(1 - torch.sigmoid(neg))).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_epoch_sees_every_user_once_in_equal_shards(pattern_ds, tmp_path):
    task = build_stages("sasrec", pattern_ds, "smoke", tmp_path, progress=False)[0].task
    users = np.concatenate(task.batch_users(np.random.default_rng(0), 0, 1))
    assert sorted(users.tolist()) == list(range(pattern_ds.num_users))
    shards = [np.concatenate(task.batch_users(np.random.default_rng(0), r, 3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # equal shards
    assert len(set(np.concatenate(shards).tolist())) == sum(map(len, shards))  # disjoint
    assert len(task.batch_users(np.random.default_rng(0), 0, 3)) == task.num_batches(3)


def test_sample_unseen_avoids_the_row():
    rng = np.random.default_rng(0)
    seen = rng.integers(1, 30, size=(50, 20))
    out = sample_unseen(rng, 40, seen, (50, 20))
    assert out.min() >= 1 and out.max() <= 40
    assert not (out[:, :, None] == seen[:, None, :]).any()


@pytest.mark.parametrize("name", ("sasrec", "s3rec", "grec"))
def test_trimmed_scorer_matches_contract_scorer(name):
    from models import MODELS

    torch.manual_seed(0)
    cls = MODELS[name]
    model = cls(cls.config_class.preset("smoke", num_items=120)).eval()
    rng = np.random.default_rng(1)
    h = pad_left([rng.integers(1, 121, size=int(n)) for n in rng.integers(1, 25, size=300)], 20)
    cand = rng.integers(1, 121, size=(300, 100))
    for c in (cand, None):
        users = np.arange(300)
        want = ContractScorer(model)(h, users, c)
        np.testing.assert_allclose(TrimmedScorer(model)(h, users, c), want, rtol=1e-5, atol=1e-5)


def test_cli_help():
    cmd = [sys.executable, "-m", "training.baselines", "--help"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--model" in out.stdout and "sasrec_ce" in out.stdout
