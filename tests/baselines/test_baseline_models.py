"""SASRec, S3-Rec and GRec as servable models: registry, presets, contract, padding, causality."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from models import MODELS
from protocol import pad_left

NAMES = ("sasrec", "s3rec", "grec")
N = 60


def build(name: str, **overrides):
    torch.manual_seed(0)
    cls = MODELS[name]
    return cls(cls.config_class.preset("smoke", num_items=N, **overrides)).eval()


def histories(rng: np.random.Generator, count: int, max_items: int) -> list[np.ndarray]:
    return [rng.integers(1, N + 1, size=int(rng.integers(1, max_items + 1))) for _ in range(count)]


def as_tensor(seqs: list[np.ndarray], width: int) -> torch.Tensor:
    return torch.from_numpy(pad_left(seqs, width))


@pytest.mark.parametrize("name", NAMES)
def test_registry_and_presets(name):
    cls = MODELS[name]
    assert (cls.model_name, cls.fixed_length, cls.uses_user) == (name, False, False)
    for preset in ("smoke", "cpu", "paper"):
        cfg = cls.config_class.preset(preset, num_items=N)
        assert cfg.num_items == N
        back = cls.config_class(**json.loads(json.dumps(dataclasses.asdict(cfg))))  # run.json round trip
        assert back == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        cls.config_class.preset("huge", num_items=N)


@pytest.mark.parametrize("name", NAMES)
def test_encode_item_vectors_equal_own_scores(name):
    model = build(name)
    h = as_tensor(histories(np.random.default_rng(1), 8, 15), 15)
    with torch.no_grad():
        q, items, own = model.encode(h), model.item_vectors(), model(h)
    assert items.shape[0] == N  # items 1..N only: no padding, [MASK] or [GAP] row
    assert q.shape == (8, items.shape[1])
    torch.testing.assert_close(q @ items.T, own, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tie", (False, True))
def test_grec_bias_is_folded_in(tie):
    model = build("grec", tie_weights=tie)
    with torch.no_grad():
        model.out_bias.normal_()
        h = as_tensor(histories(np.random.default_rng(2), 4, 10), 10)
        q, items = model.encode(h), model.item_vectors()
    assert q.shape[1] == model.config.dim + 1 and torch.all(q[:, -1] == 1)
    torch.testing.assert_close(items[:, -1], model.out_bias)
    torch.testing.assert_close(q @ items.T, model(h), rtol=1e-5, atol=1e-5)
    if tie:
        torch.testing.assert_close(items[:, :-1], model.tok_emb.weight[1 : N + 1])


@pytest.mark.parametrize("name", NAMES)
def test_padding_invariance(name):
    """The amount of left padding (and the batch a history shares) changes nothing."""
    model = build(name)
    seqs = histories(np.random.default_rng(3), 6, model.config.max_len - 1)
    with torch.no_grad():
        tight = model.encode(as_tensor(seqs, max(len(s) for s in seqs)))
        wide = model.encode(as_tensor(seqs, model.config.max_len - 1))
        wider = model.encode(as_tensor(seqs, model.config.max_len + 13))  # wider than the model's window
        alone = torch.cat([model.encode(as_tensor([s], len(s))) for s in seqs])
    for other in (wide, wider, alone):
        torch.testing.assert_close(tight, other, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_long_history_uses_the_last_items(name):
    model = build(name)
    long = torch.from_numpy(np.random.default_rng(4).integers(1, N + 1, size=(3, model.config.max_len + 10)))
    with torch.no_grad():
        torch.testing.assert_close(model.encode(long), model.encode(long[:, -model.config.max_len:]))


@pytest.mark.parametrize("name", NAMES)
def test_encode_depends_on_history(name):
    """A collapsed encoder (ignoring its input) would pass the equalities above; this one would fail."""
    model = build(name)
    h = as_tensor(histories(np.random.default_rng(5), 2, 8), 8)
    h2 = h.clone()
    h2[:, -1] = h2[:, -1] % N + 1
    with torch.no_grad():
        assert not torch.allclose(model.encode(h), model.encode(h2))


@pytest.mark.parametrize("name", ("sasrec", "s3rec"))
def test_causal_attention_ignores_the_future(name):
    model = build(name)
    h = as_tensor(histories(np.random.default_rng(6), 4, 12), 12)
    h2 = h.clone()
    h2[:, -1] = h2[:, -1] % N + 1  # change only the most recent item
    with torch.no_grad():
        causal, causal2 = model.hidden_states(h), model.hidden_states(h2)
        bidir, bidir2 = model.hidden_states(h, causal=False), model.hidden_states(h2, causal=False)
    real = (h[:, :-1] != 0).unsqueeze(-1)
    torch.testing.assert_close(causal[:, :-1] * real, causal2[:, :-1] * real)
    assert not torch.allclose(bidir[:, :-1] * real, bidir2[:, :-1] * real)


def test_padding_rows_stay_finite():
    """A padding query sees no real key under a causal mask; it must not turn into NaN (and spread)."""
    model = build("sasrec").train()
    h = as_tensor([np.array([3, 4]), np.arange(1, 16)], 15)
    out = model.hidden_states(h)
    assert torch.isfinite(out).all()
    out[h != 0].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_s3rec_extends_sasrec_with_mask_token_and_heads():
    sas, s3 = build("sasrec"), build("s3rec")
    assert s3.tok_emb.num_embeddings == sas.tok_emb.num_embeddings + 1
    assert s3.config.mask_token == N + 1
    extra = set(s3.state_dict()) - set(sas.state_dict())
    assert extra == {"mip.weight", "mip.bias", "sp.weight", "sp.bias"}


def test_s3rec_cloze_encode_is_padding_invariant():
    model = build("s3rec")
    seqs = histories(np.random.default_rng(7), 5, 10)
    with torch.no_grad():
        a = model.cloze_encode(as_tensor(seqs, 10))
        b = model.cloze_encode(as_tensor(seqs, 30))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
