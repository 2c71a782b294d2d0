"""``ImitationConfig``: the switches and knobs of self-supervised imitation (SSI eq. 5-8), torch-free.

The paper's loss is the default: one KL and one MSE term per teacher, each weighted by a learned
``lambda_i`` with eq. 8's regulariser, temperature 1, the KL over all items, every example imitated.
The other fields are options for teachers that are not far above the student (REFERENCE.md section 9);
each one is an ablation row of ``run_all`` and is chosen on validation:

- ``temperature``: both distributions at ``tau`` (times ``tau^2``, Hinton's scaling).
- ``target="mean"``: one KL to the mean of the teachers' distributions (the ensemble as one teacher)
  and the mean of their MSE terms, under a single lambda.
- ``top_k``: the KL over the teacher's ``top_k`` items only, both distributions renormalised there.
- ``gate``: imitate only the examples where the teacher ranks the true next item above the student
  (the condition of bidirectional distillation, Kweon et al., WWW 2021); the others keep the
  student's own loss alone.
- ``rank_k``: ranking distillation (Tang & Wang, KDD 2018) in place of the KL: the teacher's top
  ``rank_k`` items other than the true next item are extra positives of the student's softmax, the
  item at teacher rank ``r`` (1 = best) weighted ``exp(-r / rank_decay)``, weights normalised to sum 1
  (RD's position weighting; its dynamic rank-discrepancy weight is left out).
- ``augment``: the imitation terms see corrupted histories: each history item is replaced by a uniform random
  item with this probability, drawn again each epoch, and the teachers and the student see the same
  corruption (a consistent teacher, Beyer et al., "Knowledge distillation: A good teacher is patient and
  consistent", CVPR 2022). On the clean training histories a teacher has seen every target it is asked
  about; on corrupted ones its prediction is not a recalled label. The student's own loss stays on the clean
  histories. The teachers' queries are encoded again each epoch (no ``cache_probs``).
- ``learn_lambda=False``: fixed weights ``lambda_init`` and no regulariser (with Adam the learned
  lambdas rise in lockstep, about lr per step, whatever the gradient's size).

Kept in its own module, without torch, so that ``training/run_all.py`` can name imitation variants in
its catalogue and still print ``--help`` without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ImitationConfig:
    """Switches and knobs of self-supervised imitation (the ablations run from these alone)."""

    use_kl: bool = True  # prediction imitation
    use_mse: bool = True  # item-representation imitation
    temperature: float = 1.0  # of both distributions in the KL
    target: Literal["each", "mean"] = "each"  # each: one KL per teacher (the paper); mean: KL to their mean
    top_k: int | None = None  # KL over the teacher's top-k items, renormalised (None: all items, the paper)
    gate: bool = False  # imitate only where the teacher ranks the true next item above the student
    rank_k: int | None = None  # ranking distillation: teacher's top-k items as weighted positives (None: the KL)
    rank_decay: float = 5.0  # RD's position weight exp(-rank / rank_decay) (our choice, not tuned)
    augment: float = 0.0  # P(history item -> random item) in the imitated inputs, drawn each epoch (0: clean)
    learn_lambda: bool = True  # eq. 8's learned lambdas (the paper) or fixed ones at lambda_init
    lambda_init: float = 1.0
    lambda_param: Literal["softplus", "exp"] = "softplus"
    always_project: bool = False  # a learned projection even when the student and teacher dims agree
    cache_teacher: bool = True  # teacher queries computed once (teachers are frozen and deterministic)
    cache_probs: bool = False  # teacher distributions precomputed once, float16 files (teacher_cache.py)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.lambda_init <= 0:
            raise ValueError(f"lambda_init must be > 0, got {self.lambda_init}")
        if self.cache_probs and not self.cache_teacher:
            raise ValueError("cache_probs needs cache_teacher (the distributions are built from the cached queries)")
        if not 0.0 <= self.augment < 1.0:
            raise ValueError(f"augment must be in [0, 1), got {self.augment}")
        if self.augment and (self.cache_probs or not self.cache_teacher):
            raise ValueError("augment re-encodes the teachers' queries each epoch: it needs cache_teacher and "
                             "cannot use cache_probs")
        if self.target not in ("each", "mean"):
            raise ValueError(f"target must be 'each' or 'mean', got {self.target!r}")
        if self.top_k is not None and self.top_k < 2:
            raise ValueError(f"top_k must be >= 2 (or None for all items), got {self.top_k}")
        if self.rank_k is not None and self.rank_k < 1:
            raise ValueError(f"rank_k must be >= 1 (or None for the KL), got {self.rank_k}")
        if self.rank_k is not None and self.top_k is not None:
            raise ValueError("rank_k (ranking distillation) replaces the KL: it cannot be combined with top_k")
        if self.rank_decay <= 0:
            raise ValueError(f"rank_decay must be > 0, got {self.rank_decay}")

    @property
    def active(self) -> bool:
        return self.use_kl or self.use_mse

    @property
    def is_papers(self) -> bool:
        """True for the paper's loss (only the switches of Table 3 may differ)."""
        return (self.temperature, self.target, self.top_k, self.gate, self.rank_k, self.learn_lambda,
                self.augment) == (1.0, "each", None, False, None, True, 0.0)
