"""Reproduce the SSI paper's tables and figures on your data, then export the best student.

    python training/run_all.py                          # every paper dataset present; paper preset on GPU, cpu otherwise
    python training/run_all.py --preset smoke --datasets lastfm
    torchrun --nproc_per_node 4 training/run_all.py --preset paper --datasets beauty

Order: baselines (MostPop, GRU4Rec, HGN, BERT4Rec, SASRec, S3-Rec, GREC), the consistency teachers,
the students with imitation, the ablations (Table 3, Figure 3, optionally Figure 4's depth sweep),
then the report (``--out/report/``) and the export of the best SSI student.

Every run is a folder ``--out/<dataset>/<model>/seed<k>/``; a finished run (``metrics.json``) is
skipped on the next invocation, and an interrupted one resumes from its last epoch checkpoint.
Invocations may share ``--out`` (one per core, say): a run another process is training is skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python training/run_all.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm.auto import tqdm

from protocol import DataError, SequenceDataset, load_dataset, load_or_create_negatives
from protocol.data import list_datasets, resolve_data_dir
from training.cli import init_distributed, parse_override
from training.report import README_END, README_START, identity, runs_from_report, update_readme  # noqa: F401  (re-exported)
from training.workers import run_key, run_pool

log = logging.getLogger("ssi.run_all")

from training.catalogue import (  # noqa: F401  (re-exported: the catalogue's names, as before the move)
    CATALOG,
    GRU_TEACHERS,
    IMITATION_OPTIONS,
    PAPER_TEACHERS,
    PLAIN_GRU_TEACHERS,
    PRESETS,
    SSI_STUDENTS,
    TEACHER_VARIANTS,
    ModelSpec,
    Run,
    alone_of,
    choice_score,
    is_known,
    is_student_row,
    plan,
    references_of,
    resolve_reference,
    row_name,
    spec_of,
    teacher_name,
)


def execute(run: Run, ds: SequenceDataset, preset: str, out: Path, resume: bool, seeds: list[int],
            device: str = "auto", max_epochs: int | None = None,
            teacher_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or load, when finished) one run on ``device`` (auto | cpu | cuda; MostPop and ensembles: CPU);
    ``max_epochs`` caps the preset's epochs of teachers and students; ``teacher_overrides`` sets fields of the
    consistency teachers' configs (``training.teachers.resolve_setup``), e.g. ``{"lr": 0.01}``."""
    spec, run_dir = spec_of(run.model), run.dir(out)
    if spec.mostpop:
        from training.mostpop import train_mostpop

        return train_mostpop(ds, run_dir, resume=resume)
    if spec.teacher is not None:
        from training.teachers import train_teacher

        over = ({"n_layers": run.layers} if run.layers else {}) | ({"epochs": max_epochs} if max_epochs else {}) \
            | dict(teacher_overrides or {})
        return train_teacher(spec.teacher, ds, preset, run_dir, seed=run.seed, resume=resume, overrides=over,
                             backbone=spec.backbone, device=device)
    if spec.baseline is not None:
        from training.baselines import train_baseline

        return train_baseline(spec.baseline, ds, preset, run_dir, seed=run.seed, resume=resume, device=device)
    if spec.members:
        from training.ensemble import evaluate_ensemble

        members = [resolve_reference(m, run.dataset, seeds).dir(out) for m in spec.members]
        return evaluate_ensemble(members, ds, run_dir, resume=resume)
    from training.students import train_student

    teacher_dirs = {teacher_name(t): resolve_reference(t, run.dataset, seeds, run.layers).dir(out)
                    for t in spec.teachers}
    # cpu preset on the CPU: teacher distributions precomputed once (no teacher matmul/softmax per batch; see
    # training/teacher_cache.py); on a GPU the per-batch matmul is cheaper than reading them back (and an (E, N)
    # float16 file per teacher set would fill a GPU host's disk when many students train at once). Not with
    # ``augment``: its teachers see new histories each epoch.
    cache_probs = preset == "cpu" and not on_gpu(device) and not spec.imitation.augment
    imitation = dataclasses.replace(spec.imitation, cache_probs=cache_probs)
    return train_student(spec.student, ds, preset, run_dir, teacher_dirs=teacher_dirs, imitation=imitation,
                         loss=spec.loss, seed=run.seed, resume=resume, device=device, epochs=max_epochs)


def worker_command(args: argparse.Namespace, preset: str, run: Run) -> list[str]:
    """The ``run_all.py --only`` command line that trains ``run`` with this invocation's options."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", run_key(run), "--no-export",
           "--preset", preset, "--datasets", run.dataset, "--out", str(args.out),
           "--device", args.device, "--log-level", args.log_level, "--resume" if args.resume else "--fresh"]
    cmd += ["--models", *args.models] if args.models else []
    cmd += ["--seeds", *map(str, args.seeds)] if args.seeds else []
    cmd += ["--teacher-layers", *map(str, args.teacher_layers)] if args.teacher_layers else []
    cmd += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    cmd += ["--max-epochs", str(args.max_epochs)] if args.max_epochs else []
    cmd += ["--train-new-teachers"] if args.train_new_teachers else []
    for key, value in args.teacher_set:  # back to the text parse_override read
        cmd += ["--teacher-set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return cmd


def check_teacher_overrides(runs: list[Run], datasets: dict[str, SequenceDataset], preset: str,
                            overrides: dict[str, Any]) -> None:
    """Fail fast, before any training, on a ``--teacher-set`` field that a planned teacher does not have."""
    if not overrides:
        return
    from training.teachers import resolve_setup

    for run in runs:
        spec = spec_of(run.model)
        if spec.teacher is not None:
            try:
                resolve_setup(spec.teacher, preset, datasets[run.dataset].num_items, run.seed, overrides,
                              backbone=spec.backbone)
            except ValueError as e:
                raise SystemExit(f"error: --teacher-set for {run.model}: {e}") from None


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"error: output folder {out} is not writable ({e.strerror})") from None


def on_gpu(device: str) -> bool:
    """Whether ``--device`` (auto | cpu | cuda) trains on a GPU here."""
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def default_preset(device: str) -> str:
    return "paper" if on_gpu(device) else "cpu"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def choose_served(results: dict[Run, dict], dataset: str) -> tuple[Run, str] | None:
    """The student row of ``dataset`` with the best mean validation full NDCG@10 over its finished seeds, and its
    best seed on the same score (the run to export), with why (one line).

    Full ranking decides because it is what the server returns; the sampled metric (99 negatives) can order
    models differently, and is shown beside it. The row mean decides, not the single best run: with rows a
    few 1e-4 apart, the best of 3 x N runs is mostly the luckiest seed, and a row is what a user retrains.
    A row over fewer seeds than another still competes (leaving it out could serve a far worse model over more
    seeds), and the line says when the winner is such a row."""
    cands = [r for r in results if r.dataset == dataset and r.layers is None and is_student_row(r.model)]
    if not cands:
        return None
    score = {r: choice_score(results[r]) for r in cands}
    by_row: dict[str, list[Run]] = {}
    for r in cands:
        by_row.setdefault(r.model, []).append(r)
    mean = {row: statistics.fmean(score[r] for r in runs) for row, runs in by_row.items()}
    row = max(mean, key=lambda n: (mean[n], n))
    best = max(by_row[row], key=lambda r: (score[r], -r.seed))
    alone_row = alone_of(row)
    sampled = results[best]["valid"]["sampled"]["ndcg@10"]
    if spec_of(row).teachers and alone_row in mean:
        why = (f"the distilled student beats the same student alone ({alone_row}: mean valid full N@10 "
               f"{mean[alone_row]:.4f} over {_seeds(len(by_row[alone_row]))}), so imitation pays here")
    elif spec_of(row).teachers:
        why = "a distilled student; its student alone was not trained in this folder"
    else:
        why = "a student trained ALONE: no distilled student beats it on validation here, so imitation does not pay"
    most = max(len(runs) for runs in by_row.values())
    caveat = (f"; fewer seeds than the {_seeds(most)} of another row, so one lucky seed may carry it: train its "
              f"other seeds to confirm" if len(by_row[row]) < most else "")
    line = (f"{dataset}/{row}/seed{best.seed}: the best of {len(by_row)} finished student rows on validation full "
            f"ranking (row mean N@10 {mean[row]:.4f} over {_seeds(len(by_row[row]))}; this seed, the row's best, "
            f"{score[best]:.4f}, sampled {sampled:.4f}{caveat}) ({why})")
    return best, line


def export_best(chosen: tuple[Run, str] | None, dataset: str, out: Path, export_out: Path) -> Path | None:
    """Export ``chosen`` (``choose_served``'s run and reason for ``dataset``); returns the artifact dir."""
    if chosen is None:
        log.warning("no student was trained on %s: nothing to export", dataset)
        return None
    best, why = chosen
    log.info("serving %s", why)
    cmd = [sys.executable, "-m", "export", str(best.dir(out)), "--out", str(export_out)]
    proc = subprocess.run(cmd, text=True, capture_output=True, check=False)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"error: export of {best.dir(out)} failed (exit {proc.returncode})")
    latest = export_out / "latest"
    return export_out / latest.read_text().strip() if latest.is_file() else None


def discover_finished(out: Path, known: set[Run]) -> list[Run]:
    """Finished runs under ``out`` (``<dataset>/<row>[_L<n>]/seed<k>/metrics.json``) of catalogue rows,
    other than ``known``: so that a report covers every finished run, not only this invocation's."""
    found: list[Run] = []
    for metrics in sorted(out.glob("*/*/seed*/metrics.json")):
        seed_dir, row_dir, ds_dir = metrics.parent, metrics.parent.parent, metrics.parent.parent.parent
        name, layers = row_dir.name, None
        base, sep, depth = name.rpartition("_L")
        if sep and depth.isdigit() and is_known(base):
            name, layers = base, int(depth)
        seed = seed_dir.name.removeprefix("seed")
        if not is_known(name) or not seed.isdigit():
            continue
        run = Run(ds_dir.name, name, int(seed), layers)
        if run not in known:
            found.append(run)
    return found


def with_identity(run: Run, entry: dict, seeds: list[int]) -> dict:
    """A recorded entry with the identity fields (``report.identity``) that its report predates, read from the
    run's spec, after ``dir``; the teachers resolved with the first of ``seeds`` as ``run_all`` resolves them."""
    if not is_known(run.model):
        return entry
    teachers = [f"{t.name}/seed{t.seed}" for t in references_of(run, seeds)]
    added = {k: v for k, v in identity(run.model, teachers).items() if k not in entry}
    keys = list(entry)
    at = keys.index("dir") + 1 if "dir" in keys else len(keys)
    return {**{k: entry[k] for k in keys[:at]}, **added, **{k: entry[k] for k in keys[at:]}}


def merge_recorded(paths: list[Path], results: dict[Run, dict], report_runs: list[Run],
                   datasets: dict[str, SequenceDataset], data_dir: Path, seeds: list[int]) -> dict[Run, dict]:
    """The runs of committed report.json files (``--merge-report``) that ``results`` lacks, added to ``results``
    and ``report_runs``; returns their entries as recorded, each with ``recorded_in`` (the file it came from)
    and the identity fields an older report lacks (``with_identity``)."""
    recorded: dict[Run, dict] = {}
    planned = set(report_runs)  # the plan's unfinished runs are already there, without results
    for path in paths:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            runs, metrics = runs_from_report(doc)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: --merge-report {path}: not a readable report.json ({e})") from None
        for run, entry in zip(runs, doc["runs"], strict=True):
            if run in results or run in recorded:
                continue
            if run.dataset not in datasets:
                try:
                    datasets[run.dataset] = load_dataset(run.dataset, data_dir)
                except DataError as e:
                    log.warning("%s: recorded runs of %s left out of the report (%s)", run.dataset, path, e)
                    continue
            results[run] = metrics[run]
            if run not in planned:
                report_runs.append(run)
            recorded[run] = {**with_identity(run, entry, seeds), "recorded_in": entry.get("recorded_in") or str(path)}
    if recorded:
        log.info("%d runs taken as recorded in %s", len(recorded), ", ".join(map(str, paths)))
    return recorded


def unfinished_references(runs: list[Run], seeds: list[int], out: Path) -> list[str]:
    """One line per teacher/member run that ``runs`` need, that is not finished under ``out`` while other
    seeds of its row are: the first ``--seeds`` picks the teachers (``name@k`` = first seed + k), so
    ``--seeds 43 44`` would train new teachers instead of reusing those of ``--seeds 42 43 44``."""
    finished = set(discover_finished(out, set()))
    lines = []
    for ref in dict.fromkeys(r for run in runs for r in references_of(run, seeds)):
        done = sorted(r.seed for r in finished if (r.dataset, r.model, r.layers) == (ref.dataset, ref.model, ref.layers))
        if ref in finished or not done:
            continue
        first = min(done) - (ref.seed - seeds[0])  # the first seed that resolves this reference to min(done)
        lines.append(f"{ref.dataset}/{ref.name}/seed{ref.seed} is imitated or averaged but not finished, so it "
                     f"will be trained; that row has finished seeds {done} under {out}. Teachers are the first "
                     f"--seeds + k: to reuse them, start --seeds at {first} (finished runs are skipped)")
    return lines


def tag_run(run_dir: Path, variant: str, preset: str) -> None:
    """Record the catalogue row and the preset in ``run.json`` and ``metrics.json``: an ``hgn_ce`` or
    ``ssi_hgn_ce_gru`` run is architecture ``hgn``, and the export, ``/model`` and the report name it by its row."""
    from training.io import atomic_write_json, read_json

    for name in ("run.json", "metrics.json"):
        path = run_dir / name
        if path.is_file():
            doc = read_json(path)
            if (doc.get("variant"), doc.get("preset")) != (variant, preset):
                atomic_write_json(path, {**doc, "variant": variant, "preset": preset})


def preset_clash(run_dir: Path, preset: str) -> str | None:
    """The preset an existing run folder was made with, when it is not ``preset`` (so it is not reused)."""
    from training.io import read_json

    path = run_dir / "run.json"
    made = read_json(path).get("preset") if path.is_file() else None
    return made if made not in (None, preset) else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="training/run_all.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="model/training sizes: smoke (seconds), cpu (this 2-core class of machine), paper "
                        "(the paper's sizes, for a GPU). Default: paper on a GPU, cpu otherwise")
    p.add_argument("--datasets", nargs="+", default=None,
                   help="dataset names (beauty, toys, sports, lastfm or any NAME.txt). Default: every paper "
                        "dataset present in the data folder")
    p.add_argument("--models", nargs="+", default=None, type=row_name, metavar="MODEL",
                   help=f"subset of rows to train (default: all). Known: {', '.join(CATALOG)}. Or a composition: "
                        "STUDENT--TEACHER[+TEACHER...][--OPTION] (a student alone distilled from row references, "
                        "e.g. hgn_ce--sasrec_ce@0+sasrec_ce@1+sasrec_ce@2--mean) or ensemble--MEMBER+MEMBER[...]")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seeds for mean +- std (default: 42 for smoke, 42 43 44 otherwise; teachers use the first)")
    p.add_argument("--teacher-layers", nargs="*", type=int, default=[],
                   help="Figure 4: also train the teachers with these depths and SSI-HGN on them")
    p.add_argument("--out", type=Path, default=Path("artifacts/runs"), help="runs and report folder")
    p.add_argument("--train-new-teachers", action="store_true",
                   help="train the teachers (and ensemble members) that a student's row references (name@k = first "
                        "--seeds + k) even when other seeds of their row are finished; without it that is an error, "
                        "since it usually means --seeds should start where the finished teachers do")
    p.add_argument("--data-dir", type=Path, default=None, help="data folder (default: $SSI_DATA_DIR, else ./data)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="training device")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="skip finished runs and continue interrupted ones (default)")
    g.add_argument("--fresh", dest="resume", action="store_false", help="retrain every run from scratch")
    p.add_argument("--export-out", type=Path, default=Path("artifacts/serving"), help="where the artifact goes")
    p.add_argument("--no-export", action="store_true",
                   help="skip the export of the student with the best validation NDCG@10")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the runs of the plan that are finished "
                        "(the others are listed as missing); no export")
    p.add_argument("--merge-report", type=Path, action="append", default=[], metavar="REPORT_JSON",
                   help="with --report-only (repeatable): also report the runs that this committed report.json "
                        "holds and --out has not finished (their folders are gone, say), with their entries as "
                        "recorded there (metrics, task accuracy, teachers) and 'recorded_in' naming the file; "
                        "their curves are not redrawn. A finished run under --out wins over its recorded entry")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="train up to N runs at once, one process per run sharing --out (training/workers.py): for "
                        "a GPU host whose cores and GPU one small run leaves idle, or a many-core CPU box; a run "
                        "starts once the runs it imitates are finished; each run's log goes to --out/logs/")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="with --workers: start no run after this many seconds and stop the running ones (they "
                        "resume from their last epoch checkpoint next time); the report covers what finished")
    p.add_argument("--only", default=None, metavar="DATASET/ROW/seedK",
                   help="train just this run of the plan (what each --workers process is given); no report, no "
                        "export")
    p.add_argument("--max-epochs", type=int, default=None, metavar="N",
                   help="cap the preset's epochs of teachers and students (a quick run; use its own --out)")
    p.add_argument("--teacher-set", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
                   help="override a field of the consistency teachers' model/trainer/task configs (repeatable), "
                        "e.g. --teacher-set lr=0.01: a recipe for the budget at hand (make run's quick LastFM "
                        "teacher); recorded in each teacher's run.json")
    p.add_argument("--update-readme", type=Path, default=None, metavar="README",
                   help="replace the results block of this README (between its results markers) with the "
                        "report's summary.md")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge_report and not args.report_only:  # a recorded run has no weights: it can be reported, not served
        raise SystemExit("error: --merge-report needs --report-only")
    if args.workers < 1:
        raise SystemExit(f"error: --workers {args.workers}: give 1 or more")
    if args.time_budget is not None and args.workers == 1:
        raise SystemExit("error: --time-budget needs --workers N (N > 1)")
    rank, world = init_distributed()
    logging.basicConfig(level=args.log_level if rank == 0 else "WARNING",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    preset = args.preset or default_preset(args.device)
    data_dir = resolve_data_dir(args.data_dir)
    names = args.datasets or list_datasets(data_dir)
    if not names:
        raise SystemExit(f"error: no paper dataset (Beauty/Toys/Sports) in {data_dir.resolve()}; "
                         "download one with: python -m training.data download beauty")
    try:  # fail fast, before any training: the data and its stored negatives (drawn here when missing)
        datasets = {n: load_dataset(n, data_dir) for n in names}
        for d in datasets.values():
            load_or_create_negatives(d)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    if rank == 0:
        check_writable(args.out)
    seeds = args.seeds or ([42] if preset == "smoke" else [42, 43, 44])
    models = args.models or list(CATALOG)
    try:
        runs = plan(list(datasets), models, seeds, args.teacher_layers)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.only:
        runs = [r for r in runs if run_key(r) == args.only]
        if not runs:
            raise SystemExit(f"error: --only {args.only}: not a run of this plan (DATASET/ROW/seedK of --datasets, "
                             "--models and --seeds)")
    log.info("preset %s%s | datasets %s | %d runs | seeds %s | out %s | world size %d", preset,
             "" if args.preset else " (default for this device)", ", ".join(datasets), len(runs), seeds, args.out, world)
    from training.runs import is_finished, run_lock  # torch-importing; kept out of --help

    check_teacher_overrides(runs, datasets, preset, dict(args.teacher_set))

    lines = [] if args.report_only else unfinished_references(runs, seeds, args.out)  # report-only trains nothing
    if lines and not args.train_new_teachers:  # hours of unwanted teacher training, so stop before it starts
        raise SystemExit("error: " + "\n  ".join([*lines, "or pass --train-new-teachers to train them"]))
    for line in lines:
        log.warning(line)
    results: dict[Run, dict] = {}
    missing: list[Run] = []
    t_start = time.time()
    train_here = not args.report_only
    if args.workers > 1 and train_here and world == 1:
        pool = run_pool(runs, lambda r: worker_command(args, preset, r), lambda r: references_of(r, seeds),
                        lambda r: is_finished(r.dir(args.out)), args.out / "logs", args.workers, args.time_budget)
        log.info("workers: %d finished, %d failed, %d stopped by the time budget, %d not started",
                 len(pool.finished), len(pool.failed), len(pool.stopped), len(pool.skipped))
        train_here = False  # what the workers left unfinished is reported as missing, not trained here
    bar = tqdm(runs, desc="runs", unit="run", disable=True if rank != 0 else None, dynamic_ncols=True)  # None: not in a log
    for run in bar:
        bar.set_postfix_str(f"{run.dataset}/{run.name}/seed{run.seed}")
        ds = datasets[run.dataset]
        if spec_of(run.model).mostpop and rank != 0:
            continue
        if not train_here and not is_finished(run.dir(args.out)):
            missing.append(run)
            continue
        clash = preset_clash(run.dir(args.out), preset) if args.resume else None
        if clash:
            log.error("%s was made with preset %s, not %s: not reused; give another --out (or --fresh to "
                      "retrain it)", run.dir(args.out), clash, preset)
            missing.append(run)
            continue
        waits = [r for r in references_of(run, seeds) if not is_finished(r.dir(args.out))]
        if waits:
            log.warning("%s/%s/seed%d waits for unfinished %s; skipped here", run.dataset, run.name, run.seed,
                        ", ".join(f"{r.name}/seed{r.seed}" for r in waits))
            missing.append(run)
            continue
        t0 = time.time()
        if world > 1:  # DDP ranks train each run together; a lock per process would split them
            m = execute(run, ds, preset, args.out, args.resume, seeds, args.device, args.max_epochs,
                            dict(args.teacher_set))
        else:
            with run_lock(run.dir(args.out)) as holder:
                if holder is not None:
                    log.warning("%s/%s/seed%d is being trained by another process (pid %s); skipped here",
                                run.dataset, run.name, run.seed, holder)
                    missing.append(run)
                    continue
                m = execute(run, ds, preset, args.out, args.resume, seeds, args.device, args.max_epochs,
                            dict(args.teacher_set))
        if rank != 0:
            continue
        tag_run(run.dir(args.out), run.name, preset)
        results[run] = {**m, "variant": run.name}
        t = m["test"]["sampled"]
        tqdm.write(f"[{run.dataset}] {run.name:<18} seed {run.seed}: test R@10 {t['recall@10']:.4f} "
                   f"N@10 {t['ndcg@10']:.4f} | full N@10 {m['test']['full']['ndcg@10']:.4f} | {time.time() - t0:.0f}s")
    if rank != 0:
        return 0
    if args.only:  # one worker of --workers (or a user's single run): the parent writes the report
        return 1 if missing else 0
    from training.io import read_json
    from training.report import write_report

    # the report covers every finished run under --out, not only this invocation's plan
    report_runs = list(runs)
    for run in discover_finished(args.out, set(runs)):
        if run.dataset not in datasets:
            try:
                datasets[run.dataset] = load_dataset(run.dataset, data_dir)
            except DataError as e:
                log.warning("%s: finished runs left out of the report (%s)", run.dataset, e)
                continue
        results[run] = read_json(run.dir(args.out) / "metrics.json")
        report_runs.append(run)
    recorded = merge_recorded(args.merge_report, results, report_runs, datasets, data_dir, args.seeds)
    missing = [r for r in missing if r not in recorded]  # reported as recorded, so not missing from the report
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    chosen = {ds: choose_served(results, ds) for ds in datasets}
    served = {ds: f"{c[0].name}/seed{c[0].seed}" for ds, c in chosen.items() if c}
    report_dir = write_report(args.out, report_runs, results, datasets, preset=preset,
                              wall_time_s=time.time() - t_start, peak_rss_mb=peak_rss_mb,
                              negatives={n: load_or_create_negatives(d).sha256 for n, d in datasets.items()},
                              served=served, recorded=recorded)
    log.info("report written to %s (peak RSS %.0f MB)", report_dir, peak_rss_mb)
    if args.update_readme:
        update_readme(args.update_readme, (report_dir / "summary.md").read_text(encoding="utf-8"))
        log.info("%s: results block regenerated from %s", args.update_readme, report_dir / "summary.md")
    if missing:
        log.warning("%d planned runs are not finished and are not in the report: %s", len(missing),
                    ", ".join(f"{r.dataset}/{r.name}/seed{r.seed}" for r in missing))
    first = runs[0].dataset
    from training.report import validation_table

    shown = [r for r in runs if r.dataset == first and r in results]
    print(f"\n{first}: the runs of this invocation, NDCG@10 (choices are made on validation)\n"
          + validation_table(shown, results, list(dict.fromkeys(r.name for r in shown))), flush=True)
    if not args.no_export and not args.report_only:
        artifact = export_best(chosen[first], first, args.out, args.export_out)
        if artifact:
            example = write_example_request(datasets[first], args.export_out)
            log.info("artifact ready to serve: %s  (python -m serving); a real user's request: %s", artifact, example)
    return 0


def write_example_request(ds: SequenceDataset, export_out: Path) -> Path:
    """``<export_out>/example_request.json``: the first user's test history (its last 10 items), in the ids the
    server speaks (the raw ids of ``NAME_id_map.json`` when the dataset has one), for the README's curl."""
    from protocol import eval_examples

    history = [int(i) for i in eval_examples(ds, "test")[0][0][-10:]]
    id_map = ds.path.with_name(f"{ds.path.stem}_id_map.json")
    if id_map.is_file():
        raw = json.loads(id_map.read_text(encoding="utf-8"))["item_ids"]
        history = [raw[i - 1] for i in history]
    path = export_out / "example_request.json"
    path.write_text(json.dumps({"history": history, "k": 5}) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
