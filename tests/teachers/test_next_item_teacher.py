"""Consistency teachers on the causal backbones (GRU4Rec, SASRec-CE: next-item CE + task), and the teacher
ensemble. Every test of a backbone runs on each causal backbone of ``training.teachers.BACKBONES``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.contracts import ConsistencyBackbone, TokenConfig
from protocol import SequenceDataset, evaluate, load_or_create_negatives
from training.baselines import TRAIN_PRESETS as BASELINE_TRAIN_PRESETS
from training.ensemble import EnsembleScorer, evaluate_ensemble
from training.runs import load_run_model
from training.scoring import ContractScorer
from training.students import FrozenTeacher
from training.teachers import BACKBONES, NextItemTeacherTask, build_teacher, resolve_setup, train_teacher

CAUSAL = [name for name, b in BACKBONES.items() if not b.cloze]


def test_the_causal_backbones() -> None:
    assert CAUSAL == ["gru4rec", "sasrec"]


def causal_task(ds: SequenceDataset, variant: str, backbone: str) -> NextItemTeacherTask:
    setup = resolve_setup(variant, "smoke", ds.num_items, overrides={"batch_size": 16}, backbone=backbone)
    task = build_teacher(variant, ds, setup)
    assert isinstance(task, NextItemTeacherTask)
    return task


@pytest.mark.parametrize("backbone", CAUSAL)
def test_special_tokens_stay_out_of_the_item_table(backbone: str) -> None:
    cls = BACKBONES[backbone].model
    torch.manual_seed(0)
    plain = cls(cls.config_class.preset("smoke", num_items=30))
    ssi = cls(plain.config.replace(special_tokens=2)).eval()
    d = ssi.config.dim
    assert isinstance(ssi, ConsistencyBackbone) and isinstance(ssi.config, TokenConfig)
    assert sum(p.numel() for p in ssi.parameters()) == sum(p.numel() for p in plain.parameters()) + 2 * d
    assert ssi.item_vectors().shape == ssi.output_items().shape == (30, d)
    assert (ssi.config.mask_token, ssi.config.int_token) == (31, 32)
    h = torch.tensor([[0, 3, 4, ssi.config.mask_token], [5, 6, 7, ssi.config.int_token]])
    assert ssi.hidden_states(h).shape == (2, 4, d)
    assert torch.allclose(ssi.scores(h[:, :3]), ssi.encode(h[:, :3]) @ ssi.item_vectors().T, atol=1e-5)
    with pytest.raises(ValueError, match="special_tokens"):
        cls.config_class(num_items=30, special_tokens=1)


def test_a_model_without_task_tokens_is_not_a_causal_backbone(tiny_ds: SequenceDataset) -> None:
    from models.bert4rec import BERT4Rec, BERT4RecConfig

    with pytest.raises(TypeError, match="not a consistency backbone"):
        NextItemTeacherTask(BERT4Rec(BERT4RecConfig.preset("smoke", num_items=tiny_ds.num_items)), tiny_ds, 16,
                            "temporal", resolve_setup("temporal", "smoke", 100).consistency)


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


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_a_sasrec_teacher_has_the_sasrec_ce_recipe(preset: str) -> None:
    """Width, depth, dropout, history length and optimisation of the sasrec_ce baseline, plus [MASK]/[INT]."""
    from models.sasrec import SASRecConfig

    s = resolve_setup("temporal", preset, 100, seed=7, backbone="sasrec")
    assert s.backbone == "sasrec" and s.cloze is None and s.model == SASRecConfig.preset(preset, num_items=100,
                                                                                          special_tokens=2)
    base = BASELINE_TRAIN_PRESETS[preset]
    assert (s.train.lr, s.train.batch_size, s.train.patience, s.train.epochs, s.train.weight_decay) == \
        (base.lr, base.batch_size, base.patience, base.epochs, base.weight_decay)
    assert s.train.max_len == s.model.max_len and s.train.seed == 7
    with pytest.raises(ValueError, match="sasrec_ce_prefix baseline"):
        resolve_setup("bert4rec", preset, 100, backbone="sasrec")
    with pytest.raises(ValueError, match="unknown override"):
        resolve_setup("temporal", preset, 100, overrides={"special_tokens": 0}, backbone="sasrec")
    tuned = resolve_setup("persona", preset, 100, overrides={"n_layers": 3, "dropout": 0.3, "lr": 5e-4}, backbone="sasrec")
    assert (tuned.model.n_layers, tuned.model.dropout, tuned.train.lr) == (3, 0.3, 5e-4)


@pytest.mark.parametrize("backbone", CAUSAL)
@pytest.mark.parametrize("variant", ["temporal", "persona", "global"])
def test_batches_carry_the_task_and_the_loss_has_both_terms(tiny_ds: SequenceDataset, variant: str,
                                                             backbone: str) -> None:
    task = causal_task(tiny_ds, variant, backbone)
    batch = next(task.batches(1, np.random.default_rng(0), 0, 1))
    keys = {"task_input", "task_label"} if variant != "global" else {"global_masked", "global_segment"}
    assert keys <= set(batch)
    out = task(batch)
    assert {"loss", "next_item", variant, "task_acc"} <= set(out)
    assert torch.isclose(out["loss"], out["next_item"] + out[variant], atol=1e-5)  # weight 1 (eq. 4)
    out["loss"].backward()
    head = next(task.consistency.parameters())
    assert head.grad is not None and all(p.grad is not None for p in task.model.parameters())


@pytest.mark.parametrize("backbone", CAUSAL)
def test_each_batch_row_is_one_users_segment(tiny_ds: SequenceDataset, backbone: str) -> None:
    """Persona draws donors other than the row's user: every row's examples must belong to one user."""
    task = causal_task(tiny_ds, "persona", backbone)
    for batch in task.batches(1, np.random.default_rng(1), 0, 1):
        ex = batch["example"].numpy()
        for row in ex:
            assert len(set(task.examples.teacher_users[row[row >= 0]].tolist())) == 1


@pytest.mark.parametrize("backbone", CAUSAL)
def test_a_causal_teacher_trains_end_to_end_and_serves_as_a_teacher(tiny_ds: SequenceDataset, tmp_path,
                                                                     backbone: str) -> None:
    metrics = train_teacher("temporal", tiny_ds, "smoke", tmp_path / "t", seed=3, progress=False, backbone=backbone)
    assert metrics["test"]["sampled"]["ndcg@10"] > 0
    for at in ("best", "last"):  # task accuracy and chance are recorded (issue 26)
        task = metrics["task"][at]
        assert 0 <= task["train_task_acc"] <= 1 and 0 <= task["heldout_task_acc"] <= 1
        assert 0.5 <= task["train_task_chance"] <= 1 and 0.5 <= task["heldout_task_chance"] <= 1
    model, info = load_run_model(tmp_path / "t")
    assert isinstance(model, BACKBONES[backbone].model) and model.config.special_tokens == 2
    assert info["teacher_backbone"] == backbone and info["cloze_config"] is None
    teacher = FrozenTeacher.load(f"{backbone}_temporal", tmp_path / "t", tiny_ds)
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
