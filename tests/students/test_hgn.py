"""HGN: the d+1 decomposition, padding exclusion, windowing, the unknown user, trained gates."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.hgn import HGN, HGNConfig

N, U = 30, 6


def make(**over) -> HGN:
    torch.manual_seed(0)
    return HGN(HGNConfig.preset("smoke", num_items=N, num_users=U, **over)).eval()


HIST = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 1, 2, 9], [0, 0, 0, 0, 30]])  # (3, L=5) left-padded
USER = torch.tensor([1, 6, 3])


def test_decomposition_equals_the_papers_score():
    m = make()
    for user in (USER, None):
        with torch.no_grad():
            inner = m.encode(HIST, user) @ m.item_vectors().T  # (B, N)
            paper = m(HIST, user)  # u.q + g.q + sum e.q + b, term by term
        torch.testing.assert_close(inner, paper, rtol=1e-5, atol=1e-6)
    items = torch.tensor([[1, 2], [30, 4], [9, 9]])
    with torch.no_grad():
        torch.testing.assert_close(m(HIST, USER, items), m(HIST, USER).gather(1, items - 1), rtol=1e-5, atol=1e-6)


def test_bias_is_the_last_dimension():
    m = make()
    with torch.no_grad():
        m.out_bias.weight[5] = 3.0
        q = m.encode(HIST, USER)
    assert torch.equal(q[:, -1], torch.ones(3))
    assert m.item_vectors()[4, -1] == 3.0  # row 4 = item 5
    assert m.item_vectors().shape == (N, m.config.dim + 1)


def test_padding_row_has_no_influence():
    m = make()
    with torch.no_grad():
        before = m.encode(HIST, USER)
        m.item_emb.weight[0] = torch.randn(m.config.dim) * 10
        after = m.encode(HIST, USER)
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_padding_is_excluded_from_the_gates_and_sums():
    """Reference computation on real items only, for a window with 3 padding positions."""
    m = make()
    h, u = HIST[1:2], USER[1:2]
    with torch.no_grad():
        e = m.item_emb(h[0, 2:])  # (3, d) real items only
        uv = m.user_emb(u)[0]
        e_f = e * torch.sigmoid(m.feature_gate.item(e) + m.feature_gate.user(uv) + m.feature_gate.bias)
        a = torch.sigmoid(m.instance_gate.item(e_f)[:, 0] + m.instance_gate.user(uv)[2:])  # positions 2..4
        g = (a[:, None] * e_f).sum(0) / a.sum()
        expected = uv + g + e.sum(0)
        torch.testing.assert_close(m.encode(h, u)[0, :-1], expected, rtol=1e-5, atol=1e-6)


def test_empty_window_gives_user_only_query():
    m = make()
    with torch.no_grad():
        q = m.encode(torch.zeros(2, 5, dtype=torch.long), torch.tensor([2, 0]))
    torch.testing.assert_close(q[:, :-1], m.user_emb.weight[[2, 0]])


def test_short_and_long_histories():
    m = make()
    with torch.no_grad():
        short = m.encode(torch.tensor([[1, 2, 9]]), USER[1:2])  # 3 columns
        padded = m.encode(HIST[1:2], USER[1:2])  # the same items left-padded to L
        wide = m.encode(F.pad(HIST[1:2], (45, 0)), USER[1:2])  # padded to 50 columns
        longer = m.encode(torch.tensor([[11, 12, 13, 3, 4, 5, 6, 7]]), USER[:1])  # 8 items: uses the last 5
        last5 = m.encode(HIST[:1], USER[:1])
    torch.testing.assert_close(short, padded, rtol=0, atol=0)
    torch.testing.assert_close(wide, padded, rtol=0, atol=0)
    torch.testing.assert_close(longer, last5, rtol=0, atol=0)


def test_gates_are_trained_parameters():
    m = make().train()
    names = dict(m.named_parameters())
    for key in ("feature_gate.item.weight", "feature_gate.user.weight", "feature_gate.bias",
                "instance_gate.item.weight", "instance_gate.user.weight"):
        assert key in names
    m(HIST, USER).logsumexp(1).sum().backward()
    for key in ("instance_gate.item.weight", "instance_gate.user.weight", "feature_gate.item.weight"):
        assert names[key].grad is not None and names[key].grad.abs().sum() > 0, key


def test_user_dropout_in_training_only():
    m = make(user_dropout=1.0)
    with torch.no_grad():
        m.train()
        dropped = m.encode(HIST, USER)
        m.eval()
        anon, with_user = m.encode(HIST, None), m.encode(HIST, USER)
    torch.testing.assert_close(dropped, anon, rtol=0, atol=0)
    assert not torch.allclose(with_user, anon)
    m0 = make(user_dropout=0.0).train()
    with torch.no_grad():
        torch.testing.assert_close(m0.encode(HIST, USER), m0.eval().encode(HIST, USER), rtol=0, atol=0)


def test_onnx_export_fixed_window_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = make()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)

    class Encoder(torch.nn.Module):
        def __init__(self, model: HGN):
            super().__init__()
            self.model = model

        def forward(self, history: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
            return self.model.encode(history, user)

    path = tmp_path / "hgn.onnx"
    torch.onnx.export(Encoder(m).eval(), (HIST, USER), str(path), input_names=["history", "user"],
                      output_names=["query"], opset_version=18, dynamo=False,
                      dynamic_axes={"history": {0: "batch"}, "user": {0: "batch"}, "query": {0: "batch"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    for b in (1, 7):
        h = torch.randint(0, N + 1, (b, 5), generator=g)
        u = torch.randint(0, U + 1, (b,), generator=g)
        got = sess.run(["query"], {"history": h.numpy(), "user": u.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), m.encode(h, u), rtol=1e-5, atol=1e-5)
