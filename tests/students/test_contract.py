"""The model contracts (``models.contracts``), checked on every model in ``models.MODELS``.

A model registered later is picked up automatically: it is built as
``cls(cls.config_class.preset("smoke", num_items=..., [num_users=...]))`` and must meet
``ServableEncoder`` (``isinstance`` with the runtime-checkable protocol, then the numbers:
``encode @ item_vectors.T == scores``); a class with ``training_examples`` must meet ``Student``.
"""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import MODELS, ModelConfig
from models.contracts import (
    PrefixStudent,
    ServableEncoder,
    Student,
    Teacher,
    WindowStudent,
    missing,
    student_problems,
)
from training.runs import load_run_model, save_best, write_model_config
from training.scoring import ContractScorer

ROOT = Path(__file__).resolve().parents[2]
N_ITEMS, N_USERS = 40, 9
NAMES = sorted(MODELS)
STUDENTS = sorted(n for n, c in MODELS.items() if hasattr(c, "training_examples"))
# every preset's values as they were when the results were produced (num_items/num_users come from data)
PINNED_PRESETS = json.loads((Path(__file__).with_name("model_presets.json")).read_text())


def sizes_for(cls) -> dict[str, int]:
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    return {"num_items": N_ITEMS} | ({"num_users": N_USERS} if "num_users" in fields else {})


def build(name: str):
    cls = MODELS[name]
    torch.manual_seed(0)
    model = cls(cls.config_class.preset("smoke", **sizes_for(cls))).eval()
    perturb(model)
    return model


@torch.no_grad()
def perturb(model: torch.nn.Module) -> None:
    """Move every weight off its initial value, as training would: zero-initialised biases and gates
    hide mistakes (a dropped bias column, padding that reaches a recurrent state). Rows that training
    never changes (``padding_idx``) keep their value."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
            m.weight[m.padding_idx].zero_()


def histories(model, width: int | None = None) -> torch.Tensor:
    """(4, W) left-padded histories of 1, 3, 6 and W items (W = the model's window when fixed)."""
    w = model.config.max_len if model.fixed_length else (width or 12)
    out = torch.zeros(4, w, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    for i, n in enumerate((1, 3, min(6, w), w)):
        out[i, w - n:] = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    return out


def users(model) -> torch.Tensor | None:
    return torch.tensor([1, 4, 9, 2]) if model.uses_user else None


@pytest.fixture(params=NAMES)
def model(request):
    return build(request.param)


@pytest.fixture(params=STUDENTS)
def student(request):
    return build(request.param)


# ---- the registry -----------------------------------------------------------------------------------
def test_registry_has_every_model_and_the_students():
    assert set(NAMES) == {"bert4rec", "hgn", "gru4rec", "sasrec", "s3rec", "grec"}
    # SASRec (and S3-Rec, its pre-trained form) scores every prefix in one causal pass: a prefix student, which
    # is what lets it carry SSI's consistency tasks as a teacher backbone (training.teachers, --backbone sasrec)
    assert STUDENTS == ["gru4rec", "hgn", "s3rec", "sasrec"]


def test_a_missing_model_file_is_an_import_error():
    """No silent registry: ``import models`` fails when a model module cannot be found. (A None entry in
    ``sys.modules`` is how a missing module looks to the import system; a copy of the package without the
    file would not do, the editable install still finds the checkout's.)"""
    code = ("import sys\nsys.modules['models.hgn'] = None\n"
            "try:\n    import models\nexcept ImportError as e:\n    print(e)\n    sys.exit(3)\n"
            "print('imported without error:', sorted(models.MODELS))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 3 and "models.hgn" in proc.stdout, proc.stdout + proc.stderr


def test_no_caller_branches_on_a_model_name():
    pattern = re.compile(r"model_name\s*(==|!=|\bin\b)")
    hits = [f"{p.relative_to(ROOT)}:{i}" for pkg in ("training", "export", "serving", "loadtest", "models")
            for p in sorted((ROOT / pkg).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, f"branch on the contract's members instead of a model's name: {hits}"


# ---- the protocols ----------------------------------------------------------------------------------
def test_every_model_is_a_servable_encoder(model):
    assert isinstance(model, ServableEncoder), missing(model, ServableEncoder)
    cls = type(model)
    assert MODELS[cls.model_name] is cls
    assert isinstance(cls.fixed_length, bool) and isinstance(cls.uses_user, bool)
    assert issubclass(cls.config_class, ModelConfig) and isinstance(model.config, cls.config_class)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    assert ("num_users" in fields) == cls.uses_user
    if cls.fixed_length:
        assert "max_len" in fields


def test_every_student_meets_the_student_contract(student):
    assert isinstance(student, Student) and student_problems(student) == []
    assert student.default_loss in ("bpr", "ce")
    kind = {"windows": WindowStudent, "prefixes": PrefixStudent}[student.training_examples]
    assert isinstance(student, kind)
    with torch.no_grad():
        table = student.output_items()
    assert table.shape[0] == N_ITEMS and table.dtype == torch.float32


def test_the_teacher_families_meet_the_teacher_contract(model):
    """A teacher is any model with the servable contract plus ``output_items`` (its output table, as many rows
    as items): the students never branch on which family it is."""
    if type(model).model_name not in {"bert4rec", "gru4rec", "hgn", "sasrec"}:
        pytest.skip("not a teacher family")
    assert isinstance(model, Teacher), missing(model, Teacher)
    with torch.no_grad():
        table = model.output_items()
    assert table.shape[0] == N_ITEMS and table.ndim == 2


def test_the_protocols_catch_a_missing_member():
    class NoScores(torch.nn.Module):
        model_name, config_class, fixed_length, uses_user = "x", ModelConfig, False, False

        def __init__(self):
            super().__init__()
            self.config = ModelConfig(num_items=3)

        def encode(self, history, user=None):
            return history.float()

        def item_vectors(self):
            return torch.zeros(3, 1)

    m = NoScores()
    assert not isinstance(m, ServableEncoder) and missing(m, ServableEncoder) == ["ServableEncoder.scores"]
    grec = build("grec")  # servable, not a student
    assert isinstance(grec, ServableEncoder) and not isinstance(grec, Student)
    assert student_problems(grec)  # names what it lacks
    with pytest.raises(TypeError, match="student contract"):
        from training.students import example_scheme

        example_scheme(grec)


# ---- the numbers ------------------------------------------------------------------------------------
def test_a_prefix_students_sequence_output_is_causal_and_ends_in_the_query(student):
    """``sequence_output``: column t reads items up to t only (changing later items leaves it), the last column
    is ``encode``'s query, padding columns are zero. (GRU4Rec's column t is exactly ``encode`` of the prefix;
    SASRec's differs from it by its right-aligned positions, as SASRec trains.)"""
    if student.training_examples != "prefixes":
        pytest.skip("window student")
    h = histories(student, 8)
    later = h.clone()
    later[:, -3:] = torch.where(h[:, -3:] > 0, h[:, -3:] % N_ITEMS + 1, 0)  # other items in the last 3 columns
    with torch.no_grad():
        out, moved = student.sequence_output(h), student.sequence_output(later)  # (4, 8, d)
        torch.testing.assert_close(out[:, -1], student.encode(h), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :-3], moved[:, :-3], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[:, -1], moved[:, -1])
    assert (out[h == 0] == 0).all()


def test_shapes_and_inner_product_equals_own_scores(model):
    h, u = histories(model), users(model)
    with torch.no_grad():
        q, items = model.encode(h, u), model.item_vectors()
        own = model.scores(h, u)
    assert q.dtype == torch.float32 and items.dtype == torch.float32
    assert q.shape[0] == 4 and items.shape == (N_ITEMS, q.shape[1])
    assert own.shape == (4, N_ITEMS)
    assert torch.isfinite(q).all() and torch.isfinite(items).all()
    torch.testing.assert_close(q @ items.T, own, rtol=1e-5, atol=1e-5)


def test_rows_do_not_depend_on_the_batch(model):
    """Dynamic batching must not change a request's result."""
    h, u = histories(model), users(model)
    with torch.no_grad():
        full = model.encode(h, u)
        rows = torch.cat([model.encode(h[i:i + 1], None if u is None else u[i:i + 1]) for i in range(len(h))])
        again = model.encode(h, u)
    torch.testing.assert_close(full, rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, again, rtol=0, atol=0)


def test_padding_width_does_not_change_the_query(model):
    """The server pads to any width (L is dynamic unless ``fixed_length``)."""
    if model.fixed_length:
        pytest.skip("fixed-length encoder: the export fixes L = config.max_len")
    h, u = histories(model, 8), users(model)
    wide = torch.nn.functional.pad(h, (12, 0))  # the same histories with 12 more padding columns
    with torch.no_grad():
        torch.testing.assert_close(model.encode(h, u), model.encode(wide, u), rtol=1e-5, atol=1e-5)


def test_anonymous_user(model):
    h = histories(model)
    with torch.no_grad():
        anon = model.encode(h, None)
        zero = model.encode(h, torch.zeros(len(h), dtype=torch.long))
        some = model.encode(h, torch.tensor([3, 1, 2, 5]))
    torch.testing.assert_close(anon, zero, rtol=0, atol=0)  # None means user 0
    if not model.uses_user:
        torch.testing.assert_close(anon, some, rtol=0, atol=0)  # ids are ignored
    else:
        assert not torch.allclose(anon, some)  # ids matter


def test_contract_scorer_full_and_sampled_agree(model):
    h = histories(model).numpy()
    rows = np.array([0, 3, 8, 1])  # protocol rows; the scorer passes row + 1
    scorer = ContractScorer(model)
    full = scorer(h, rows, None)
    assert full.shape == (4, N_ITEMS + 1) and np.isneginf(full[:, 0]).all()
    cand = np.array([[1, 5, 40], [2, 2, 7], [40, 39, 38], [10, 20, 30]])
    sampled = scorer(h, rows, cand)
    np.testing.assert_allclose(sampled, np.take_along_axis(full, cand, axis=1), rtol=1e-5, atol=1e-5)


def test_run_folder_round_trip(model, tmp_path):
    save_best(model, tmp_path)
    write_model_config(model, tmp_path)
    loaded, _ = load_run_model(tmp_path)
    h, u = histories(model), users(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(h, u), model.encode(h, u), rtol=0, atol=0)
        torch.testing.assert_close(loaded.item_vectors(), model.item_vectors(), rtol=0, atol=0)


# ---- configs (models.config.ModelConfig) ------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_presets_keep_their_values_and_saved_configs_load(name):
    cls = MODELS[name].config_class
    assert set(cls.PRESETS) == {"smoke", "cpu", "paper"}
    sizes = sizes_for(MODELS[name])
    for preset, values in PINNED_PRESETS[name].items():
        cfg = cls.preset(preset, **sizes)
        saved = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as model_config.json holds it
        assert next(iter(saved)) == "num_items"
        assert {k: v for k, v in saved.items() if k not in sizes} == values, f"{name} {preset} preset changed"
        assert cls(**saved) == cfg  # read back
        assert cls.preset(preset, **sizes, max_len=7 if name == "hgn" else 30).max_len in (7, 30)  # overrides
    with pytest.raises(ValueError, match="unknown preset"):
        cls.preset("huge", **sizes)
    with pytest.raises(ValueError, match="num_items must be >= 1"):
        cls.preset("smoke", **(sizes | {"num_items": 0}))
    cfg = cls.preset("smoke", **sizes)
    assert cfg.replace(num_items=N_ITEMS + 1).num_items == N_ITEMS + 1 and cfg.num_items == N_ITEMS
    with pytest.raises(ValueError, match="num_items"):
        cfg.replace(num_items=0)


def test_a_gru4rec_config_saved_before_num_negatives_loads():
    saved = {"num_items": 12, "dim": 16, "hidden": 16, "num_layers": 1, "dropout": 0.1, "max_len": 20,
             "special_tokens": 0}
    cfg = MODELS["gru4rec"].config_class(**saved)
    assert cfg.num_negatives == 3  # the value the BPR loss always used for GRU4Rec
