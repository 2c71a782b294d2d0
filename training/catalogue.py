"""The catalogue of runs: what each row of the paper's tables trains, and the runs it needs.

A row is a ``ModelSpec``: a baseline, a consistency teacher, an ensemble, or a student with its loss,
its teachers and its imitation option. Relations between rows (which teachers a student imitates, which
student alone it is paired with, whether it is an ensemble) are read from the spec, never from the row's
name. ``training/run_all.py`` trains the rows; ``training/report.py`` tabulates them; both import this
module, which imports neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from training.imitation import ImitationConfig

PRESETS = ("smoke", "cpu", "paper")
TEACHER_VARIANTS = ("temporal", "persona", "global")
# The paper's teachers (BERT4Rec, cloze + task) and the same tasks on a causal GRU4Rec backbone trained with
# next-item cross-entropy (training/teachers.py, NextItemTeacherTask), a stronger recommender on small data.
PAPER_TEACHERS = tuple(f"teacher_{v}" for v in TEACHER_VARIANTS)
# each GRU teacher on its own seed (the first seed + k): an ensemble of three runs from one
# initialisation and one batch order would differ only through their tasks
GRU_TEACHERS = tuple(f"teacher_gru_{v}@{k}" for k, v in enumerate(TEACHER_VARIANTS))
# plain GRU4Rec (CE) runs on the same three seeds: the GRU teachers without their consistency task
PLAIN_GRU_TEACHERS = ("gru4rec@0", "gru4rec@1", "gru4rec@2")
# the same tasks on SASRec-CE (the sasrec_prefix recipe: sasrec_ce's model and trainer config on every prefix
# segment): the three task teachers on seeds + 0, 1, 2, and the plain sasrec_ce_prefix runs on those seeds, the
# control without a task (the teachers' exact recipe; sasrec_ce trains on other examples and batches). No student
# row names them: students are compositions, e.g.
# hgn_ce--teacher_sas_temporal@0+teacher_sas_persona@1+teacher_sas_global@2 against
# hgn_ce--sasrec_ce_prefix@0+sasrec_ce_prefix@1+sasrec_ce_prefix@2 (catalogue: "runs as compositions" below).
SAS_TEACHERS = tuple(f"teacher_sas_{v}@{k}" for k, v in enumerate(TEACHER_VARIANTS))
PLAIN_SAS_TEACHERS = ("sasrec_ce_prefix@0", "sasrec_ce_prefix@1", "sasrec_ce_prefix@2")
# teacher row prefix -> backbone (training/teachers.py BACKBONES)
TEACHER_BACKBONES = {"teacher_": "bert4rec", "teacher_gru_": "gru4rec", "teacher_sas_": "sasrec"}
# backbone -> the row of that backbone trained without a task: a task teacher's control in the consistency-task
# ablation (``task_control``) and what training/teachers.py names a teacher without its task; keys = BACKBONES' (tested)
PLAIN_ROWS = {"bert4rec": "bert4rec", "gru4rec": "gru4rec", "sasrec": "sasrec_ce_prefix"}


@dataclass(frozen=True)
class ModelSpec:
    """What one row of the tables trains. Exactly one of the kinds is set.

    Teachers and ensemble members are references to other rows: ``"name"`` is that row's run with the
    first seed, ``"name@k"`` its run with the first seed + k (trained as needed, whatever ``--seeds``).
    """

    group: str  # baseline | teacher | ensemble | student | ablation | option
    mostpop: bool = False
    teacher: str | None = None  # bert4rec | temporal | persona | global
    backbone: str = "bert4rec"  # a teacher's backbone: bert4rec (the paper's) | gru4rec | sasrec
    student: str | None = None  # hgn | gru4rec | sasrec | sasrec_prefix[_wide] (training/students.py STUDENT_RECIPES)
    teachers: tuple[str, ...] = ()  # rows imitated by a student
    members: tuple[str, ...] = ()  # rows whose next-item distributions an ensemble averages
    imitation: ImitationConfig = field(default_factory=ImitationConfig)  # the paper's loss unless a row says otherwise
    loss: str | None = None  # None: the model's paper loss
    baseline: str | None = None  # sasrec | s3rec | grec (training/baselines.py)
    all_seeds: bool = True

    @property
    def references(self) -> tuple[str, ...]:
        return self.teachers + self.members

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)

    @property
    def student_key(self) -> tuple[str, str | None] | None:
        """(recipe, loss) of a student row, trained alone or with imitation; None for the rest."""
        return None if self.student is None else (self.student, self.loss)


def _student_rows(suffix: str, teachers: tuple[str, ...]) -> dict[str, ModelSpec]:
    """The SSI students, the Table 3 ablations and the Figure 3 single-teacher rows on one teacher set."""
    rows = {
        f"ssi_hgn{suffix}": ModelSpec("student", student="hgn", teachers=teachers),
        f"ssi_hgn_ce{suffix}": ModelSpec("student", student="hgn", teachers=teachers, loss="ce"),
        f"ssi_gru4rec{suffix}": ModelSpec("student", student="gru4rec", teachers=teachers),
    }
    base = "ssi_hgn" if not suffix else f"ssi_hgn_ce{suffix}"  # paper: Table 3 on HGN; GRU set: on HGN-CE
    loss = rows[base].loss
    rows |= {f"{base}_no_mse": ModelSpec("ablation", student="hgn", teachers=teachers, loss=loss,
                                         imitation=ImitationConfig(use_mse=False)),
             f"{base}_no_kl": ModelSpec("ablation", student="hgn", teachers=teachers, loss=loss,
                                        imitation=ImitationConfig(use_kl=False))}
    rows |= {f"{base}_{t.partition('@')[0].rsplit('_', 1)[1]}": ModelSpec("ablation", student="hgn", teachers=(t,),
                                                                       loss=loss) for t in teachers}
    if suffix:  # imitation options beyond the paper's loss (training/imitation.py), chosen on validation
        rows |= {f"{base}_{name}": ModelSpec("option", student="hgn", teachers=teachers, loss=loss, imitation=imit)
                 for name, imit in IMITATION_OPTIONS.items()}
    return rows


# plain knowledge distillation of the teachers as one ensemble (Hinton et al., 2015): one KL to the mean of their
# distributions and no item-representation MSE, which for same-architecture teachers of different seeds would pull one
# student table towards several unrelated item spaces
_KD = ImitationConfig(target="mean", use_mse=False)

IMITATION_OPTIONS: dict[str, ImitationConfig] = {
    "t2": ImitationConfig(temperature=2.0),
    "mean": ImitationConfig(target="mean"),
    "top50": ImitationConfig(top_k=50),
    "gate": ImitationConfig(gate=True),
    "rd": ImitationConfig(rank_k=10),
    "fixed": ImitationConfig(learn_lambda=False),
    "kd": _KD,
    "kd_t2": replace(_KD, temperature=2.0),  # the same at temperature 2, as `t2`
    # the same on corrupted histories (1 item in 5 swapped for a random one, new each epoch, the same for the
    # teachers and the student): teachers trained on the student's data have seen every clean training target
    "kd_aug": replace(_KD, augment=0.2),
    # the same with a fixed, small weight: a learned lambda rises through training (1.0 -> ~1.8 for SASRec-CE students)
    "kd_fixed": replace(_KD, learn_lambda=False, lambda_init=0.3),
    # a learned projection per teacher even when the dims agree: a SASRec student of SASRec teachers otherwise
    # matches its item table to each teacher's directly (Identity), and teachers of different seeds do not share
    # one item space
    "proj": ImitationConfig(always_project=True),
}


CATALOG: dict[str, ModelSpec] = {
    "mostpop": ModelSpec("baseline", mostpop=True, all_seeds=False),
    "gru4rec": ModelSpec("baseline", student="gru4rec"),
    "hgn": ModelSpec("baseline", student="hgn"),
    "hgn_ce": ModelSpec("baseline", student="hgn", loss="ce"),
    "bert4rec": ModelSpec("baseline", teacher="bert4rec", all_seeds=False),
    "sasrec": ModelSpec("baseline", baseline="sasrec"),
    # SASRec-CE is a student trained alone: the sasrec_ce baseline's recipe (training/students.py STUDENT_RECIPES
    # reads it from training/baselines.py), so that sasrec_ce--sasrec_ce@0+sasrec_ce@1+sasrec_ce@2 distils it
    # from its own runs (born-again / ensemble distillation), paired with this row
    "sasrec_ce": ModelSpec("baseline", student="sasrec", loss="ce"),
    # SASRec-CE trained on every prefix segment in batches of equal target count: the SASRec teachers' recipe
    # (STUDENT_RECIPES["sasrec_prefix"]: sasrec_ce's model and trainer config, GRU4Rec's examples and batches),
    # the teacher_sas_* rows without their task
    "sasrec_ce_prefix": ModelSpec("baseline", student="sasrec_prefix", loss="ce"),
    # the same recipe at twice the width: a student larger than the sasrec_ce_prefix runs it can imitate
    # (sasrec_ce_prefix_wide--sasrec_ce_prefix@0+sasrec_ce_prefix@1+sasrec_ce_prefix@2--kd), and this row alone
    "sasrec_ce_prefix_wide": ModelSpec("baseline", student="sasrec_prefix_wide", loss="ce"),
    "s3rec": ModelSpec("baseline", baseline="s3rec"),
    "grec": ModelSpec("baseline", baseline="grec"),
    **{f"{prefix}{v}": ModelSpec("teacher", teacher=v, backbone=backbone, all_seeds=False)
       for prefix, backbone in TEACHER_BACKBONES.items() for v in TEACHER_VARIANTS},
    "ensemble_paper_teachers": ModelSpec("ensemble", members=PAPER_TEACHERS, all_seeds=False),
    "ensemble_gru_teachers": ModelSpec("ensemble", members=GRU_TEACHERS, all_seeds=False),
    "ensemble_gru4rec": ModelSpec("ensemble", members=PLAIN_GRU_TEACHERS, all_seeds=False),
    **_student_rows("", PAPER_TEACHERS),
    **_student_rows("_gru", GRU_TEACHERS),
    # plain distillation: the GRU teachers without their consistency task (Issue: what the tasks add)
    "kd_hgn_ce_gru4rec": ModelSpec("ablation", student="hgn", teachers=PLAIN_GRU_TEACHERS, loss="ce"),
}
SSI_STUDENTS = tuple(n for n, s in CATALOG.items() if s.group == "student")

# What every choice made on validation reads (the served student, the best student alone, ensemble members,
# the epoch a run keeps: ``TrainConfig.select``): NDCG@10 under the full ranking, the ranking /recommend returns.
CHOOSE_BY = ("valid", "full", "ndcg@10")


def choice_score(metrics: dict) -> float:
    """``metrics[split][protocol][metric]`` of ``CHOOSE_BY``: validation full-ranking NDCG@10."""
    split, proto, metric = CHOOSE_BY
    return metrics[split][proto][metric]

# ---- runs as compositions ------------------------------------------------------------------------------
# A run that no catalogue row names is written as its parts, and its folder carries the same name:
#   STUDENT--TEACHER[+TEACHER...][--OPTION]   a student distilled from teachers (e.g. hgn_ce--sasrec_ce,
#                                             hgn_ce--sasrec_ce@0+sasrec_ce@1+sasrec_ce@2--mean)
#   ensemble--MEMBER+MEMBER[+...]            the mean next-item distribution of finished runs
# STUDENT is a student trained alone (hgn, hgn_ce, gru4rec, sasrec_ce, sasrec_ce_prefix): its recipe and loss;
# TEACHER / MEMBER a row reference (``name`` = its first-seed run, ``name@k`` = first seed + k); OPTION an
# IMITATION_OPTIONS key (none: the paper's loss). So a new teacher family needs no new row names.
SEP, JOIN, ENSEMBLE = "--", "+", "ensemble"


class SpecError(ValueError):
    """A row name that is neither a catalogue row nor a valid composition (the message says which part)."""


def compose(student: str, teachers: tuple[str, ...], option: str | None = None) -> str:
    """The run name of ``student`` distilled from ``teachers`` with an imitation ``option``."""
    name = f"{student}{SEP}{JOIN.join(teachers)}" + (f"{SEP}{option}" if option else "")
    spec_of(name)  # validates the parts
    return name


def _check_refs(refs: list[str], name: str) -> tuple[str, ...]:
    for ref in refs:
        row, _, k = ref.partition("@")
        if row not in CATALOG or (k and not k.isdigit()):
            raise SpecError(f"{name!r}: {ref!r} is not a row reference (a catalogue row, optionally @k)")
    return tuple(refs)


def parse_composition(name: str) -> ModelSpec:
    """The spec of a composed run name (see above); ``SpecError`` naming the bad part."""
    parts = name.split(SEP)
    if len(parts) not in (2, 3) or not all(parts):
        raise SpecError(f"{name!r} is not a catalogue row nor STUDENT{SEP}TEACHER[{JOIN}TEACHER...][{SEP}OPTION]")
    head, refs = parts[0], parts[1].split(JOIN)
    if head == ENSEMBLE:
        if len(parts) != 2 or len(refs) < 2:
            raise SpecError(f"{name!r}: an ensemble is {ENSEMBLE}{SEP}MEMBER{JOIN}MEMBER[...], no option")
        return ModelSpec("ensemble", members=_check_refs(refs, name), all_seeds=False)
    alone = CATALOG.get(head)
    if alone is None or alone.student is None or alone.teachers:
        students = ", ".join(n for n, s in CATALOG.items() if s.student and not s.teachers)
        raise SpecError(f"{name!r}: the student {head!r} is not a student trained alone ({students})")
    option = parts[2] if len(parts) == 3 else None
    if option is not None and option not in IMITATION_OPTIONS:
        raise SpecError(f"{name!r}: unknown imitation option {option!r} ({', '.join(IMITATION_OPTIONS)})")
    imitation = IMITATION_OPTIONS[option] if option else ImitationConfig()
    return ModelSpec("option" if option else "student", student=alone.student, loss=alone.loss,
                     teachers=_check_refs(refs, name), imitation=imitation)


def spec_of(name: str) -> ModelSpec:
    """A catalogue row's spec, or the spec a composed name spells out; ``SpecError`` for anything else."""
    spec = CATALOG.get(name)
    return spec if spec is not None else parse_composition(name)


def is_known(name: str) -> bool:
    try:
        spec_of(name)
    except SpecError:
        return False
    return True


def row_name(text: str) -> str:
    """``argparse`` type of a row: a catalogue name or a composition; a usage error naming the bad part."""
    import argparse

    try:
        spec_of(text)
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


@dataclass(frozen=True)
class Run:
    dataset: str
    model: str
    seed: int
    layers: int | None = None  # teacher depth for the Figure 4 sweep (None: the preset's)

    @property
    def name(self) -> str:
        return self.model if self.layers is None else f"{self.model}_L{self.layers}"

    def dir(self, out: Path) -> Path:
        return out / self.dataset / self.name / f"seed{self.seed}"


def resolve_reference(ref: str, dataset: str, seeds: list[int], layers: int | None = None) -> Run:
    """``"name"`` -> that row's run with the first seed; ``"name@k"`` -> with the first seed + k."""
    name, _, k = ref.partition("@")
    if name not in CATALOG:
        raise ValueError(f"unknown row {name!r} in a teacher/member reference {ref!r}")
    return Run(dataset, name, seeds[0] + int(k or 0), layers if CATALOG[name].teacher else None)


def references_of(run: Run, seeds: list[int]) -> list[Run]:
    """The runs ``run`` imitates or averages (none for a row that trains from data)."""
    return [resolve_reference(ref, run.dataset, seeds, run.layers) for ref in spec_of(run.model).references]


def plan(datasets: list[str], models: list[str], seeds: list[int], layers: list[int]) -> list[Run]:
    """All runs in execution order; teachers and ensemble members come before the rows that need them."""
    order = ["baseline", "teacher", "ensemble", "student", "ablation", "option"]
    runs: list[Run] = []
    for ds in datasets:
        needed = list(dict.fromkeys(resolve_reference(ref, ds, seeds) for m in models for ref in spec_of(m).references))
        rows = CATALOG | {m: spec_of(m) for m in models if m not in CATALOG}  # compositions after the catalogue
        for group in order:
            for name, spec in rows.items():
                if spec.group != group:
                    continue
                if name in models:
                    runs += [Run(ds, name, s) for s in (seeds if spec.all_seeds else seeds[:1])]
                runs += [r for r in needed if r.model == name and r not in runs]
        for n in layers:  # Figure 4: teacher depth -> SSI-HGN
            runs += [Run(ds, f"teacher_{v}", seeds[0], n) for v in TEACHER_VARIANTS]
            runs.append(Run(ds, "ssi_hgn", seeds[0], n))
    return runs


def teacher_name(ref: str) -> str:
    """The name of a teacher's loss terms and lambda: ``teacher_gru_temporal`` -> ``gru_temporal``."""
    return ref.removeprefix("teacher_").replace("@", "_s")


def is_student_row(name: str) -> bool:
    """A servable student: HGN/GRU4Rec/SASRec-CE (either recipe) alone, or with imitation (SSI, options, ablations,
    plain KD)."""
    return is_known(name) and spec_of(name).student is not None


def student_label(name: str) -> str | None:
    """The student a row trains, as the name of that student alone (``hgn``, ``hgn_ce``, ``gru4rec``,
    ``sasrec_ce``, ``sasrec_ce_prefix``): the same for ``hgn_ce`` and every row distilled into HGN-CE; None for
    teachers, baselines and ensembles."""
    key = spec_of(name).student_key
    return None if key is None else alone_of_key(key)


def alone_of_key(key: tuple[str, str | None]) -> str | None:
    """The catalogue row that trains the student ``key`` without teachers."""
    return next((n for n, s in CATALOG.items() if s.student_key == key and not s.teachers), None)


def task_control(name: str) -> str | None:
    """The control of the consistency-task ablation (issue 26): the same student, loss and imitation distilled
    from the same number of plain teachers, each task teacher replaced by its backbone's row without a task on the
    same seed offset (``teacher_sas_temporal@0`` -> ``sasrec_ce_prefix@0``). A catalogue row with that spec keeps
    its name (``ssi_hgn_ce_gru`` -> ``kd_hgn_ce_gru4rec``), else the composition. None when a row is not a student
    distilled from task teachers only, or when its imitation has no name to compose with."""
    if not is_known(name):
        return None
    spec = spec_of(name)
    if spec.student_key is None or not spec.teachers:
        return None
    plain = []
    for ref in spec.teachers:
        row, at, k = ref.partition("@")
        control = teacher_control(row)
        if control is None:
            return None
        plain.append(f"{control}{at}{k}")
    key = (spec.student_key, tuple(plain), spec.imitation)
    named = next((n for n, s in CATALOG.items() if (s.student_key, s.teachers, s.imitation) == key), None)
    if named is not None:
        return named
    option = next((o for o, c in IMITATION_OPTIONS.items() if c == spec.imitation), None)
    if option is None and spec.imitation != ImitationConfig():
        return None
    return compose(alone_of_key(spec.student_key), tuple(plain), option)


def teacher_control(name: str) -> str | None:
    """The plain teacher of a consistency teacher row (issue 26): its backbone's row without a task
    (``teacher_gru_temporal`` -> ``gru4rec``, ``teacher_sas_global`` -> ``sasrec_ce_prefix``), which replaces it in
    the ablation (``task_control``) and is paired with it on the same seed to show what the task does to the teacher.
    None for a row that is not a consistency teacher."""
    spec = CATALOG.get(name)
    if spec is None or spec.teacher not in TEACHER_VARIANTS:
        return None
    return PLAIN_ROWS[spec.backbone]


def alone_of(name: str) -> str | None:
    """The same student trained alone that a row with teachers is paired with (``ssi_hgn_ce_gru_t2`` ->
    ``hgn_ce``), read from the spec; None for a row without teachers or a name outside the catalogue."""
    if not is_known(name):
        return None
    spec = spec_of(name)
    if not spec.teachers or spec.student_key is None:
        return None
    return alone_of_key(spec.student_key)


# ---- the paper's rows ----------------------------------------------------------------------------------
# Table 2's baselines, by their row names here (the paper's GRU4Rec is our gru4rec row, its loss ours)
PAPER_BASELINES = ("mostpop", "s3rec", "grec", "bert4rec", "gru4rec", "hgn")
# Table 3's imitation ablations: the ImitationConfig a row changes -> the suffix of the paper's row
PAPER_ABLATIONS = {ImitationConfig(): "", ImitationConfig(use_mse=False): "_no_mse",
                   ImitationConfig(use_kl=False): "_no_kl"}


def paper_row(name: str) -> str | None:
    """The row of the paper's Table 2, Table 3 or Figure 3 that a run reproduces, read from its spec, whatever
    its teachers' backbone: ``ssi_hgn`` is an HGN student with its paper loss (BPR) distilled from one teacher
    of each consistency task with the paper's imitation (``ssi_hgn_no_mse`` / ``_no_kl`` without one term, Table
    3), ``ssi_gru4rec`` the same with a GRU4Rec student, ``ssi_hgn_<task>`` HGN from that task's teacher alone
    (Figure 3); baselines keep their names. So ``hgn--teacher_sas_temporal@0+teacher_sas_persona@1+
    teacher_sas_global@2`` is ``ssi_hgn``. None for every other run (other losses, options, plain teachers)."""
    if not is_known(name):
        return None
    if name in PAPER_BASELINES:
        return name
    spec = spec_of(name)
    if spec.student not in ("hgn", "gru4rec") or spec.loss is not None or spec.imitation not in PAPER_ABLATIONS:
        return None
    tasks = [CATALOG[ref.partition("@")[0]].teacher for ref in spec.teachers]
    if len(tasks) == len(TEACHER_VARIANTS) and set(tasks) == set(TEACHER_VARIANTS):
        suffix = PAPER_ABLATIONS[spec.imitation]
        return f"ssi_{spec.student}{suffix}" if spec.student == "hgn" or not suffix else None
    if len(tasks) == 1 and tasks[0] in TEACHER_VARIANTS and spec.student == "hgn" and spec.imitation == ImitationConfig():
        return f"ssi_hgn_{tasks[0]}"
    return None
