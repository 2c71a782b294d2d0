"""GRU4Rec: left padding never reaches the hidden state; prefix outputs; tied scores; ONNX export."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.gru4rec import GRU4Rec, GRU4RecConfig

N = 30


def make() -> GRU4Rec:
    """A smoke model with non-zero GRU biases: at init they are 0, and a zero state fed zero inputs
    stays zero, which would hide padding that reaches the hidden state."""
    torch.manual_seed(0)
    m = GRU4Rec(GRU4RecConfig.preset("smoke", num_items=N)).eval()
    with torch.no_grad():
        for p in m.gru.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


def reference(m: GRU4Rec, items: list[int]) -> torch.Tensor:
    """The GRU run on the unpadded sequence; output after the last item."""
    x = m.item_emb(torch.tensor([items]))
    out, _ = m.gru(x)
    return m.dense(out[:, -1])[0]


def test_left_padding_invariance():
    m = make()
    seq = [4, 8, 15, 16, 23]
    with torch.no_grad():
        outs = [m.encode(F.pad(torch.tensor([seq]), (pad, 0)))[0] for pad in (0, 1, 7, 30)]
        ref = reference(m, seq)
    for o in outs:
        torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-6)


def test_mixed_lengths_in_one_batch():
    m = make()
    seqs = [[1], [2, 3, 4], [5, 6, 7, 8, 9, 10, 11]]
    h = torch.zeros(3, 9, dtype=torch.long)
    for i, s in enumerate(seqs):
        h[i, 9 - len(s):] = torch.tensor(s)
    with torch.no_grad():
        q = m.encode(h)
        for i, s in enumerate(seqs):
            torch.testing.assert_close(q[i], reference(m, s), rtol=1e-5, atol=1e-6)


def test_sequence_output_scores_every_prefix():
    m = make()
    h = torch.tensor([[0, 0, 0, 3, 1, 4, 1, 5], [0, 9, 2, 6, 5, 3, 5, 8]])
    with torch.no_grad():
        out = m.sequence_output(h)  # (2, 8, d)
        assert out.shape == (2, 8, m.config.dim)
        assert out[0, :3].abs().sum() == 0  # padding columns are zero
        for b in range(2):
            for t in range(8):
                if h[b, t] > 0:
                    torch.testing.assert_close(out[b, t], m.encode(h[b:b + 1, :t + 1])[0], rtol=1e-5, atol=1e-6)


def test_scores_are_tied_to_the_input_table():
    m = make()
    assert m.item_vectors().data_ptr() == m.item_emb.weight[1:].data_ptr()
    h = torch.tensor([[0, 1, 2], [4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(m(h), m.encode(h) @ m.item_emb.weight[1:].T)


def test_onnx_export_dynamic_batch_and_length(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = make()

    class Encoder(torch.nn.Module):
        def __init__(self, model: GRU4Rec):
            super().__init__()
            self.model = model

        def forward(self, history: torch.Tensor) -> torch.Tensor:
            return self.model.encode(history)

    path = tmp_path / "gru.onnx"
    example = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8], [0, 0, 0, 0, 9]])
    torch.onnx.export(Encoder(m).eval(), (example,), str(path), input_names=["history"], output_names=["query"],
                      dynamic_axes={"history": {0: "batch", 1: "length"}, "query": {0: "batch"}},
                      opset_version=18, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(3)
    for b, length in ((1, 3), (4, 12), (7, 50)):
        h = torch.randint(1, N + 1, (b, length), generator=g)
        h[0, : length // 2] = 0  # left padding in the first row
        got = sess.run(["query"], {"history": h.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), m.encode(h), rtol=1e-4, atol=1e-5)
