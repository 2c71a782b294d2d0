import torch

from training.trainer import resolve_device


def test_explicit_device_wins(monkeypatch):
    monkeypatch.setenv("SSI_DEVICE", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_reads_ssi_device(monkeypatch):
    monkeypatch.setenv("SSI_DEVICE", "cpu")  # what `run_all --device cpu` sets for every run
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.delenv("SSI_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
