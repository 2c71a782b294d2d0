"""The servable contract, checked on every model in ``models.MODELS`` (students, teachers, baselines).

A model registered later is picked up automatically: it is built as
``cls(cls.config_class.preset("smoke", num_items=..., [num_users=...]))``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models import MODELS
from training.runs import load_run_model, save_best, write_model_config
from training.scoring import ContractScorer

N_ITEMS, N_USERS = 40, 9
SERVABLE = sorted(n for n, c in MODELS.items() if hasattr(c, "encode") and hasattr(c, "item_vectors"))


def own_scores(model, history, user):
    """The model's own scores over items 1..N, by a path other than encode @ item_vectors (where known).

    Add an entry here when a model has a separate scoring path; the contract checks it against the
    inner product."""
    paths = {"hgn": lambda: model(history, user), "gru4rec": lambda: model(history)}
    return paths[model.model_name]() if model.model_name in paths else None


def build(name: str):
    cls = MODELS[name]
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    sizes = {"num_items": N_ITEMS} | ({"num_users": N_USERS} if "num_users" in fields else {})
    torch.manual_seed(0)
    model = cls(cls.config_class.preset("smoke", **sizes)).eval()
    perturb(model)
    return model


@torch.no_grad()
def perturb(model: torch.nn.Module) -> None:
    """Move every weight off its initial value, as training would: zero-initialised biases and gates
    hide mistakes (a dropped bias column, padding that reaches a recurrent state). Rows that training
    never changes (``padding_idx``) keep their value."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
            m.weight[m.padding_idx].zero_()


def histories(model, width: int | None = None) -> torch.Tensor:
    """(4, W) left-padded histories of 1, 3, 6 and W items (W = the model's window when fixed)."""
    w = model.config.max_len if model.fixed_length else (width or 12)
    out = torch.zeros(4, w, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    for i, n in enumerate((1, 3, min(6, w), w)):
        out[i, w - n:] = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    return out


def users(model) -> torch.Tensor | None:
    return torch.tensor([1, 4, 9, 2]) if model.uses_user else None


@pytest.fixture(params=SERVABLE)
def model(request):
    return build(request.param)


def test_registry_has_the_students():
    assert {"hgn", "gru4rec"} <= set(SERVABLE)


def test_class_attributes_and_presets(model):
    cls = type(model)
    assert MODELS[cls.model_name] is cls
    assert dataclasses.is_dataclass(cls.config_class) and isinstance(model.config, cls.config_class)
    assert isinstance(cls.fixed_length, bool) and isinstance(cls.uses_user, bool)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    assert "num_items" in fields and (("num_users" in fields) == cls.uses_user)
    if cls.fixed_length:
        assert "max_len" in fields
    for preset in ("smoke", "cpu", "paper"):
        sizes = {"num_items": 123} | ({"num_users": 7} if cls.uses_user else {})
        cfg = cls.config_class.preset(preset, **sizes)
        assert cfg.num_items == 123


def test_shapes_and_inner_product_equals_own_scores(model):
    h, u = histories(model), users(model)
    with torch.no_grad():
        q, items = model.encode(h, u), model.item_vectors()
        own = own_scores(model, h, u)
    assert q.dtype == torch.float32 and items.dtype == torch.float32
    assert q.shape[0] == 4 and items.shape == (N_ITEMS, q.shape[1])
    assert torch.isfinite(q).all() and torch.isfinite(items).all()
    if own is not None:
        torch.testing.assert_close(q @ items.T, own, rtol=1e-5, atol=1e-5)


def test_rows_do_not_depend_on_the_batch(model):
    """Dynamic batching must not change a request's result."""
    h, u = histories(model), users(model)
    with torch.no_grad():
        full = model.encode(h, u)
        rows = torch.cat([model.encode(h[i:i + 1], None if u is None else u[i:i + 1]) for i in range(len(h))])
        again = model.encode(h, u)
    torch.testing.assert_close(full, rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, again, rtol=0, atol=0)


def test_padding_width_does_not_change_the_query(model):
    """The server pads to any width (L is dynamic unless ``fixed_length``)."""
    if model.fixed_length:
        pytest.skip("fixed-length encoder: the export fixes L = config.max_len")
    h, u = histories(model, 8), users(model)
    wide = torch.nn.functional.pad(h, (12, 0))  # the same histories with 12 more padding columns
    with torch.no_grad():
        torch.testing.assert_close(model.encode(h, u), model.encode(wide, u), rtol=1e-5, atol=1e-5)


def test_anonymous_user(model):
    h = histories(model)
    with torch.no_grad():
        anon = model.encode(h, None)
        zero = model.encode(h, torch.zeros(len(h), dtype=torch.long))
        some = model.encode(h, torch.tensor([3, 1, 2, 5]))
    torch.testing.assert_close(anon, zero, rtol=0, atol=0)  # None means user 0
    if not model.uses_user:
        torch.testing.assert_close(anon, some, rtol=0, atol=0)  # ids are ignored
    else:
        assert not torch.allclose(anon, some)  # ids matter


def test_contract_scorer_full_and_sampled_agree(model):
    h = histories(model).numpy()
    rows = np.array([0, 3, 8, 1])  # protocol rows; the scorer passes row + 1
    scorer = ContractScorer(model)
    full = scorer(h, rows, None)
    assert full.shape == (4, N_ITEMS + 1) and np.isneginf(full[:, 0]).all()
    cand = np.array([[1, 5, 40], [2, 2, 7], [40, 39, 38], [10, 20, 30]])
    sampled = scorer(h, rows, cand)
    np.testing.assert_allclose(sampled, np.take_along_axis(full, cand, axis=1), rtol=1e-5, atol=1e-5)


def test_run_folder_round_trip(model, tmp_path):
    save_best(model, tmp_path)
    write_model_config(model, tmp_path)
    loaded, _ = load_run_model(tmp_path)
    h, u = histories(model), users(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(h, u), model.encode(h, u), rtol=0, atol=0)
        torch.testing.assert_close(loaded.item_vectors(), model.item_vectors(), rtol=0, atol=0)
