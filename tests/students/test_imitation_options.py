"""The imitation options of ``ImitationConfig`` beyond the paper's loss: each changes exactly its part."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.students import (
    FrozenTeacher,
    ImitationConfig,
    StudentTask,
    build_student,
    kl_imitation,
    kl_rows,
    rank_distillation_rows,
    teacher_ranks_higher,
    top_k_kl_rows,
)


def make_task(ds, teacher_dirs, imitation: ImitationConfig, loss: str = "ce") -> StudentTask:
    torch.manual_seed(0)
    model = build_student("hgn", ds, "smoke")
    teachers = {n: FrozenTeacher.load(n, d, ds) for n, d in teacher_dirs.items()}
    task = StudentTask(model, ds, teachers, imitation, loss, batch_size=16)
    task.on_epoch_start(1)
    return task


def first_batch(task: StudentTask) -> dict[str, torch.Tensor]:
    return next(task.batches(1, np.random.default_rng(0), 0, 1))


def test_kl_rows_is_the_papers_kl() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 40), torch.randn(5, 40) * 3
    rows = kl_rows(F.log_softmax(s, 1), F.softmax(t, 1))
    torch.testing.assert_close(rows.mean(), kl_imitation(s, t))
    cached = (F.softmax(t, 1) * F.log_softmax(t, 1)).sum(1)
    torch.testing.assert_close(kl_rows(F.log_softmax(s, 1), F.softmax(t, 1), cached), rows)


def test_top_k_kl_covers_only_the_teachers_top_items() -> None:
    torch.manual_seed(0)
    s = torch.randn(4, 30, requires_grad=True)
    p = F.softmax(torch.randn(4, 30) * 2, 1)
    log_q = F.log_softmax(s, 1)
    torch.testing.assert_close(top_k_kl_rows(log_q, p, 30), kl_rows(log_q, p))  # k = N: the full KL
    top_k_kl_rows(log_q, p, 5).sum().backward()
    top = torch.zeros_like(p, dtype=torch.bool).scatter_(1, p.topk(5, 1).indices, True)
    assert s.grad[~top].abs().max() < 1e-6 < s.grad[top].abs().max()  # only the top items move


def test_rank_distillation_rewards_the_teachers_top_items_but_not_the_true_one() -> None:
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.1, 0.05]])  # teacher order: items 2, 3, 4, 1, 5
    target = torch.tensor([2])  # the true item is the teacher's best: not an extra positive
    s = torch.zeros(1, 5, requires_grad=True)
    rows = rank_distillation_rows(F.log_softmax(s, 1), probs, target, k=2, decay=1.0)
    w = torch.exp(-torch.tensor([1.0, 2.0]))
    w = w / w.sum()  # items 3 and 4, at ranks 1 and 2
    torch.testing.assert_close(rows, -(w * torch.log(torch.tensor([0.2, 0.2]))).sum()[None])
    rows.sum().backward()
    assert s.grad[0, 2] < s.grad[0, 3] < 0  # both pulled up, the better-ranked one harder
    assert s.grad[0, 1] > 0 and s.grad[0, 0] > 0  # the true item and the rest only share the softmax mass


def test_rank_distillation_option_replaces_the_kl(student_ds, teacher_dirs) -> None:
    task = make_task(student_ds, teacher_dirs, ImitationConfig(rank_k=5, use_mse=False))
    task.model.eval()
    batch = first_batch(task)
    terms = task(batch)
    q, targets, example = task.queries(batch)
    log_q = F.log_softmax(q @ task.model.item_vectors().T, 1)
    for n, t in task.teachers.items():
        p = task.teacher_probs(t, example)[0]
        torch.testing.assert_close(terms[f"rd_{n}"], rank_distillation_rows(log_q, p, targets[:, 0], 5, 5.0).mean())
        assert f"kl_{n}" not in terms


def test_gate_compares_the_targets_rank_under_teacher_and_student() -> None:
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    student = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    target = torch.tensor([2, 1, 3])  # item ids (column + 1)
    # row 0: teacher rank 1, student rank 3 -> imitate; row 1: 1 vs 3 -> imitate; row 2: 1 vs 1 -> not
    assert teacher_ranks_higher(probs, student, target).tolist() == [True, True, False]


def test_mean_target_is_one_kl_to_the_averaged_distribution(student_ds, teacher_dirs) -> None:
    task = make_task(student_ds, teacher_dirs, ImitationConfig(target="mean"))
    assert task.lambdas.names == ["mean"]
    task.model.eval()  # no dropout: the student's queries are recomputed below
    batch = first_batch(task)
    terms = task(batch)
    assert "kl_mean" in terms and not any(k in terms for k in ("kl_temporal", "kl_persona"))
    q, _, example = task.queries(batch)
    log_q = F.log_softmax(q @ task.model.item_vectors().T, 1)
    p = torch.stack([task.teacher_probs(t, example)[0] for t in task.teachers.values()]).mean(0)
    torch.testing.assert_close(terms["kl_mean"], kl_rows(log_q, p).mean())
    lam = task.lambdas()[0]
    mse = torch.stack([terms[f"mse_{n}"] for n in task.teachers]).mean()
    inv = 1 / lam
    torch.testing.assert_close(terms["loss"], terms["student"] + lam * (terms["kl_mean"] + mse) + inv + inv**2)


@pytest.mark.parametrize("option", ["kd", "kd_t2", "kd_fixed"])
def test_kd_option_is_one_kl_to_the_mean_without_representation_mse(student_ds, teacher_dirs, option: str) -> None:
    """``--kd`` / ``--kd_t2`` / ``--kd_fixed``: the ensemble distilled as one teacher (Hinton et al.): the mean's KL and
    no item-table MSE at all; ``kd_fixed`` at a fixed weight of 0.3 without eq. 8's regulariser."""
    from training.catalogue import IMITATION_OPTIONS

    assert IMITATION_OPTIONS[option].temperature == (2.0 if option == "kd_t2" else 1.0)
    task = make_task(student_ds, teacher_dirs, IMITATION_OPTIONS[option])
    assert task.lambdas.names == ["mean"]
    terms = task(first_batch(task))
    assert "kl_mean" in terms and not any(k.startswith("mse") for k in terms)
    lam = task.lambdas()[0]
    if option == "kd_fixed":
        torch.testing.assert_close(lam, torch.tensor(0.3), atol=1e-4, rtol=0)
        torch.testing.assert_close(terms["loss"], terms["student"] + lam * terms["kl_mean"])
    else:
        inv = 1 / lam
        torch.testing.assert_close(terms["loss"], terms["student"] + lam * terms["kl_mean"] + inv + inv**2)


def test_fixed_lambda_has_no_regulariser_and_no_gradient(student_ds, teacher_dirs) -> None:
    task = make_task(student_ds, teacher_dirs, ImitationConfig(learn_lambda=False, lambda_init=0.5))
    terms = task(first_batch(task))
    assert float(terms["lambda_reg"]) == 0.0
    torch.testing.assert_close(task.lambdas(), torch.full((3,), 0.5), atol=1e-4, rtol=0)
    terms["loss"].backward()
    assert task.lambdas.raw.grad is None and not task.lambdas.raw.requires_grad


def test_gate_drops_rows_and_logs_the_share(student_ds, teacher_dirs) -> None:
    task = make_task(student_ds, teacher_dirs, ImitationConfig(gate=True, use_mse=False))
    terms = task(first_batch(task))
    for n in task.teachers:
        assert 0.0 <= float(terms[f"gate_{n}"]) <= 1.0 and torch.isfinite(terms[f"kl_{n}"])


@pytest.mark.parametrize("change", [{"temperature": 0}, {"target": "median"}, {"top_k": 1}, {"lambda_init": 0},
                                    {"rank_k": 0}, {"rank_decay": 0}, {"rank_k": 5, "top_k": 5}])
def test_bad_options_are_refused(change: dict) -> None:
    with pytest.raises(ValueError):
        ImitationConfig(**change)


def test_is_papers_names_only_the_papers_loss() -> None:
    assert ImitationConfig().is_papers and ImitationConfig(use_kl=False).is_papers
    for change in ({"temperature": 2.0}, {"target": "mean"}, {"top_k": 50}, {"gate": True}, {"rank_k": 10},
                   {"learn_lambda": False}):
        assert not dataclasses.replace(ImitationConfig(), **change).is_papers


def test_kd_aug_imitates_on_one_corruption_shared_by_student_and_teachers(student_ds, teacher_dirs) -> None:
    """``--kd_aug``: the imitated inputs are corrupted (about 1 item in 5), the student's window is the tail of
    the very history the teachers encode, the corruption is new each epoch, and the student's own loss is the
    clean one."""
    from training.catalogue import IMITATION_OPTIONS

    task = make_task(student_ds, teacher_dirs, IMITATION_OPTIONS["kd_aug"])
    batch = first_batch(task)
    hist, aug = batch["history"], batch["aug_history"]
    width = hist.shape[1]
    teacher_hist = task._teacher_hist[batch["example"]]  # this epoch's corrupted teacher inputs
    assert torch.equal(aug, teacher_hist[:, -width:])  # one corruption, seen by both
    items = task._aug_history > 0
    swapped = float((task._aug_history != task.examples.arrays["history"])[items].mean())
    assert 0.1 < swapped < 0.3  # P = 0.2, less the draws of the same item
    teacher = next(iter(task.teachers.values()))
    torch.testing.assert_close(teacher.cache[batch["example"]], teacher.encode(teacher_hist))

    clean = make_task(student_ds, teacher_dirs, dataclasses.replace(IMITATION_OPTIONS["kd_aug"], augment=0.0))
    task.model.eval(), clean.model.eval()
    terms, clean_terms = task(batch), clean(first_batch(clean))
    torch.testing.assert_close(terms["student"], clean_terms["student"])
    assert not torch.isclose(terms["kl_mean"], clean_terms["kl_mean"])

    before = task._aug_history.copy()
    torch.manual_seed(1)  # the trainer seeds torch per epoch
    task.on_epoch_start(2)
    assert not np.array_equal(before, task._aug_history)


def test_augment_needs_teacher_queries_encoded_each_epoch() -> None:
    with pytest.raises(ValueError, match="augment"):
        ImitationConfig(augment=0.2, cache_probs=True)
    with pytest.raises(ValueError, match="augment"):
        ImitationConfig(augment=1.0)
