"""StudentTask end to end: loss composition, teacher cache, ablation switches, smoke runs and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.students import (
    STUDENT_RECIPES,
    STUDENTS,
    FrozenTeacher,
    ImitationConfig,
    StudentTask,
    build_student,
    main,
    train_config,
    train_student,
)


def make_task(ds, teacher_dirs, student="hgn", imitation=None, names=None, loss=None):
    torch.manual_seed(0)
    model = build_student(student, ds, "smoke")
    teachers = {n: FrozenTeacher.load(n, teacher_dirs[n], ds) for n in (names or teacher_dirs)}
    imitation = imitation or ImitationConfig()
    task = StudentTask(model, ds, teachers, imitation, loss or model.default_loss, batch_size=16,
                       scheme=STUDENT_RECIPES[student].examples)  # the examples train_student gives it
    task.on_epoch_start(1)
    return task


def first_batch(task):
    return next(task.batches(1, np.random.default_rng(0), 0, 1))


@pytest.mark.parametrize("cache_probs", [False, True], ids=["live-logits", "cached-probs"])
@pytest.mark.parametrize("student", STUDENTS)
def test_loss_is_student_plus_weighted_imitation_plus_regulariser(student_ds, teacher_dirs, student, cache_probs,
                                                                  tmp_path, monkeypatch):
    monkeypatch.setenv("SSI_CACHE_DIR", str(tmp_path))
    task = make_task(student_ds, teacher_dirs, student, ImitationConfig(cache_probs=cache_probs))
    assert all((t.probs is not None) == cache_probs for t in task.teachers.values())
    with torch.no_grad():
        task.lambdas.raw.copy_(torch.tensor([0.1, 0.7, -0.4]))
    torch.manual_seed(1)
    terms = task(first_batch(task))
    lam = task.lambdas().detach()
    imit = sum(lam[i] * (terms[f"kl_{n}"] + terms[f"mse_{n}"]) for i, n in enumerate(task.teachers))
    inv = (1 / lam).sum()
    torch.testing.assert_close(terms["loss"], terms["student"] + imit + inv + inv**2)
    assert set(task.epoch_log()) >= {"lambda_temporal", "lambda_persona", "lambda_global"}
    terms["loss"].backward()
    assert task.lambdas.raw.grad is not None and task.lambdas.raw.grad.abs().sum() > 0
    assert all(p.grad is None for t in task.teachers.values() for p in t.model.parameters())


def test_kl_uses_the_teacher_on_the_same_history(student_ds, teacher_dirs):
    """Cached teacher logits = teacher.encode(the example's prefix) @ item_vectors.T, computed directly."""
    task = make_task(student_ds, teacher_dirs, "gru4rec", names=["persona"])
    live = make_task(student_ds, teacher_dirs, "gru4rec", ImitationConfig(cache_teacher=False), names=["persona"])
    batch = first_batch(task)
    ex = batch["example"][batch["targets"] > 0]
    t = task.teachers["persona"]
    seqs = [s[:-2] for s in student_ds.sequences]
    hist = np.zeros((len(ex), 50), dtype=np.int64)
    for i, e in enumerate(ex.tolist()):
        p = seqs[task.examples.teacher_users[e]][: task.examples.teacher_prefix[e]][-50:]
        hist[i, 50 - len(p):] = p
    with torch.no_grad():
        direct = t.model.encode(torch.from_numpy(hist)) @ t.model.item_vectors().T
        torch.testing.assert_close(task.teacher_logits(t, ex), direct, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(live.teacher_logits(live.teachers["persona"], ex), direct, rtol=1e-5, atol=1e-5)
    assert live.teachers["persona"].cache is None


def test_switches_select_the_terms(student_ds, teacher_dirs):
    no_kl = make_task(student_ds, teacher_dirs, imitation=ImitationConfig(use_kl=False), names=["global"])
    terms = no_kl(first_batch(no_kl))
    assert "mse_global" in terms and "kl_global" not in terms
    no_mse = make_task(student_ds, teacher_dirs, imitation=ImitationConfig(use_mse=False))
    terms = no_mse(first_batch(no_mse))
    assert {"kl_temporal", "kl_persona", "kl_global"} <= set(terms) and not any(k.startswith("mse") for k in terms)
    neither = make_task(student_ds, teacher_dirs, imitation=ImitationConfig(use_kl=False, use_mse=False))
    terms = neither(first_batch(neither))
    assert set(terms) == {"student", "loss"} and neither.epoch_log() == {}


def test_projection_only_when_dimensions_differ(student_ds, teacher_dirs):
    task = make_task(student_ds, teacher_dirs, names=["temporal"])  # HGN smoke d=16, teacher smoke d=16
    assert isinstance(task.projections["temporal"], torch.nn.Identity)
    task = make_task(student_ds, teacher_dirs, imitation=ImitationConfig(always_project=True), names=["temporal"])
    assert isinstance(task.projections["temporal"], torch.nn.Linear)


def test_smoke_distillation_with_three_teachers(student_ds, teacher_dirs, tmp_path):
    run = tmp_path / "ssi_hgn"
    m = train_student("hgn", student_ds, "smoke", run, teacher_dirs, ImitationConfig(), progress=False)
    for name in ("metrics.json", "metrics_anonymous.json", "model.safetensors", "history.csv", "run.json"):
        assert (run / name).is_file(), name
    assert {"valid", "test", "anonymous"} <= set(m)
    assert 0 <= m["test"]["sampled"]["ndcg@10"] <= 1 and 0 <= m["anonymous"]["test"]["full"]["ndcg@10"] <= 1
    history = json.loads((run / "history.json").read_text())
    assert len(history) == train_config("hgn", "smoke").epochs
    assert all(r["lambda_temporal"] > 0 and "train_kl_global" in r for r in history)
    info = json.loads((run / "run.json").read_text())
    assert info["student"] == "hgn" and set(info["teachers"]) == {"temporal", "persona", "global"}
    again = train_student("hgn", student_ds, "smoke", run, teacher_dirs, ImitationConfig(), progress=False)
    assert again["test"] == m["test"] and again["anonymous"] == m["anonymous"]  # finished: not retrained


def test_cli_gru4rec_single_teacher(student_data_file, teacher_dirs, tmp_path, capsys):
    run = tmp_path / "ssi_gru"
    rc = main(["--student", "gru4rec", "--dataset", str(student_data_file), "--preset", "smoke",
               "--teachers", f"global={teacher_dirs['global']}", "--no-kl", "--run-dir", str(run), "--no-progress"])
    assert rc == 0 and "test sampled R@10" in capsys.readouterr().out
    history = json.loads((run / "history.json").read_text())
    assert "train_mse_global" in history[0] and "train_kl_global" not in history[0]
    assert not (run / "metrics_anonymous.json").exists()  # GRU4Rec has no user embedding


def test_cli_help_and_bad_teacher(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--teachers" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--student", "hgn", "--dataset", "x", "--teachers", "temporal"])
    assert e.value.code == 2


@pytest.mark.parametrize("student", STUDENTS)
def test_an_epoch_covers_every_example_once(student_ds, student):
    torch.manual_seed(0)
    task = StudentTask(build_student(student, student_ds, "smoke"), student_ds, {}, ImitationConfig(),
                       "ce", batch_size=8, scheme=STUDENT_RECIPES[student].examples)
    seen = []
    for b in task.batches(3, np.random.default_rng(3), 0, 1):
        ex = b["example"][b["example"] >= 0]
        seen += ex.tolist()
        if student == "gru4rec":
            assert (b["history"][:, 0] > 0).any()  # cut to the longest sequence in the batch
            if len(b["history"]) > 1:
                assert int((b["targets"] > 0).sum()) <= task._budget + task.model.config.max_len
    assert sorted(seen) == list(range(len(task.examples.teacher_prefix)))
    # two ranks: disjoint shards with the same number of batches
    shards = [list(task.batches(3, np.random.default_rng(3), r, 2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    ids = [{int(e) for b in s for e in b["example"].flatten() if e >= 0} for s in shards]
    assert not ids[0] & ids[1]
