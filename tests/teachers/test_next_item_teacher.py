"""Consistency teachers on a causal GRU4Rec backbone (next-item CE + task), and the teacher ensemble."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.gru4rec import GRU4Rec, GRU4RecConfig
from protocol import SequenceDataset, evaluate, load_or_create_negatives
from training.ensemble import EnsembleScorer, evaluate_ensemble
from training.runs import load_run_model
from training.scoring import ContractScorer
from training.students import FrozenTeacher
from training.teachers import NextItemTeacherTask, build_teacher, resolve_setup, train_teacher


def gru_task(ds: SequenceDataset, variant: str) -> NextItemTeacherTask:
    setup = resolve_setup(variant, "smoke", ds.num_items, overrides={"batch_size": 16}, backbone="gru4rec")
    task = build_teacher(variant, ds, setup)
    assert isinstance(task, NextItemTeacherTask)
    return task


def test_special_tokens_stay_out_of_the_item_table() -> None:
    plain = GRU4Rec(GRU4RecConfig(num_items=30, dim=8, hidden=8))
    ssi = GRU4Rec(GRU4RecConfig(num_items=30, dim=8, hidden=8, special_tokens=2)).eval()
    assert ssi.item_emb.num_embeddings == plain.item_emb.num_embeddings + 2
    assert ssi.item_vectors().shape == ssi.output_items().shape == (30, 8)
    h = torch.tensor([[0, 3, 4, ssi.config.mask_token], [5, 6, 7, ssi.config.int_token]])
    assert ssi.hidden_states(h).shape == (2, 4, 8)
    assert torch.allclose(ssi(h[:, :3]), ssi.encode(h[:, :3]) @ ssi.item_vectors().T)
    with pytest.raises(ValueError, match="special_tokens"):
        GRU4RecConfig(num_items=30, special_tokens=1)


def test_setup_rejects_a_plain_gru_teacher_and_foreign_fields() -> None:
    with pytest.raises(ValueError, match="gru4rec baseline"):
        resolve_setup("bert4rec", "smoke", 100, backbone="gru4rec")
    with pytest.raises(ValueError, match="unknown override"):
        resolve_setup("temporal", "smoke", 100, overrides={"mask_prob": 0.4}, backbone="gru4rec")  # cloze field
    with pytest.raises(ValueError, match="backbone"):
        resolve_setup("temporal", "smoke", 100, backbone="lstm")
    s = resolve_setup("global", "cpu", 100, overrides={"hidden": 256, "temperature": 0.5}, backbone="gru4rec")
    assert s.backbone == "gru4rec" and s.cloze is None and s.model.hidden == 256 and s.consistency.temperature == 0.5
    assert s.model.special_tokens == 2


@pytest.mark.parametrize("variant", ["temporal", "persona", "global"])
def test_batches_carry_the_task_and_the_loss_has_both_terms(tiny_ds: SequenceDataset, variant: str) -> None:
    task = gru_task(tiny_ds, variant)
    batch = next(task.batches(1, np.random.default_rng(0), 0, 1))
    keys = {"task_input", "task_label"} if variant != "global" else {"global_masked", "global_segment"}
    assert keys <= set(batch)
    out = task(batch)
    assert {"loss", "next_item", variant, "task_acc"} <= set(out)
    assert torch.isclose(out["loss"], out["next_item"] + out[variant], atol=1e-5)  # weight 1 (eq. 4)
    out["loss"].backward()
    head = next(task.consistency.parameters())
    assert head.grad is not None and task.model.item_emb.weight.grad is not None


def test_each_batch_row_is_one_users_segment(tiny_ds: SequenceDataset) -> None:
    """Persona draws donors other than the row's user: every row's examples must belong to one user."""
    task = gru_task(tiny_ds, "persona")
    for batch in task.batches(1, np.random.default_rng(1), 0, 1):
        ex = batch["example"].numpy()
        for row in ex:
            assert len(set(task.examples.teacher_users[row[row >= 0]].tolist())) == 1


def test_gru_teacher_trains_end_to_end_and_serves_as_a_teacher(tiny_ds: SequenceDataset, tmp_path) -> None:
    metrics = train_teacher("temporal", tiny_ds, "smoke", tmp_path / "t", seed=3, progress=False, backbone="gru4rec")
    assert metrics["test"]["sampled"]["ndcg@10"] > 0
    model, info = load_run_model(tmp_path / "t")
    assert isinstance(model, GRU4Rec) and model.config.special_tokens == 2
    assert info["teacher_backbone"] == "gru4rec" and info["cloze_config"] is None
    teacher = FrozenTeacher.load("gru_temporal", tmp_path / "t", tiny_ds)
    assert teacher.dim == model.config.dim  # the MSE target is the whole tied table (no bias column to drop)
    assert teacher.item_table().shape == (tiny_ds.num_items, model.config.dim)


def test_ensemble_of_one_ranks_like_its_member(tiny_ds: SequenceDataset, tmp_path) -> None:
    train_teacher("global", tiny_ds, "smoke", tmp_path / "a", seed=1, progress=False, backbone="gru4rec")
    model, _ = load_run_model(tmp_path / "a")
    neg = load_or_create_negatives(tiny_ds)
    alone = evaluate(ContractScorer(model), tiny_ds, "valid", "sampled", max_len=20, negatives=neg)
    one = evaluate(EnsembleScorer([ContractScorer(model)]), tiny_ds, "valid", "sampled", max_len=20, negatives=neg)
    assert one["ndcg@10"] == pytest.approx(alone["ndcg@10"], abs=1e-9)


def test_ensemble_averages_probabilities(tiny_ds: SequenceDataset, tmp_path) -> None:
    for seed, name in ((1, "a"), (2, "b")):
        train_teacher("temporal", tiny_ds, "smoke", tmp_path / name, seed=seed, progress=False, backbone="gru4rec")
    scorers = [ContractScorer(load_run_model(tmp_path / n)[0]) for n in "ab"]
    hist = np.array([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    full = EnsembleScorer(scorers)(hist, np.array([0, 1]), None)
    probs = [torch.softmax(torch.from_numpy(s(hist, np.array([0, 1]), None)[:, 1:]).double(), 1) for s in scorers]
    assert np.allclose(np.exp(full[:, 1:]), ((probs[0] + probs[1]) / 2).numpy())
    cand = np.array([[3, 7, 9], [1, 2, 8]])
    assert np.allclose(EnsembleScorer(scorers)(hist, np.array([0, 1]), cand), np.take_along_axis(full, cand, 1))
    m = evaluate_ensemble([tmp_path / "a", tmp_path / "b"], tiny_ds, tmp_path / "ens", max_len=20)
    assert (tmp_path / "ens" / "metrics.json").is_file() and len(m["members"]) == 2
    assert 0 < m["valid"]["sampled"]["ndcg@10"] <= 1
