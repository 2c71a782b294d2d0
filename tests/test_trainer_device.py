"""The training device comes from ``TrainConfig.device`` (an argument), never from the environment."""
import dataclasses

import numpy as np
import pytest
import torch

from training import baselines, run_all, students, teachers
from training.trainer import TrainConfig, resolve_device


def test_explicit_device_wins():
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_cuda_when_present_and_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("SSI_DEVICE", "cuda")  # the server's variable: no longer a side channel into training
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected


@pytest.fixture
def ds(tmp_path):
    """40 users over 120 items (enough for the 99 stored negatives a teacher draws)."""
    from protocol import load_dataset

    rng = np.random.default_rng(0)
    lines = [f"{u} " + " ".join(str(int(i)) for i in rng.integers(1, 121, int(rng.integers(5, 12))))
             for u in range(1, 41)]
    (tmp_path / "Dev.txt").write_text("\n".join(lines) + "\n")
    return load_dataset(str(tmp_path / "Dev.txt"))


def _capture_fit(monkeypatch, module):
    seen: list[TrainConfig] = []

    def fake_fit(task, ds, cfg, run_dir, **kw):
        seen.append(cfg)
        return {"test": {}}

    monkeypatch.setattr(module, "fit", fake_fit)
    return seen


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_run_all_passes_the_device_to_every_kind_of_run(monkeypatch, tmp_path, device):
    """run_all --device -> execute -> train_* -> TrainConfig.device, for a baseline, a teacher and a student."""
    calls: dict[str, dict] = {}
    monkeypatch.setattr(baselines, "train_baseline", lambda *a, **kw: calls.setdefault("baseline", kw))
    monkeypatch.setattr(teachers, "train_teacher", lambda *a, **kw: calls.setdefault("teacher", kw))
    monkeypatch.setattr(students, "train_student", lambda *a, **kw: calls.setdefault("student", kw))
    for name in ("sasrec", "teacher_temporal", "hgn"):
        run = run_all.Run("lastfm", name, 42, None)
        run_all.execute(run, None, "smoke", tmp_path, True, [42], device)
    assert {k: v["device"] for k, v in calls.items()} == {"baseline": device, "teacher": device, "student": device}


def test_train_functions_put_the_device_in_the_train_config(monkeypatch, tmp_path, ds):
    seen_s = _capture_fit(monkeypatch, students)
    students.train_student("gru4rec", ds, "smoke", tmp_path / "s", device="cpu", progress=False)
    seen_b = _capture_fit(monkeypatch, baselines)
    baselines.train_baseline("grec", ds, "smoke", tmp_path / "b", device="cpu", progress=False)
    seen_t = _capture_fit(monkeypatch, teachers)
    teachers.train_teacher("bert4rec", ds, "smoke", tmp_path / "t", device="cpu", progress=False)
    assert [c.device for c in seen_s + seen_b + seen_t] == ["cpu"] * 3
    default = students.train_config("gru4rec", "smoke")
    assert default.device == "auto" and dataclasses.replace(default, device="cpu").device == "cpu"


@pytest.mark.gpu
def test_a_gru_trained_on_cuda_saves_and_loads(tmp_path):
    """cuDNN flattens an RNN's weights into one buffer, which safetensors refuses to save or load; the trainer
    saves the best epoch and loads it back into the CUDA model at the end (save_best / load_best)."""
    from models.gru4rec import GRU4Rec, GRU4RecConfig
    from training.runs import load_best, load_run_model, save_best, write_model_config

    model = GRU4Rec(GRU4RecConfig(num_items=50)).cuda()
    model.gru.flatten_parameters()
    save_best(model, tmp_path)
    write_model_config(model, tmp_path)
    loaded, _ = load_run_model(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu()), name
    other = GRU4Rec(GRU4RecConfig(num_items=50)).cuda()
    load_best(other, tmp_path)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_load_best_loads_in_place_with_tied_weights(tmp_path):
    from models.sasrec import SASRec, SASRecConfig
    from training.runs import load_best, save_best

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=30))
    save_best(model, tmp_path)
    torch.manual_seed(1)
    other = SASRec(SASRecConfig(num_items=30))
    params = [id(p) for p in other.parameters()]
    load_best(other, tmp_path)
    assert [id(p) for p in other.parameters()] == params  # in place: an optimizer's references stay valid
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
