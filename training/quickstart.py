"""The first run (`make run`): a consistency teacher, the same student alone and distilled from it, trained
side by side on two cores, compared on the ranking the server returns, the better student exported.

    python -m training.quickstart                         # beauty-top1500, the defaults below (what `make run` does)
    python -m training.quickstart --dataset lastfm --seed 43 --out artifacts/runs-first-lastfm-s43

Stages, each timed in the output:

1. **train**, two processes at once (one thread each): ``run_all --models DISTILLED`` trains the teacher(s)
   the distilled row imitates, then the distilled student; ``run_all --models mostpop ALONE`` trains
   MostPop and the same student alone (``ALONE`` is read from the distilled row's spec, not its name);
2. **choose + export**: ``run_all`` over the finished runs writes the report and exports the student with
   the best mean validation full-ranking NDCG@10 over its seeds (``choose_served``; its best seed is exported):
   the distilled one only where it wins there; otherwise the student alone, and the log says why. Nothing forces
   the choice;
3. **encode cost**: ``python -m export.latency`` measures each model's ONNX encoder per request and per
   batch of 32, as ratios to the distilled student, in one run;
4. the proof table: validation and test NDCG@10, full ranking and sampled, beside the encode cost.

The default dataset, ``beauty-top1500``, is a named subset of Beauty (``protocol.data.SUBSETS``: its 1,500 most
interacted items, users with at least 5 of them; derived once from Beauty, checksum-verified): as cheap to train as
LastFM (60k actions) with 5.5x its users (6,036). On LastFM's 1,090 users, validation cannot separate the distilled
student from the student alone (it prefers the student alone on 2 of 3 seeds while test prefers the distilled one
on all 3; see the README).

Every run lands in ``--out`` like any ``run_all`` run (a finished run is reused: a second ``make run`` only
exports and serves). The budget is split between teacher and students: the teacher gets ``--teacher-set``
(default ``lr=0.01 epochs=6``: at the ``cpu`` preset's batch of 256 sequences an epoch of either dataset is ~25
steps, too few for ``lr=1e-3`` to leave popularity in 6 epochs; chosen on the teacher's validation full NDCG@10 on
LastFM, see the README), the students train to early stopping within ``--max-epochs`` (default 20).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python training/quickstart.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import DataError, SequenceDataset, load_dataset, load_or_create_negatives
from protocol.data import SUBSETS, dataset_path, resolve_data_dir
from training.catalogue import CATALOG, PRESETS, Run, alone_of, is_known, references_of, row_name, spec_of
from training.cli import parse_override
from training.data import download

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "training" / "run_all.py"


@dataclass(frozen=True)
class QuickstartConfig:
    """What the first run trains. The distilled row names everything else: its teachers and its student alone
    come from its catalogue spec."""

    dataset: str = "beauty-top1500"
    distilled: str = "ssi_hgn_ce_gru_temporal"
    preset: str = "cpu"
    seed: int = 42
    max_epochs: int | None = 20  # caps the students (and a teacher without its own ``epochs``); None: the preset's
    # the teachers' recipe for this budget: 6 epochs at lr 0.01 (chosen on the teacher's validation full NDCG@10;
    # at the preset's lr 1e-3 an epoch of ~25 steps leaves the teacher near popularity after 6 epochs)
    teacher_set: tuple[tuple[str, Any], ...] = (("lr", 0.01), ("epochs", 6))
    out: Path = Path("artifacts/runs-first")
    export_out: Path = Path("artifacts/serving")
    data_dir: Path | None = None
    latency_rounds: int = 3
    latency_repeats: int = 5
    started_at: float | None = None  # epoch seconds when the set-up began (`make run` passes it): timed too
    threads: int = 1  # torch threads per training process (two processes run at once)

    def __post_init__(self) -> None:
        spec = spec_of(self.distilled) if is_known(self.distilled) else None
        if spec is None or not spec.teachers or alone_of(self.distilled) is None:
            choices = ", ".join(n for n, s in CATALOG.items() if s.teachers and s.student)
            raise ValueError(f"--distilled {self.distilled!r} is not a distilled student row; one of: {choices}, "
                             "or a composition STUDENT--TEACHER[+TEACHER...][--OPTION]")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; one of {', '.join(PRESETS)}")

    @property
    def alone(self) -> str:
        return alone_of(self.distilled) or ""

    def run(self, row: str, seed: int | None = None) -> Run:
        return Run(self.dataset, row, self.seed if seed is None else seed)

    @property
    def teachers(self) -> list[Run]:
        return references_of(self.run(self.distilled), [self.seed])


class Stages:
    """Wall time of each stage, printed as it ends and as a table at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []

    def done(self, name: str, t0: float) -> None:
        self.rows.append((name, time.time() - t0))
        print(f"[first run] {name}: {self.rows[-1][1]:.0f} s", flush=True)

    def table(self) -> str:
        total = sum(s for _, s in self.rows)
        lines = ["| stage | wall s |", "|---|---|", *(f"| {n} | {s:.0f} |" for n, s in self.rows), f"| total | {total:.0f} |"]
        return "\n".join(lines)


def run_all_args(cfg: QuickstartConfig, models: list[str], export: bool) -> list[str]:
    args = [sys.executable, str(RUN_ALL), "--preset", cfg.preset, "--datasets", cfg.dataset, "--out", str(cfg.out),
            "--seeds", str(cfg.seed), "--models", *models, "--log-level", "WARNING" if not export else "INFO"]
    if cfg.data_dir is not None:
        args += ["--data-dir", str(cfg.data_dir)]
    if cfg.max_epochs:
        args += ["--max-epochs", str(cfg.max_epochs)]
    for key, value in cfg.teacher_set:
        args += ["--teacher-set", f"{key}={json.dumps(value)}"]
    args += ["--export-out", str(cfg.export_out)] if export else ["--no-export"]
    return args


def _env(cfg: QuickstartConfig) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(cfg.threads), "PYTHONUNBUFFERED": "1"}


def train_side_by_side(cfg: QuickstartConfig, logs: Path) -> None:
    """The teacher(s) then the distilled student in one process, MostPop and the student alone in another."""
    groups = {"distilled": [cfg.distilled], "alone": ["mostpop", cfg.alone]}
    procs = {}
    for name, models in groups.items():
        log = (logs / f"train_{name}.log").open("w", encoding="utf-8")
        procs[name] = (subprocess.Popen(run_all_args(cfg, models, export=False), cwd=ROOT, env=_env(cfg),
                                        stdout=log, stderr=subprocess.STDOUT), log)
    failed = []
    for name, (proc, log) in procs.items():
        proc.wait()
        log.close()
        if proc.returncode != 0:
            failed.append(name)
    if failed:
        for name in failed:
            tail = (logs / f"train_{name}.log").read_text(encoding="utf-8").splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"error: training failed ({', '.join(failed)}); logs in {logs}")


def choose_and_export(cfg: QuickstartConfig) -> None:
    """run_all over the finished runs: report, the comparison it prints, the choice on validation, the export."""
    proc = subprocess.run(run_all_args(cfg, ["mostpop", cfg.alone, cfg.distilled], export=True), cwd=ROOT,
                          env=_env(cfg), text=True, capture_output=True, check=False)
    served = [ln for ln in proc.stderr.splitlines() if " serving " in ln or "artifact ready" in ln]
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"error: choosing/exporting failed (exit {proc.returncode})")
    print("\n".join(served), flush=True)


def encode_cost(cfg: QuickstartConfig, rows: list[Run]) -> dict[str, dict[str, Any]]:
    """``python -m export.latency`` on the rows (the distilled student first: the ratios' reference)."""
    out = cfg.out / "latency.json"
    cmd = [sys.executable, "-m", "export.latency", *(str(r.dir(cfg.out)) for r in rows), "--out", str(out),
           "--rounds", str(cfg.latency_rounds), "--repeats", str(cfg.latency_repeats)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(cfg), text=True, capture_output=True, check=False)
    if proc.returncode != 0:  # the cost column is a convenience: the table is printed without it
        print(f"warning: encode cost not measured ({proc.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return {}
    doc = json.loads(out.read_text(encoding="utf-8"))
    return {r["label"].split(" ")[0]: r for r in doc["rows"]}


def proof_table(cfg: QuickstartConfig, rows: list[tuple[str, Run]], cost: dict[str, dict[str, Any]]) -> str:
    head = ("| role | row | valid full N@10 | test full N@10 | valid sampled N@10 | test sampled N@10 | "
            "encode / request (× student) | encode / batch 32 (× student) |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for role, run in rows:
        m = json.loads((run.dir(cfg.out) / "metrics.json").read_text(encoding="utf-8"))
        c = cost.get(f"{run.name}/seed{run.seed}")
        enc = (f"{c['encode_b1_ratio']:.2f}×", f"{c['encode_b32_ratio']:.2f}×") if c else ("–", "–")
        cells = [m[s][p]["ndcg@10"] for s, p in (("valid", "full"), ("test", "full"), ("valid", "sampled"),
                                                   ("test", "sampled"))]
        lines.append(f"| {role} | {run.name} | " + " | ".join(f"{v:.4f}" for v in cells) + f" | {enc[0]} | {enc[1]} |")
    return "\n".join(lines)


def prepare_data(cfg: QuickstartConfig) -> SequenceDataset:
    """The dataset (a named subset is derived from its source the first time, the source fetched if missing) and
    its stored negatives, once, before two processes would both draw them."""
    data_dir = resolve_data_dir(cfg.data_dir)
    if cfg.dataset.lower() in SUBSETS:
        try:
            dataset_path(cfg.dataset, data_dir)
        except DataError:
            download(cfg.dataset, data_dir)
    ds = load_dataset(cfg.dataset, data_dir)
    load_or_create_negatives(ds)
    return ds


def main_config(cfg: QuickstartConfig) -> int:
    stages = Stages()
    if cfg.started_at is not None:
        stages.rows.append(("set-up (venv, packages)", max(0.0, time.time() - cfg.started_at)))
        print(f"[first run] set-up (venv, packages): {stages.rows[-1][1]:.0f} s", flush=True)
    t0 = time.time()
    try:
        ds = prepare_data(cfg)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    stages.done(f"data ({ds.name}: {ds.num_users} users, {ds.num_items} items; negatives)", t0)
    logs = cfg.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    teachers = cfg.teachers
    print(f"[first run] {cfg.dataset}: training {', '.join(r.name for r in teachers)} -> {cfg.distilled} beside "
          f"mostpop and {cfg.alone} alone (two processes; logs in {logs})", flush=True)
    t0 = time.time()
    train_side_by_side(cfg, logs)
    stages.done("train (two processes side by side)", t0)
    t0 = time.time()
    choose_and_export(cfg)
    stages.done("report, choice on validation, export", t0)
    t0 = time.time()
    cost = encode_cost(cfg, [cfg.run(cfg.distilled), cfg.run(cfg.alone), *teachers])
    stages.done("encode cost (ONNX Runtime, 1 thread)", t0)
    rows = [("popularity", cfg.run("mostpop")), *(("teacher", t) for t in teachers),
            ("student alone", cfg.run(cfg.alone)), ("distilled student", cfg.run(cfg.distilled))]
    report = json.loads((cfg.out / "report" / "report.json").read_text(encoding="utf-8"))
    served = report.get("served", {}).get(cfg.dataset, "none")
    print(f"\n{cfg.dataset}, seed {cfg.seed}: NDCG@10 (full ranking = what /recommend returns; it chooses the served "
          f"model on validation)\n\n" + proof_table(cfg, rows, cost) + f"\n\nserved: {served}\n\n" + stages.table(),
          flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> QuickstartConfig:
    d = QuickstartConfig()
    p = argparse.ArgumentParser(prog="python -m training.quickstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=d.dataset, help="dataset name (default %(default)s)")
    p.add_argument("--distilled", default=d.distilled, type=row_name, metavar="ROW",
                   help="the distilled student: a catalogue row or a composition STUDENT--TEACHER[+TEACHER...]"
                        "[--OPTION] (e.g. hgn_ce--gru4rec); its teachers and its student alone follow from its spec "
                        "(default %(default)s)")
    p.add_argument("--preset", default=d.preset, choices=PRESETS)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-epochs", type=int, default=d.max_epochs,
                   help="cap on the students' epochs, and a teacher's without its own epochs= (default %(default)s; "
                        "0: the preset's own)")
    p.add_argument("--teacher-set", action="append", type=parse_override, metavar="KEY=VALUE", default=None,
                   help="teacher config overrides (default: lr=0.01 epochs=6); repeatable")
    p.add_argument("--out", type=Path, default=d.out, help="runs folder (default %(default)s)")
    p.add_argument("--export-out", type=Path, default=d.export_out, help="artifact folder (default %(default)s)")
    p.add_argument("--data-dir", type=Path, default=None, help="data folder (default: the project's rule)")
    p.add_argument("--started-at", type=float, default=None, help="epoch seconds when set-up began (make run)")
    a = p.parse_args(argv)
    try:
        return QuickstartConfig(dataset=a.dataset, distilled=a.distilled, preset=a.preset, seed=a.seed,
                                max_epochs=a.max_epochs or None,
                                teacher_set=tuple(a.teacher_set) if a.teacher_set is not None else d.teacher_set,
                                out=a.out, export_out=a.export_out, data_dir=a.data_dir, started_at=a.started_at)
    except ValueError as e:
        p.error(str(e))
        raise


def main(argv: list[str] | None = None) -> int:
    return main_config(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
