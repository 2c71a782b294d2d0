"""SASRec-CE on every prefix (recipe ``sasrec_prefix``, row ``sasrec_ce_prefix``): the SASRec consistency
teachers' recipe without their task.

Bit-identical weights against the teacher trained with task weight 0 are out of reach by construction, and
are not what this pins: the teacher's model has two extra token rows ([MASK], [INT]), so every parameter after
the item table is initialised from other RNG draws; its ``batches`` draw the epoch's augmentation seed from the
epoch rng before the batch order; and its zero-weighted task still runs a second forward with dropout (torch
RNG draws). So the tests pin everything else, through the real entry points (``train_student`` against
``train_teacher --set weight=0``, ``fit`` captured): the same model config but for the token rows, the same
trainer config, the same examples, the same batches from the same rng state, and the same loss on a batch for
the same weights.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import students, teachers
from training.catalogue import CATALOG, PLAIN_ROWS, alone_of, spec_of
from training.students import (
    EXAMPLE_SCHEMES,
    STUDENT_RECIPES,
    build_student,
    student_train_config,
    train_student,
)
from training.teachers import BACKBONES, resolve_setup, train_teacher

SEED = 5


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_the_prefix_recipe_is_the_sas_teachers_recipe(student_ds, preset: str) -> None:
    """Model and trainer config of the SASRec teachers (but the task tokens); the model's own examples; and
    the catalogue row that trains it is the SASRec backbone's row trained alone."""
    alone = PLAIN_ROWS["sasrec"]
    assert alone == "sasrec_ce_prefix" and spec_of(alone).student_key == ("sasrec_prefix", "ce")
    assert CATALOG[alone].teachers == () and CATALOG[alone].baseline is None
    recipe = STUDENT_RECIPES[spec_of(alone).student]
    assert recipe.model == "sasrec" == STUDENT_RECIPES["sasrec"].model and recipe.examples is None
    model = build_student("sasrec_prefix", student_ds, preset)
    setup = resolve_setup("temporal", preset, student_ds.num_items, seed=SEED, progress=False, backbone="sasrec")
    assert type(model) is BACKBONES["sasrec"].model
    assert model.config == dataclasses.replace(setup.model, special_tokens=0)
    assert student_train_config("sasrec_prefix", preset, model, SEED, False) == setup.train
    # sasrec_ce: the same model and trainer config, other examples and batches
    assert student_train_config("sasrec", preset, model, SEED, False) == setup.train
    assert STUDENT_RECIPES["sasrec"].examples.name == "recent_segments"


def _captured_tasks(monkeypatch, ds, tmp_path: Path):
    """(student task, its TrainConfig), (teacher task, its TrainConfig) as ``fit`` receives them."""
    got: dict[str, tuple] = {}

    def fake_fit(key):
        def fit(task, ds, cfg, run_dir, **kw):
            got[key] = (task, cfg)
            return {}
        return fit

    monkeypatch.setattr(students, "fit", fake_fit("student"))
    monkeypatch.setattr(teachers, "fit", fake_fit("teacher"))
    train_student("sasrec_prefix", ds, "smoke", tmp_path / "student", seed=SEED, progress=False)
    # the control of the task ablation: python -m training.teachers --variant temporal --backbone sasrec --set weight=0
    train_teacher("temporal", ds, "smoke", tmp_path / "teacher", seed=SEED, overrides={"weight": 0.0},
                  progress=False, backbone="sasrec")
    return got["student"], got["teacher"]


def test_alone_it_trains_on_the_sas_teachers_examples_and_batches(student_ds, monkeypatch, tmp_path: Path) -> None:
    (stud, s_cfg), (teach, t_cfg) = _captured_tasks(monkeypatch, student_ds, tmp_path)
    assert s_cfg == t_cfg
    assert stud.scheme is teach.scheme is EXAMPLE_SCHEMES["prefixes"] and stud.loss_name == teach.loss_name == "ce"
    assert (stud.batch_size, stud.bucket_pool, stud._budget) == (teach.batch_size, teach.bucket_pool, teach._budget)
    for k in ("history", "targets", "example"):
        np.testing.assert_array_equal(stud.examples.arrays[k], teach.examples.arrays[k])
    np.testing.assert_array_equal(stud.examples.teacher_users, teach.examples.teacher_users)
    np.testing.assert_array_equal(stud.examples.teacher_prefix, teach.examples.teacher_prefix)
    assert stud.num_batches(1) == teach.num_batches(1)
    for epoch in (1, 2):  # the trainer's epoch rng (training.trainer._seed_epoch)
        rng_s, rng_t = (np.random.default_rng([SEED, epoch]) for _ in range(2))
        assert [b.tolist() for b in stud._batch_indices(rng_s, 0, 1)] == \
            [b.tolist() for b in teach._batch_indices(rng_t, 0, 1)]
        # through ``batches``: the teacher first draws its augmentation seed from the epoch rng, then the
        # student's batches follow
        rng_s, rng_t = (np.random.default_rng([SEED, epoch]) for _ in range(2))
        rng_s.integers(2**62)
        s_batches, t_batches = list(stud.batches(epoch, rng_s, 0, 1)), list(teach.batches(epoch, rng_t, 0, 1))
        assert len(s_batches) == len(t_batches) > 1
        for s, t in zip(s_batches, t_batches):
            assert all(torch.equal(s[k], t[k]) for k in ("history", "targets", "example"))
    # the same weights (the teacher's two token rows aside) give the same loss: the task weighs 0
    with torch.no_grad():
        for (name, p_s), (_, p_t) in zip(stud.model.state_dict().items(), teach.model.state_dict().items()):
            (p_t[: len(p_s)] if name == "tok_emb.weight" else p_t).copy_(p_s)
    stud.model.eval()
    teach.model.eval()
    batch = t_batches[0]
    out_s, out_t = stud(batch), teach(batch)
    torch.testing.assert_close(out_t["loss"], out_s["loss"], rtol=0, atol=0)
    torch.testing.assert_close(out_t["next_item"], out_s["loss"], rtol=0, atol=0)


def test_alone_it_trains_as_a_student_run(student_ds, tmp_path: Path) -> None:
    """Two smoke epochs through ``train_student``: a finished run of SASRec on prefix examples."""
    m = train_student("sasrec_prefix", student_ds, "smoke", tmp_path / "run", seed=SEED, progress=False, epochs=2)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["student"], info["loss"], info["examples"], info["model"]) == ("sasrec_prefix", "ce", "prefixes",
                                                                                 "sasrec")
    assert info["teachers"] == {} and len(json.loads((tmp_path / "run" / "history.json").read_text())) == 2
    assert 0.0 <= m["test"]["full"]["ndcg@10"] <= 1.0


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_the_wide_recipe_is_the_prefix_recipe_at_twice_the_width(student_ds, preset: str) -> None:
    """``sasrec_prefix_wide`` (row ``sasrec_ce_prefix_wide``): the prefix recipe's examples, batches and trainer
    config, its model at twice the width; a composition distils it from the narrow runs and pairs it with itself
    alone."""
    narrow, wide = (build_student(s, student_ds, preset) for s in ("sasrec_prefix", "sasrec_prefix_wide"))
    assert wide.config == narrow.config.replace(dim=2 * narrow.config.dim, ffn_dim=2 * narrow.config.ffn_dim)
    assert wide.config.n_layers == narrow.config.n_layers and wide.config.max_len == narrow.config.max_len
    assert (student_train_config("sasrec_prefix_wide", preset, wide, SEED, False)
            == student_train_config("sasrec_prefix", preset, narrow, SEED, False))
    assert STUDENT_RECIPES["sasrec_prefix_wide"].examples is STUDENT_RECIPES["sasrec_prefix"].examples
    name = "sasrec_ce_prefix_wide--sasrec_ce_prefix@0+sasrec_ce_prefix@1+sasrec_ce_prefix@2--kd"
    assert spec_of(name).student_key == ("sasrec_prefix_wide", "ce")
    assert alone_of(name) == "sasrec_ce_prefix_wide"
