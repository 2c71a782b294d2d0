"""Imitation terms against direct computations on tiny tensors; the lambda weights; training examples."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.students import (
    ImitationConfig,
    LambdaWeights,
    bpr_loss,
    ce_loss,
    hgn_windows,
    kl_imitation,
    mse_imitation,
    prefix_segments,
    sample_negatives,
)


def set_lambdas(w: LambdaWeights, values: list[float]) -> None:
    with torch.no_grad():
        w.raw.copy_(w.inverse(torch.tensor(values)))


@pytest.mark.parametrize("param", ["softplus", "exp"])
def test_lambdas_start_at_one(param):
    w = LambdaWeights(["a", "b", "c"], param=param)
    torch.testing.assert_close(w(), torch.ones(3))
    assert w.as_dict() == pytest.approx({"lambda_a": 1.0, "lambda_b": 1.0, "lambda_c": 1.0})


@pytest.mark.parametrize("param", ["softplus", "exp"])
def test_regulariser_value_and_gradient(param):
    w = LambdaWeights(["a", "b"], param=param)
    set_lambdas(w, [0.5, 2.0])
    reg = w.regulariser()
    # S = 1/0.5 + 1/2 = 2.5; R = S + S^2 = 8.75
    assert float(reg.detach()) == pytest.approx(8.75, rel=1e-5)
    (grad_raw,) = torch.autograd.grad(reg, w.raw)
    # dR/dlambda_i = -(1 + 2S) / lambda_i^2 = -6 / lambda_i^2 = (-24, -1.5); chain rule through the parametrisation
    lam = torch.tensor([0.5, 2.0])
    dlam_draw = torch.sigmoid(w.raw.detach()) if param == "softplus" else lam - w.floor
    torch.testing.assert_close(grad_raw, torch.tensor([-24.0, -1.5]) * dlam_draw)


@pytest.mark.parametrize("param", ["softplus", "exp"])
def test_lambdas_stay_positive(param):
    w = LambdaWeights(["a", "b"], param=param)
    opt = torch.optim.SGD(w.parameters(), lr=10.0)
    for _ in range(50):  # a loss that pushes the weights hard towards (and past) zero
        opt.zero_grad()
        (w() * 1000.0).sum().backward()
        opt.step()
    lam = w()
    assert torch.isfinite(lam).all() and (lam > 0).all()
    assert torch.isfinite(w.regulariser())


def test_kl_against_direct_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g) * 2
    for tau in (1.0, 2.0):
        p_t = torch.softmax(t / tau, dim=1)
        p_s = torch.softmax(s / tau, dim=1)
        direct = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * tau**2
        torch.testing.assert_close(kl_imitation(s, t, tau), direct, rtol=1e-5, atol=1e-6)
    assert float(kl_imitation(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_imitation(s, t)) > 0


def test_kl_gradient_reaches_the_student_only():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    kl_imitation(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    # d KL / d s = (softmax(s) - softmax(t)) / M
    torch.testing.assert_close(s.grad, (torch.softmax(s, 1) - torch.softmax(t, 1)).detach() / 3)


def test_mse_against_direct_computation():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(6, 3, generator=g), torch.randn(6, 5, generator=g)
    proj = torch.nn.Linear(3, 5, bias=False)
    direct = ((student @ proj.weight.T - teacher) ** 2).sum() / (6 * 5)
    torch.testing.assert_close(mse_imitation(student, teacher, proj), direct)
    same = torch.randn(6, 5, generator=g)
    torch.testing.assert_close(mse_imitation(same, teacher, torch.nn.Identity()), ((same - teacher) ** 2).mean())


def test_bpr_and_ce_against_direct_computation():
    pos = torch.tensor([[2.0, 0.5], [1.0, 9.0]])
    neg = torch.tensor([[0.0, 1.0, -1.0], [3.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True], [True, False]])
    sig = lambda x: 1 / (1 + math.exp(-x))
    pairs = [(2, 0), (2, 1), (2, -1), (0.5, 0), (0.5, 1), (0.5, -1), (1, 3), (1, 0), (1, 0)]
    expected = sum(-math.log(sig(p - n)) for p, n in pairs) / len(pairs)
    assert float(bpr_loss(pos, neg, valid)) == pytest.approx(expected, rel=1e-5)
    logits = torch.randn(3, 6)
    targets = torch.tensor([[1, 4], [6, 0], [2, 0]])  # 0 = no target
    flat_l = torch.stack([logits[0], logits[0], logits[1], logits[2]])
    flat_t = torch.tensor([0, 3, 5, 1])
    torch.testing.assert_close(ce_loss(logits, targets), torch.nn.functional.cross_entropy(flat_l, flat_t))


def test_negatives_avoid_the_targets():
    torch.manual_seed(0)
    targets = torch.tensor([[1, 2, 3], [4, 0, 0]]).repeat(200, 1)
    neg = sample_negatives(targets, num_items=5, k=3)
    assert neg.shape == (400, 3) and neg.min() >= 1 and neg.max() <= 5
    assert not (neg.unsqueeze(2) == targets.unsqueeze(1)).any()


def test_hgn_windows_by_hand():
    seqs = [np.array([1, 2, 3, 4, 5, 6, 7]), np.array([8, 9])]
    ex = hgn_windows(seqs, L=3, T=2)
    a = ex.arrays
    # user 0: t = 1..5 (targets s[t:t+2]); user 1: t = 1 (one target)
    np.testing.assert_array_equal(a["history"], [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [0, 0, 8]])
    np.testing.assert_array_equal(a["targets"], [[2, 3], [3, 4], [4, 5], [5, 6], [6, 7], [9, 0]])
    np.testing.assert_array_equal(a["user"], [1, 1, 1, 1, 1, 2])
    np.testing.assert_array_equal(ex.teacher_prefix, [1, 2, 3, 4, 5, 1])
    np.testing.assert_array_equal(ex.teacher_histories(seqs, 4)[4], [2, 3, 4, 5])


def test_prefix_segments_cover_every_transition_once():
    seqs = [np.arange(1, 12), np.array([20, 21])]  # 11 items with max_len 4 -> 3 segments + 1
    ex = prefix_segments(seqs, max_len=4)
    a = ex.arrays
    pairs = {(int(h), int(t)) for H, T in zip(a["history"], a["targets"]) for h, t in zip(H, T) if t > 0}
    assert pairs == {(i, i + 1) for i in range(1, 11)} | {(20, 21)}
    assert (a["example"] >= 0).sum() == 11 == len(ex.teacher_prefix)
    # an example's teacher prefix ends with its input item and stops before its target
    hist = ex.teacher_histories(seqs, 50)
    for H, T, E in zip(a["history"], a["targets"], a["example"]):
        for h, t, e in zip(H, T, E):
            if t > 0:
                assert hist[e][-1] == h and ex.teacher_prefix[e] == np.flatnonzero(seqs[ex.teacher_users[e]] == t)[0]


def test_config_validation():
    with pytest.raises(ValueError):
        ImitationConfig(temperature=0)
    assert not ImitationConfig(use_kl=False, use_mse=False).active
