"""The three consistency tasks: augmentations, labels, heads and losses."""
from __future__ import annotations

import math

import pytest
import torch

from models.bert4rec import BERT4Rec, BERT4RecConfig
from models.consistency import (
    ConsistencyConfig,
    GlobalSessionConsistency,
    PersonaConsistency,
    SequencePool,
    TemporalConsistency,
    build_consistency,
    info_nce,
    persona_negatives,
    segment_views,
    temporal_negatives,
)

MASK, INT = 1001, 1002


def distinct_batch(b: int = 64, width: int = 12, seed: int = 0) -> torch.Tensor:
    """(b, width) left-padded rows of distinct items (ids 1..1000), lengths 1..width."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.stack([torch.randperm(1000, generator=g)[:width] + 1 for _ in range(b)])
    lengths = torch.randint(1, width + 1, (b,), generator=g)
    return torch.where(torch.arange(width)[None] >= width - lengths[:, None], rows, 0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- temporal --------------------------------------------------------------------------------------
def test_temporal_negative_is_a_different_permutation() -> None:
    x = distinct_batch()
    neg, changed = temporal_negatives(x, ConsistencyConfig(), gen())
    lengths = (x > 0).sum(1)
    assert neg.shape == x.shape
    assert torch.equal(neg == 0, x == 0)  # padding stays where it was
    for row, nrow in zip(x, neg):
        assert sorted(row.tolist()) == sorted(nrow.tolist())  # a permutation
    # distinct items: every row with two items or more really changes, shorter ones cannot
    assert torch.equal(changed, lengths >= 2)
    assert torch.equal(changed, (neg != x).any(1))


def test_temporal_exchanges_whole_ngrams() -> None:
    cfg = ConsistencyConfig(temporal_ngram_min=2, temporal_ngram_max=2, temporal_prob=0.5)
    x = distinct_batch(width=10)
    x[:, :] = torch.where(torch.arange(10)[None] >= 2, torch.where(x > 0, x, 7), 0)  # length 8: four bigrams
    x[:, 2:] = torch.stack([torch.randperm(100, generator=gen(i))[:8] + 1 for i in range(len(x))])
    neg, changed = temporal_negatives(x, cfg, gen(3))
    assert changed.all()
    for row, nrow in zip(x.tolist(), neg.tolist()):
        blocks = {tuple(row[i:i + 2]) for i in range(2, 10, 2)}
        assert {tuple(nrow[i:i + 2]) for i in range(2, 10, 2)} == blocks  # bigrams moved intact
        moved = sum(tuple(nrow[i:i + 2]) != tuple(row[i:i + 2]) for i in range(2, 10, 2))
        assert moved >= 2


def test_temporal_repeated_items_are_not_called_negatives() -> None:
    x = torch.full((8, 6), 5)  # every exchange leaves the row as it was
    neg, changed = temporal_negatives(x, ConsistencyConfig(), gen())
    assert torch.equal(neg, x) and not changed.any()


def test_temporal_batch_labels_and_int_token() -> None:
    cfg = ConsistencyConfig()
    task = TemporalConsistency(16, cfg, int_token=INT, max_len=8)
    x = distinct_batch(b=200, width=10)
    x = x[(x > 0).sum(1) >= 2]
    batch = task.make_batch(x, torch.arange(len(x)), gen())
    inp, label = batch["task_input"], batch["task_label"]
    assert inp.shape == (len(x), 8) and torch.all(inp[:, -1] == INT)
    assert 0.35 < 1 - label.mean().item() < 0.65  # about half negatives
    originals = {tuple(r[-7:].tolist()) for r in x}
    for row, y in zip(inp[:, :-1], label):
        if y == 1:
            assert tuple(row.tolist()) in originals
        else:
            assert tuple(row.tolist()) not in originals


# ---- persona ---------------------------------------------------------------------------------------
def user_pool(users: int = 30, length: int = 10) -> tuple[SequencePool, list[torch.Tensor]]:
    """User u owns items u*100+1 .. u*100+length (disjoint sets), in order."""
    seqs = [torch.arange(length) + u * 100 + 1 for u in range(users)]
    return SequencePool.from_sequences(seqs), seqs


def test_persona_replacements_come_from_other_users() -> None:
    pool, seqs = user_pool()
    x = torch.stack(seqs)  # (30, 10), no padding
    cfg = ConsistencyConfig(persona_ngram_min=1, persona_ngram_max=3)
    neg, changed = persona_negatives(x, torch.arange(30), pool, cfg, gen())
    assert changed.all()
    replaced_any = 0
    for u, (row, nrow) in enumerate(zip(x.tolist(), neg.tolist())):
        diff = [j for j in range(10) if row[j] != nrow[j]]
        assert diff, "at least one n-gram replaced"
        replaced_any += len(diff)
        for j in diff:
            owner = (nrow[j] - 1) // 100
            assert owner != u and 0 <= owner < 30
    assert replaced_any > 30


def test_persona_ngrams_are_contiguous_in_the_donor() -> None:
    pool, seqs = user_pool()
    x = torch.stack(seqs)
    cfg = ConsistencyConfig(persona_ngram_min=3, persona_ngram_max=3, persona_prob=0.0)  # exactly one trigram
    neg, changed = persona_negatives(x, torch.arange(30), pool, cfg, gen(5))
    assert changed.all()
    for u, (row, nrow) in enumerate(zip(x.tolist(), neg.tolist())):
        diff = [j for j in range(10) if row[j] != nrow[j]]
        assert len(diff) == 3 and diff == list(range(diff[0], diff[0] + 3))
        n = nrow[diff[0]:diff[0] + 3]
        assert n[1] == n[0] + 1 and n[2] == n[1] + 1  # in order, contiguous in the donor
        assert (n[0] - 1) // 100 != u and (n[0] - 1) // 100 == (n[2] - 1) // 100
        assert (10 - 1 - diff[-1]) % 3 == 0  # aligned to whole trigrams from the most recent item


def test_persona_never_uses_the_user_himself() -> None:
    pool, seqs = user_pool(users=2)
    x = torch.stack(seqs)
    for seed in range(5):
        neg, _ = persona_negatives(x, torch.arange(2), pool, ConsistencyConfig(persona_prob=1.0), gen(seed))
        assert torch.all((neg[0] > 100) == (neg[0] != x[0]))  # user 0's replacements are user 1's items
        assert torch.all((neg[1] <= 100) == (neg[1] != x[1]))


def test_persona_task_batch() -> None:
    pool, seqs = user_pool()
    task = build_consistency("persona", 16, ConsistencyConfig(), MASK, INT, 50, pool)
    assert isinstance(task, PersonaConsistency)
    batch = task.make_batch(torch.stack(seqs), torch.arange(30), gen())
    assert torch.all(batch["task_input"][:, -1] == INT)
    neg_rows = batch["task_input"][batch["task_label"] == 0, :-1]
    assert len(neg_rows) > 0
    assert "pool" not in dict(task.state_dict())  # data stays out of checkpoints
    with pytest.raises(ValueError, match="SequencePool"):
        build_consistency("persona", 16, ConsistencyConfig(), MASK, INT, 50, None)


# ---- global session -------------------------------------------------------------------------------
def test_segment_views() -> None:
    x = distinct_batch(b=100, width=12)
    cfg = ConsistencyConfig(global_ngram_min=1, global_ngram_max=4)
    masked, alone = segment_views(x, MASK, cfg, gen())
    lengths = (x > 0).sum(1)
    for row, m, a, n in zip(x.tolist(), masked.tolist(), alone.tolist(), lengths.tolist()):
        seg = [j for j in range(12) if m[j] == MASK]
        assert seg == list(range(seg[0], seg[0] + len(seg)))  # one contiguous n-gram
        assert 1 <= len(seg) <= min(4, max(1, n // 2))
        assert all(row[j] > 0 for j in seg)
        for j in range(12):
            if j in seg:
                assert a[j] == row[j]  # the n-gram keeps its positions
            elif row[j] == 0:
                assert m[j] == 0 and a[j] == 0  # padding stays padding
            else:
                assert m[j] == row[j] and a[j] == MASK


def test_info_nce_equals_reference() -> None:
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    t = 0.3
    ref = 0.0
    for i in range(5):
        sims = [float(a[i] @ p[j] / (a[i].norm() * p[j].norm())) / t for j in range(5)]
        ref += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    assert info_nce(a, p, t).item() == pytest.approx(ref / 5, rel=1e-5)
    # perfectly aligned pairs with distinct directions give a small loss
    assert info_nce(torch.eye(5), torch.eye(5), 0.05).item() < 1e-3


def test_global_task_forward_trains_the_encoder() -> None:
    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecConfig(num_items=1000, max_len=12, dim=16, n_layers=1, n_heads=2, ffn_dim=32))
    task = GlobalSessionConsistency(16, ConsistencyConfig(), model.config.mask_token)
    x = distinct_batch(b=32, width=12)
    batch = task.make_batch(x, torch.arange(32), gen())
    assert batch["global_masked"].shape == (16, 12)  # task_rows=1: B/2 pairs
    out = task(model, batch)
    assert out["loss"].item() > 0 and 0 <= out["acc"].item() <= 1
    out["loss"].backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert task.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["temporal", "persona"])
def test_binary_task_forward(variant: str) -> None:
    torch.manual_seed(0)
    pool, seqs = user_pool()
    model = BERT4Rec(BERT4RecConfig(num_items=3000, max_len=12, dim=16, n_layers=1, n_heads=2, ffn_dim=32))
    task = build_consistency(variant, 16, ConsistencyConfig(mlp_hidden=8), model.config.mask_token,
                             model.config.int_token, 12, pool)
    assert isinstance(task, (TemporalConsistency, PersonaConsistency))
    assert task.head[0].out_features == 8
    batch = task.make_batch(torch.stack(seqs), torch.arange(30), gen())
    out = task(model, batch)
    assert abs(out["loss"].item() - math.log(2)) < 0.3
    out["loss"].backward()
    assert model.tok_emb.weight.grad[model.config.int_token].abs().sum() > 0  # [INT] is learned


def test_augmentations_are_deterministic_in_the_generator() -> None:
    x = distinct_batch()
    a, _ = temporal_negatives(x, ConsistencyConfig(), gen(7))
    b, _ = temporal_negatives(x, ConsistencyConfig(), gen(7))
    c, _ = temporal_negatives(x, ConsistencyConfig(), gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="n-gram"):
        ConsistencyConfig(temporal_ngram_min=3, temporal_ngram_max=2)
    with pytest.raises(ValueError, match="temperature"):
        ConsistencyConfig(temperature=0)
    with pytest.raises(ValueError, match="unknown consistency"):
        build_consistency("spatial", 8, ConsistencyConfig(), MASK, INT, 10)
