"""S3-Rec: pre-training inputs (MIP, SP), pre-training -> fine-tuning hand-off, resume across stages."""
from __future__ import annotations

import os

import numpy as np
import torch
from safetensors.torch import load_file

from models.s3rec import S3Rec, S3RecConfig
from protocol import pad_left
from protocol.data import sha256_file
from training.baselines import S3RecPretrainConfig, S3RecPretrainTask, build_stages, segments, train_baseline
from training.io import read_json

MASK = 99


def test_segments():
    rng = np.random.default_rng(0)
    rows = pad_left([rng.integers(1, 50, size=int(n)) for n in rng.integers(1, 12, size=500)], 12)
    corpus = np.arange(1000, 1100)
    context, pos, neg, valid = segments(rows, rng, corpus, MASK)
    n = (rows != 0).sum(1)
    assert (valid == (n >= 2)).all()
    seg = context == MASK  # the masked segment
    seg_len = seg.sum(1)
    assert ((seg_len >= 1) & (seg_len <= np.maximum(n // 2, 1)))[valid].all()
    for r in np.flatnonzero(valid):
        cols = np.flatnonzero(seg[r])
        assert (np.diff(cols) == 1).all()  # contiguous
    real = rows != 0
    assert (context[~seg] == rows[~seg]).all()
    assert (pos[seg] == rows[seg]).all() and (pos[real & ~seg] == MASK).all() and (pos[~real] == 0).all()
    assert (neg[seg] >= 1000).all() and (neg[real & ~seg] == MASK).all() and (neg[~real] == 0).all()
    negs = [neg[r][seg[r]] for r in np.flatnonzero(valid)]
    assert all((np.diff(x) == 1).all() for x in negs)  # a contiguous piece of the corpus


def test_pretrain_batch(pattern_ds):
    model = S3Rec(S3RecConfig.preset("smoke", num_items=pattern_ds.num_items))
    task = S3RecPretrainTask(model, pattern_ds, 64, S3RecPretrainConfig(mask_p=0.2))
    batch = {k: v.numpy() for k, v in next(iter(task.batches(1, np.random.default_rng(0), 0, 1))).items()}
    items, chosen = batch["items"], batch["chosen"]
    assert (chosen[:, -1] == (items[:, -1] != 0)).all()  # the last item is always masked
    assert (batch["masked"][chosen] == model.config.mask_token).all()
    assert (batch["masked"][~chosen] == items[~chosen]).all()
    assert not (batch["negatives"][:, :, None] == items[:, None, :]).any(-1)[chosen].any()
    out = task(next(iter(task.batches(1, np.random.default_rng(0), 0, 1))))
    assert set(out) == {"loss", "mip", "sp"} and all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert model.mip.weight.grad.abs().sum() > 0 and model.sp.weight.grad.abs().sum() > 0


def test_pretrain_scorer_uses_the_mip_head(pattern_ds):
    torch.manual_seed(0)
    model = S3Rec(S3RecConfig.preset("smoke", num_items=pattern_ds.num_items)).eval()
    task = S3RecPretrainTask(model, pattern_ds, 64, S3RecPretrainConfig())
    h = pad_left([np.array([1, 2, 3]), np.array([7, 8])], 5)
    scores = task.scorer(torch.device("cpu"))(h, np.arange(2), None)  # (2, N + 1)
    with torch.no_grad():
        want = model.cloze_encode(torch.from_numpy(h)) @ model.item_embeddings().T
    np.testing.assert_allclose(scores[:, 1:], want.numpy(), rtol=1e-5, atol=1e-5)


def test_finetune_starts_from_pretrained_weights(smoke_runs, pattern_ds, tmp_path):
    run_dir, _ = smoke_runs["s3rec"]
    pre = run_dir / "pretrain"
    assert (pre / "metrics.json").is_file() and (run_dir / "metrics.json").is_file()
    info = read_json(run_dir / "run.json")
    assert info["stage"] == "finetune" and info["init_sha256"] == sha256_file(pre / "model.safetensors")
    assert read_json(pre / "run.json")["stage"] == "pretrain"

    pretrained = load_file(str(pre / "model.safetensors"))
    stages = build_stages("s3rec", pattern_ds, "smoke", run_dir, progress=False)
    fresh = {k: v.clone() for k, v in stages[1].task.model.state_dict().items()}
    from training.baselines import init_from_run

    init_from_run(stages[1].task.model, pre)
    loaded = stages[1].task.model.state_dict()
    assert all(torch.equal(loaded[k], pretrained[k]) for k in pretrained)
    assert not torch.equal(fresh["tok_emb.weight"], pretrained["tok_emb.weight"])
    finetuned = load_file(str(run_dir / "model.safetensors"))
    assert not torch.equal(finetuned["tok_emb.weight"], pretrained["tok_emb.weight"])  # it was trained
    # fine-tuning never uses the MIP/SP heads, so the trained run still holds the pre-trained ones
    for k in ("mip.weight", "sp.weight"):
        assert torch.equal(finetuned[k], pretrained[k]) and not torch.equal(fresh[k], pretrained[k])


def test_resume_across_stages(smoke_runs, pattern_ds):
    """A finished run is returned as is; a run killed after its last epoch only re-evaluates."""
    run_dir, metrics = smoke_runs["s3rec"]
    weights = run_dir / "model.safetensors"
    stamp = os.stat(weights).st_mtime_ns
    again = train_baseline("s3rec", pattern_ds, "smoke", run_dir, progress=False)
    assert again == metrics and os.stat(weights).st_mtime_ns == stamp
    (run_dir / "metrics.json").unlink()  # as if killed before the final evaluation
    resumed = train_baseline("s3rec", pattern_ds, "smoke", run_dir, progress=False)
    assert os.stat(weights).st_mtime_ns == stamp  # no epoch was trained again
    for split in ("valid", "test"):
        assert resumed[split] == metrics[split]
