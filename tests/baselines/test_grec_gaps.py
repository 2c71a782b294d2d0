"""GREC's gap masking: which items become gaps, what encoder and decoder see, and no leakage."""
from __future__ import annotations

import numpy as np
import torch

from models.grec import GRec, GRecConfig
from protocol import pad_left
from training.baselines import GRecTask, GRecTaskConfig, choose_gaps, first_items

N = 50


def model() -> GRec:
    torch.manual_seed(0)
    return GRec(GRecConfig.preset("smoke", num_items=N)).eval()


def rows(rng: np.random.Generator, count: int, width: int) -> np.ndarray:
    seqs = [rng.integers(1, N + 1, size=int(rng.integers(1, width + 1))) for _ in range(count)]
    return pad_left(seqs, width)


def test_choose_gaps_rules_and_rate():
    rng = np.random.default_rng(0)
    r = rows(rng, 4000, 12)
    chosen = choose_gaps(r, rng, 0.3)
    real, first = r != 0, first_items(r)
    assert not (chosen & ~real).any()  # never padding
    assert not (chosen & first).any()  # never a row's first item
    assert (chosen[:, -1] == (real[:, -1] & ~first[:, -1])).all()  # the last item always (if not first)
    inner = real & ~first
    inner[:, -1] = False
    assert abs(chosen[inner].mean() - 0.3) < 0.02  # the others with probability p
    assert (first.sum(1) == 1).all()


def test_gap_inputs_are_complements():
    m = model()
    r = rows(np.random.default_rng(1), 64, 10)
    chosen = choose_gaps(r, np.random.default_rng(2), 0.5)
    items, ch = torch.from_numpy(r), torch.from_numpy(chosen)
    enc, dec = m.gap_inputs(items, ch)
    gap = m.config.gap_token
    pad = items == 0
    assert torch.equal(enc[ch], torch.full_like(enc[ch], gap))
    assert torch.equal(enc[~ch], items[~ch])  # visible items and padding as they are
    assert torch.equal(dec[ch], items[ch])
    assert (dec[~ch & ~pad] == gap).all() and (dec[pad] == 0).all()


def test_no_leakage_but_future_context():
    """The state that predicts gap t+1 ignores every gap item at >= t+1 but sees visible future items."""
    m = model()
    r = torch.arange(1, 13).unsqueeze(0)  # (1, 12) items 1..12, no padding
    chosen = torch.zeros_like(r, dtype=torch.bool)
    chosen[0, [4, 7, 11]] = True
    t = 3  # predicts position 4
    with torch.no_grad():
        base = m.decode(*m.gap_inputs(r, chosen))[0, t]
        hidden_changed = r.clone()
        hidden_changed[0, [4, 7, 11]] = torch.tensor([40, 41, 42])  # the gap items themselves
        same = m.decode(*m.gap_inputs(hidden_changed, chosen))[0, t]
        visible_changed = r.clone()
        visible_changed[0, 6] = 30  # a visible item after the target
        other = m.decode(*m.gap_inputs(visible_changed, chosen))[0, t]
    torch.testing.assert_close(base, same)
    assert not torch.allclose(base, other)


def test_inference_is_a_training_example_with_only_the_last_gap():
    """encode/forward scores the same way the task trains a sequence whose only gap is its last item."""
    m = model()
    hist = rows(np.random.default_rng(3), 6, 9)  # (6, 9)
    target = np.random.default_rng(4).integers(1, N + 1, size=(6, 1))
    seq = np.concatenate([hist, target], axis=1)  # (6, 10)
    chosen = np.zeros_like(seq, dtype=bool)
    chosen[:, -1] = True
    with torch.no_grad():
        h = m.decode(*m.gap_inputs(torch.from_numpy(seq), torch.from_numpy(chosen)))[:, -2]
        torch.testing.assert_close(m.logits(h), m(torch.from_numpy(hist)), rtol=1e-5, atol=1e-5)


def test_task_loss_is_cross_entropy_at_the_gaps(pattern_ds):
    torch.manual_seed(0)
    m = GRec(GRecConfig.preset("smoke", num_items=pattern_ds.num_items)).eval()
    task = GRecTask(m, pattern_ds, 16, GRecTaskConfig(gap_p=0.3))
    batch = next(iter(task.batches(1, np.random.default_rng(0), 0, 1)))
    with torch.no_grad():
        loss = task(batch)["loss"]
        items, chosen = batch["items"], batch["chosen"]
        h = m.decode(*m.gap_inputs(items, chosen))
        per = [torch.nn.functional.cross_entropy(m.logits(h[b, t - 1]), items[b, t] - 1)
               for b, t in zip(*torch.nonzero(chosen, as_tuple=True))]
    torch.testing.assert_close(loss, torch.stack(per).mean())
