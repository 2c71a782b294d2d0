"""The model contracts as code: what serving, export and training may rely on, and nothing more.

``ServableEncoder`` is every registered model (``models.MODELS``): students, teachers and baselines.
``Student`` adds what self-supervised imitation needs (the output item table, the default loss and
the kind of training examples); ``WindowStudent`` / ``PrefixStudent`` are the two kinds.
``ConsistencyBackbone`` is a prefix student that SSI's consistency tasks can train as a teacher.

The protocols are ``runtime_checkable``: ``isinstance(model, Student)`` checks that every member is
present (not the signatures), and ``tests/students/test_contract.py`` checks every class of
``models.MODELS`` against them, plus the numbers (``encode @ item_vectors.T == scores``).
Training code picks what to do from these members (e.g. ``training_examples``), never from a
model's name. Shapes: B batch, L history width, N items (ids 1..N), D the query/item dimension.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch

LossName = Literal["bpr", "ce"]
ExampleKind = Literal["windows", "prefixes"]


@runtime_checkable
class ServableEncoder(Protocol):
    """A model the exporter turns into ``encoder.onnx`` + ``items.npy`` (docs/CONTRACTS.md, Models)."""

    model_name: ClassVar[str]  # registry key in models.MODELS, e.g. "hgn"
    config_class: ClassVar[type]  # the @dataclass config (a models.config.ModelConfig); built as cls(config)
    fixed_length: ClassVar[bool]  # True when encode needs exactly config.max_len history columns (HGN's window)
    uses_user: ClassVar[bool]  # True when encode reads the user id (row + 1; 0 = unknown user)
    config: Any  # the instance's config_class instance

    def encode(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) int64 left-padded history (0 = padding), (B,) user ids or None -> (B, D) float queries."""
        ...

    def item_vectors(self) -> torch.Tensor:
        """(N, D) float; row i = item id i + 1 (padding and special tokens excluded, biases folded in)."""
        ...

    def scores(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) the model's own next-item scores over items 1..N, by its own path (what it trains or
        was published with), not through ``encode``: the reference ``encode @ item_vectors.T`` must equal."""
        ...


@runtime_checkable
class Teacher(ServableEncoder, Protocol):
    """What a student imitates (``training.students.FrozenTeacher``): the servable contract for its next-item
    distribution, plus the output item table that item-representation imitation aligns. Any model family
    (BERT4Rec, GRU4Rec, SASRec, HGN) that has both can teach; the student code never asks which it is."""

    def output_items(self) -> torch.Tensor:
        """(N, d) the output item table (no bias column)."""
        ...


@runtime_checkable
class Student(ServableEncoder, Protocol):
    """A model trained by ``training.students.StudentTask`` (alone or imitating teachers)."""

    default_loss: ClassVar[LossName]  # its own loss: "bpr" (sampled negatives) or "ce" (all items)
    # the training examples it learns from (built in training, never here):
    # "windows": one query per window of the last config.max_len items before config.targets targets
    #            (WindowStudent: encode(history, user) is the query);
    # "prefixes": every prefix of a sequence scored in one pass (PrefixStudent: sequence_output).
    training_examples: ClassVar[ExampleKind]

    def output_items(self) -> torch.Tensor:
        """(N, d) the output item table that item-representation imitation aligns (no bias column)."""
        ...


@runtime_checkable
class WindowStudent(Student, Protocol):
    """``training_examples == "windows"``; its config has ``max_len`` (L), ``targets`` (T), ``num_negatives``."""


@runtime_checkable
class PrefixStudent(Student, Protocol):
    """``training_examples == "prefixes"``; its config has ``max_len`` and ``num_negatives``."""

    def sequence_output(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded -> (B, L, D) aligned with the input: column t = the query after item t, from items
        up to t only (GRU4Rec: ``encode`` of the prefix ending at t; SASRec: the same but for its right-aligned
        positions); the last column is ``encode``'s query; padding columns are zero."""
        ...


@runtime_checkable
class ConsistencyBackbone(PrefixStudent, Protocol):
    """A causal teacher backbone (``training.teachers.NextItemTeacherTask``): trained like a prefix student
    (cross-entropy on every next item), plus the hidden states that SSI's consistency tasks read (column -1:
    the last token, [INT] for temporal/persona). Its config is a ``TokenConfig`` with ``special_tokens=2``."""

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded tokens (items, [MASK], [INT]), L <= config.max_len -> (B, L, d)."""
        ...


@runtime_checkable
class TokenConfig(Protocol):
    """The config of a ``ConsistencyBackbone``: token rows after the items for the consistency tasks."""

    num_items: int
    max_len: int
    dim: int  # d: the hidden size the task heads read
    special_tokens: int  # 0 (none) or 2 ([MASK] = N + 1, [INT] = N + 2), never part of item_vectors()
    mask_token: int
    int_token: int


@runtime_checkable
class StudentConfig(Protocol):
    """What a student's config holds beside its sizes (checked with ``isinstance(model.config, ...)``)."""

    num_items: int
    max_len: int  # the window (fixed-length) or the longest history a training example reads
    num_negatives: int  # sampled negatives per target with the BPR loss


@runtime_checkable
class WindowConfig(StudentConfig, Protocol):
    targets: int  # T: next items predicted per training window


def student_problems(model: object) -> list[str]:
    """Why ``model`` does not meet the student contract (an empty list when it does)."""
    kind = getattr(model, "training_examples", None)  # may be missing: that is what is reported
    need: list[tuple[object, type]] = [(model, Student)]
    if kind == "windows":
        need += [(model, WindowStudent), (getattr(model, "config", None), WindowConfig)]
    elif kind == "prefixes":
        need += [(model, PrefixStudent), (getattr(model, "config", None), StudentConfig)]
    else:
        return [f"training_examples is {kind!r}; expected 'windows' or 'prefixes'"] + missing(model, Student)
    return [p for obj, proto in need for p in missing(obj, proto)]


def missing(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks, as ``"<Protocol>.<member>"``."""
    names = [n for base in protocol.__mro__ if getattr(base, "_is_protocol", False) and base is not Protocol
             for n in (*getattr(base, "__annotations__", {}), *vars(base))
             if not n.startswith("_")]
    return [f"{protocol.__name__}.{n}" for n in dict.fromkeys(names) if not hasattr(obj, n)]


__all__ = ["ConsistencyBackbone", "ExampleKind", "LossName", "PrefixStudent", "ServableEncoder", "Student",
           "StudentConfig", "Teacher", "TokenConfig", "WindowConfig", "WindowStudent", "missing", "student_problems"]
