"""BERT4Rec: presets, shapes, special tokens, and the servable contract."""
from __future__ import annotations

import pytest
import torch

from models import MODELS
from models.bert4rec import BERT4Rec, BERT4RecConfig

N = 40


def small(**kw) -> BERT4Rec:
    torch.manual_seed(0)
    return BERT4Rec(BERT4RecConfig(num_items=N, max_len=12, dim=16, n_layers=2, n_heads=2, ffn_dim=32, **kw)).eval()


def history(b: int = 5, width: int = 20, seed: int = 1) -> torch.Tensor:
    """(b, width) left-padded random histories of lengths 1..width."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(1, N + 1, (b, width), generator=g)
    lengths = torch.randint(1, width + 1, (b,), generator=g)
    keep = torch.arange(width)[None] >= width - lengths[:, None]
    return torch.where(keep, h, 0)


def test_registry_and_class_attributes() -> None:
    assert MODELS["bert4rec"] is BERT4Rec
    assert (BERT4Rec.model_name, BERT4Rec.config_class) == ("bert4rec", BERT4RecConfig)
    assert BERT4Rec.fixed_length is False and BERT4Rec.uses_user is False


def test_presets() -> None:
    paper = BERT4RecConfig.preset("paper", num_items=N)
    assert (paper.n_layers, paper.n_heads, paper.dim, paper.max_len) == (8, 4, 256, 50)
    cpu = BERT4RecConfig.preset("cpu", num_items=N, dim=32)
    assert cpu.dim == 32 and cpu.n_layers == 2
    assert BERT4RecConfig.preset("smoke", num_items=N).dim < cpu.dim
    with pytest.raises(ValueError, match="unknown preset"):
        BERT4RecConfig.preset("huge", num_items=N)
    with pytest.raises(ValueError, match="divisible"):
        BERT4RecConfig(num_items=N, dim=10, n_heads=3)


def test_special_tokens_and_shapes() -> None:
    m = small()
    c = m.config
    assert (c.mask_token, c.int_token, c.vocab_size) == (N + 1, N + 2, N + 3)
    assert m.tok_emb.weight.shape == (N + 3, 16)
    assert torch.all(m.tok_emb.weight[0] == 0)  # padding row
    h = history(width=c.max_len)
    assert m(h).shape == (5, c.max_len, 16)
    assert m.encode(h).shape == (5, 17)
    assert m.item_vectors().shape == (N, 17)
    with pytest.raises(ValueError, match="exceeds max_len"):
        m(history(width=c.max_len + 1))


def test_encode_appends_mask_and_keeps_last_items() -> None:
    m = small()
    seen: list[torch.Tensor] = []
    m.tok_emb.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    h = history(width=30)
    m.encode(h)
    tokens = seen[-1]
    assert tokens.shape == (5, m.config.max_len)
    assert torch.all(tokens[:, -1] == m.config.mask_token)
    assert torch.equal(tokens[:, :-1], h[:, -(m.config.max_len - 1):])
    short = history(width=4)
    m.encode(short)
    assert torch.equal(seen[-1], torch.cat([short, torch.full((5, 1), N + 1)], 1))


def test_encode_dot_item_vectors_equals_logits() -> None:
    m = small()
    h = history(width=30)
    scores = m.encode(h) @ m.item_vectors().T  # (B, N)
    tokens = torch.cat([h[:, -(m.config.max_len - 1):], torch.full((5, 1), m.config.mask_token)], 1)
    logits = m.logits(m(tokens)[:, -1])  # (B, N)
    torch.testing.assert_close(scores, logits, rtol=1e-5, atol=1e-5)
    # the bias is part of it: a large bias on item 3 moves its score by exactly that much
    with torch.no_grad():
        m.out_bias[2] += 10.0
    torch.testing.assert_close((m.encode(h) @ m.item_vectors().T)[:, 2], logits[:, 2] + 10.0)


def test_padding_never_changes_the_query() -> None:
    m = small()
    h = history(width=8)
    wide = torch.cat([torch.zeros(5, 20, dtype=torch.long), h], 1)  # more padding, same items
    torch.testing.assert_close(m.encode(h), m.encode(wide), rtol=1e-5, atol=1e-5)
    # but items do matter
    other = h.clone()
    other[:, -1] = other[:, -1] % N + 1
    assert not torch.allclose(m.encode(h), m.encode(other))


def test_bidirectional_attention() -> None:
    """Unlike SASRec, a later token changes the hidden state of an earlier one."""
    m = small()
    h = history(width=6)
    a, b = h.clone(), h.clone()
    b[:, -1] = b[:, -1] % N + 1
    assert not torch.allclose(m(a)[:, -2], m(b)[:, -2])


def test_encode_exports_to_onnx_with_dynamic_batch_and_length(tmp_path) -> None:
    """The exporter (export/) relies on this: one graph for any (B, L), exact against eager."""
    ort = pytest.importorskip("onnxruntime")
    import warnings

    m = small()

    class Encoder(torch.nn.Module):
        def __init__(self, model: BERT4Rec):
            super().__init__()
            self.model = model

        def forward(self, history: torch.Tensor) -> torch.Tensor:
            return self.model.encode(history)

    path = tmp_path / "encoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(m).eval(), (history(3, 9),), str(path), input_names=["history"],
                          output_names=["query"], opset_version=18, dynamo=False,
                          dynamic_axes={"history": {0: "batch", 1: "length"}, "query": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, width in [(3, 9), (1, 30), (4, 3), (2, 11)]:  # shorter, longer than max_len - 1, equal
        h = history(b, width, seed=width)
        got = session.run(None, {"history": h.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), m.encode(h), rtol=1e-4, atol=1e-5)
