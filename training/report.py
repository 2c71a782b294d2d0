"""Tables (markdown + CSV), figures (PNG) and report.json from finished runs.

Table 2 (sampled and full ranking), Table 3 (imitation ablation), Figure 3 (single teachers vs all),
Figure 4 (teacher depth, when swept), training curves and the learned teacher weights per epoch.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from training.catalogue import (
    CATALOG,
    ENSEMBLE,
    IMITATION_OPTIONS,
    SEP,
    TEACHER_VARIANTS,
    Run,
    alone_of,
    choice_score,
    is_known,
    paper_row,
    spec_of,
    student_label,
    task_control,
    teacher_control,
)
from training.imitation import ImitationConfig
from training.io import atomic_write_json, atomic_write_text
from training.paper import TABLE2, TABLE3
from training.students import student_loss

METRICS = [f"{m}@{k}" for k in (5, 10, 15, 20) for m in ("recall", "ndcg")]
PAPER_COLS = ("recall@10", "ndcg@10")


def _agg(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(runs: list[Run], results: dict[Run, dict], protocol: str, split: str = "test"):
    """{(dataset, row name): {metric: [value per seed]}} in run order."""
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in runs:
        if r in results:
            cell = rows.setdefault((r.dataset, r.name), defaultdict(list))
            for k, v in results[r][split][protocol].items():
                cell[k].append(v)
    return rows


def _fmt(mean: float, std: float, n: int, bold: bool) -> str:
    s = f"{mean:.4f}" + (f" ± {std:.4f}" if n > 1 else "")
    return f"**{s}**" if bold else s


def table(rows, protocol: str, paper: dict | None) -> tuple[str, str]:
    """Markdown and CSV of one protocol; best mean per dataset and column in bold."""
    best: dict[tuple[str, str], float] = {}
    for (ds, _), cell in rows.items():
        for m in METRICS:
            if m in cell:
                best[(ds, m)] = max(best.get((ds, m), -1.0), _agg(cell[m])[0])
    head = ["dataset", "model", "seeds", *METRICS]
    if paper:
        head += [f"paper {m}" for m in PAPER_COLS] + [f"Δ {m}" for m in PAPER_COLS]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "model", "protocol", "metric", "mean", "std", "n_seeds", "paper", "diff"])
    for (ds, model), cell in rows.items():
        n = len(next(iter(cell.values())))
        line = [ds, model, str(n)]
        paper_cells = (paper or {}).get(ds, {}).get(paper_row(model) or model, {})  # composed rows: their paper row
        for m in METRICS:
            mean, std = _agg(cell[m])
            line.append(_fmt(mean, std, n, abs(mean - best[(ds, m)]) < 1e-12))
            ref = paper_cells.get(m)
            w.writerow([ds, model, protocol, m, f"{mean:.6f}", f"{std:.6f}", n,
                        "" if ref is None else ref, "" if ref is None else f"{mean - ref:+.6f}"])
        if paper:
            refs = [paper_cells.get(m) for m in PAPER_COLS]
            line += ["" if r is None else f"{r:.3f}" for r in refs]
            line += ["" if r is None else f"{_agg(cell[m])[0] - r:+.4f}" for r, m in zip(refs, PAPER_COLS)]
        md.append("| " + " | ".join(line) + " |")
    return "\n".join(md) + "\n", buf.getvalue()


def table3(rows) -> str:
    order = ["ssi_hgn", "ssi_hgn_no_mse", "ssi_hgn_no_kl", "hgn"]
    label = {"ssi_hgn": "SSI (full)", "ssi_hgn_no_mse": "w/o item-representation imitation",
             "ssi_hgn_no_kl": "w/o prediction imitation", "hgn": "w/o both (HGN alone)"}
    md = ["| dataset | variant | R@10 | N@10 | paper R@10 | paper N@10 |", "|---|---|---|---|---|---|"]
    for ds in sorted({d for d, _ in rows}):
        for m in order:
            if (ds, m) in rows:
                c = rows[(ds, m)]
                r, n = _agg(c["recall@10"]), _agg(c["ndcg@10"])
                k = len(c["recall@10"])
                ref = TABLE3.get(m, {}) if ds == "beauty" else {}
                md.append(f"| {ds} | {label[m]} | {_fmt(*r, k, False)} | {_fmt(*n, k, False)} | "
                          f"{ref.get('recall@10', '')} | {ref.get('ndcg@10', '')} |")
    return "\n".join(md) + "\n"


GAIN_METRICS = (("full", "recall@10"), ("full", "ndcg@10"), ("sampled", "recall@10"), ("sampled", "ndcg@10"))


def paired(runs, results, control_of: Callable[[str], str | None],
           keys: tuple[str, str] = ("ssi", "alone")) -> tuple[str, list[dict[str, Any]]]:
    """Each row minus its control (``control_of(row)``), paired by seed: mean +- std of the per-seed differences
    over the seeds both rows have, on test. Markdown and machine-readable rows (``keys``: the two rows' fields)."""
    by = {(r.dataset, r.name, r.seed): results[r] for r in runs if r in results and r.layers is None}
    md = ["| dataset | difference | seeds | " + " | ".join(f"{p} {m}" for p, m in GAIN_METRICS) + " |",
          "|---|---|---|" + "---|" * len(GAIN_METRICS)]
    out: list[dict[str, Any]] = []
    names = list(dict.fromkeys(n for _, n, _ in by))
    pairs = [(n, control_of(n)) for n in names if control_of(n)]
    for ds in sorted({k[0] for k in by}):
        for row, control in pairs:
            seeds = sorted(s for d, n, s in by if d == ds and n == row and (ds, control, s) in by)
            if not seeds:
                continue
            cells, entry = [], {"dataset": ds, keys[0]: row, keys[1]: control, "seeds": seeds}
            for proto, m in GAIN_METRICS:
                diffs = [by[(ds, row, s)]["test"][proto][m] - by[(ds, control, s)]["test"][proto][m] for s in seeds]
                mean, std = _agg(diffs)
                entry[f"{proto} {m}"] = {"mean": mean, "std": std, "per_seed": diffs}
                cells.append(f"{mean:+.4f}" + (f" ± {std:.4f}" if len(seeds) > 1 else ""))
            md.append(f"| {ds} | {row} − {control} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
            out.append(entry)
    return "\n".join(md) + "\n", out


def gains(runs, results) -> tuple[str, list[dict[str, Any]]]:
    """The SSI gain: each student with imitation minus the same student alone (``alone_of``), paired by seed."""
    return paired(runs, results, alone_of)


def task_ablation(runs, results) -> tuple[str, list[dict[str, Any]]]:
    """The consistency-task ablation (issue 26): each student of task teachers minus the same student of as many
    plain teachers of the same backbone and seeds (``task_control``), paired by seed."""
    return paired(runs, results, task_control, ("with_tasks", "plain_teachers"))


def task_effect(runs, results) -> tuple[str, list[dict[str, Any]]]:
    """What each consistency task does to its own teacher (issue 26): the teacher minus its backbone's row without a
    task (``teacher_control``) on the same seed, on test."""
    return paired(runs, results, teacher_control, ("teacher", "plain"))


# ---- validation tables: teachers vs students alone, imitation options --------------------------------
ALONE = tuple(n for n, s in CATALOG.items() if s.student is not None and not s.teachers)  # students trained alone
# full ranking first: it is what the server returns and what chooses; sampled (the paper's protocol) beside it
VALID_COLS = (("valid", "full"), ("test", "full"), ("valid", "sampled"), ("test", "sampled"))


def _cells(runs, results) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """{(dataset, row name): [metrics of each finished seed]} in run order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        if r in results and r.layers is None:
            out.setdefault((r.dataset, r.name), []).append(results[r])
    return out


def _mean_cell(ms: list[dict[str, Any]], split: str, proto: str, metric: str = "ndcg@10") -> str:
    mean, std = _agg([m[split][proto][metric] for m in ms])
    return _fmt(mean, std, len(ms), False)


def validation_table(runs, results, names: list[str] | None = None, prefix: tuple[str, ...] = ()) -> str:
    """NDCG@10 on validation (what choices are made on) beside test, sampled and full, per row.

    Rows: ``names`` and every row whose name starts with one of ``prefix``; seeds averaged."""
    cells = _cells(runs, results)
    head = ["dataset", "row", "seeds", *(f"{s} {p} N@10" for s, p in VALID_COLS), "best epoch", "wall s"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (ds, name), ms in sorted(cells.items(), key=lambda kv: (kv[0][0], _row_order(kv[0][1], names, prefix))):
        if (names and name in names) or name.startswith(prefix or ("\0",)):
            epochs = [m.get("best_epoch") for m in ms if m.get("best_epoch") is not None]
            walls = [m.get("wall_time_s") or 0.0 for m in ms]
            md.append("| " + " | ".join([ds, name, str(len(ms)), *(_mean_cell(ms, s, p) for s, p in VALID_COLS),
                                         ", ".join(map(str, epochs)) or "–", f"{statistics.fmean(walls):.0f}"]) + " |")
    return "\n".join(md) + "\n"


def option_rows(names: set[str]) -> list[str]:
    """The composed option rows among ``names`` (``STUDENT--TEACHERS--OPTION``), each after the row it varies."""
    options = sorted(n for n in names if is_known(n) and spec_of(n).group == "option" and n not in CATALOG)
    return list(dict.fromkeys(r for n in options for r in (n.rsplit(SEP, 1)[0], n)))


def _row_order(name: str, names: list[str] | None, prefix: tuple[str, ...]) -> tuple[int, str]:
    if names and name in names:
        return names.index(name), name
    return len(names or ()), name


def best_alone(runs, results, dataset: str) -> tuple[str, float] | None:
    """The student trained alone with the best mean validation full NDCG@10 on ``dataset``."""
    cells = _cells(runs, results)
    scores = {n: statistics.fmean(choice_score(m) for m in ms)
              for (d, n), ms in cells.items() if d == dataset and n in ALONE}
    return max(scores.items(), key=lambda kv: kv[1]) if scores else None


def ensemble_cost_rows(measured: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A value-table row per ensemble of ``entries`` (report.json runs) whose members' rows were all measured in
    the same ``export.latency`` run (``measured``; a member's row measured on another seed stands for it: same
    model and sizes). Its cost is the sum of its members' (encode, parameters, artifact): a lower bound, since
    averaging the members' distributions over the catalogue is not counted; its quality is the ensemble's own."""
    by_row = {}
    for r in measured:
        by_row.setdefault((r.get("dataset", ""), r["model"]), r)
    rows = []
    for e in entries:
        members = [by_row.get((e["dataset"], t.split("/")[0])) for t in e.get("teachers") or []]
        if not e.get("ensemble") or not members or None in members:
            continue
        test = e["metrics"]["test"]
        row = {"dataset": e["dataset"], "label": f"{e['model']}/seed{e['seed']} (sum of {len(members)} members)",
               "test_full_ndcg@10": test["full"]["ndcg@10"], "test_sampled_ndcg@10": test["sampled"]["ndcg@10"]}
        for key in ("encode_b1_ms", "encode_b32_ms", "encode_b1_ratio", "encode_b32_ratio", "params", "artifact_bytes"):
            row[key] = sum(m[key] for m in members)
        rows.append(row)
    return rows


def value_table(latency_json: Path, entries: list[dict[str, Any]] | None = None) -> str:
    """"What distillation buys": quality beside serving cost, from ``python -m export.latency`` (one run,
    models interleaved; ratios to its first run), and the ensembles of ``entries`` (report.json runs) whose
    members it measured (``ensemble_cost_rows``). Empty when the file is missing."""
    if not latency_json.is_file():
        return ""
    doc = json.loads(latency_json.read_text())
    doc["rows"] = doc["rows"] + ensemble_cost_rows(doc["rows"], entries or [])
    ref = doc.get("reference", doc["rows"][0]["label"])
    md = [(f"Serving cost measured in one run of `python -m export.latency` ({doc.get('created_at', '')}; ONNX "
          f"Runtime CPU, {doc.get('settings', {}).get('threads', 1)} thread; ratios to `{ref}`, median over "
          "interleaved rounds):"), "",
          ("| dataset | row | test full N@10 | test sampled N@10 | encode, 1 request | encode, batch 32 | parameters | "
          "artifact |"), "|---|---|---|---|---|---|---|---|"]
    for r in sorted(doc["rows"], key=lambda r: r.get("dataset", "")):  # stable: run order within a dataset
        md.append(f"| {r.get('dataset', '')} | {r['label']} | {r['test_full_ndcg@10']:.4f} | {r['test_sampled_ndcg@10']:.4f} | "
                  f"{r['encode_b1_ratio']:.2f}x ({r['encode_b1_ms'] * 1000:.0f} us) | "
                  f"{r['encode_b32_ratio']:.2f}x ({r['encode_b32_ms'] * 1000:.0f} us) | {r['params'] / 1e3:.0f} k | "
                  f"{r['artifact_bytes'] / 2**20:.2f} MiB |")
    if any("sum of" in r["label"] for r in doc["rows"]):
        md += ["", ("An ensemble's cost is the sum of its members' measured in this run (a member's row measured on "
               "another seed stands for it): a lower bound, as averaging their distributions over the catalogue is "
               "not counted.")]
    return "\n".join(md) + "\n"


def distilled(runs) -> list[str]:
    """The rows of ``runs`` that distil a student from teachers, in run order."""
    return list(dict.fromkeys(r.name for r in runs if alone_of(r.model)))


TASK_EFFECT_TITLE = "What each consistency task does to its own teacher: the teacher minus its backbone alone, same seed"


def summary(runs, results, gain_md: str, value_md: str = "") -> str:
    """The README's results block: teachers against the students alone, the imitation gain, the consistency-task
    ablation (when a student of task teachers and its control both finished), what each task does to its own teacher
    (when a teacher and its plain row finished on its seed), the options."""
    ablation_md, ablation_rows = task_ablation(runs, results)
    title = "#### Consistency-task ablation: students of task teachers minus students of plain teachers, paired by seed"
    ablation = [f"{title} (test)", ablation_md] if ablation_rows else []
    effect_md, effect_rows = task_effect(runs, results)
    if effect_rows:
        ablation += [f"#### {TASK_EFFECT_TITLE} (test)", effect_md]
    parts = ["#### Teachers and ensembles against the students trained alone (NDCG@10)",
             validation_table(runs, results, list(ALONE), ("teacher_", ENSEMBLE)),
             "#### Students distilled from teachers (NDCG@10)", validation_table(runs, results, distilled(runs)),
             "#### Imitation gain: with imitation minus the same student alone, paired by seed (test)", gain_md,
             *ablation,
             "#### Imitation options (HGN-CE student, GRU teachers), chosen on validation",
             validation_table(runs, results, ["hgn_ce", "ssi_hgn_ce_gru", "kd_hgn_ce_gru4rec"], ("ssi_hgn_ce_gru_",))]
    if value_md:
        parts += ["#### The value of distillation: quality against serving cost", value_md]
    for ds in sorted({r.dataset for r in runs if r in results}):
        best = best_alone(runs, results, ds)
        if best:
            parts.append(f"Best student alone on {ds} (validation full N@10): `{best[0]}` {best[1]:.4f}.")
    return "\n\n".join(parts) + "\n"


def task_table(runs, results) -> str:
    """Each teacher's consistency task (issue 26): accuracy on its training batches and on its fixed held-out
    batch against chance, at the best epoch (the weights kept) and at the last; one row per finished run. A
    consistency teacher whose run predates the measurement (a recorded entry without ``task``) has a row that
    says so, rather than none."""
    head = ["dataset", "row", "seed", "task", "best epoch", "train acc", "train chance", "held-out acc",
            "held-out chance", "last epoch", "held-out acc (last)"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        if r not in results:
            continue
        task = results[r].get("task")
        variant = spec_of(r.model).teacher if is_known(r.model) else None
        if not task and variant in TEACHER_VARIANTS:
            md.append("| " + " | ".join([r.dataset, r.name, str(r.seed), variant, str(results[r].get("best_epoch")),
                                         "not recorded (the run predates task accuracy)", *[""] * 5]) + " |")
        if task:
            b, last = task["best"], task["last"]
            cells = [b["train_task_acc"], b["train_task_chance"], b["heldout_task_acc"], b["heldout_task_chance"]]
            md.append("| " + " | ".join([r.dataset, r.name, str(r.seed), task["variant"], str(b["epoch"]),
                                         *(f"{v:.3f}" for v in cells), str(last["epoch"]),
                                         f"{last['heldout_task_acc']:.3f}"]) + " |")
    return "\n".join(md) + "\n" if len(md) > 2 else ""


def fig3(rows, path: Path) -> bool:
    """The paper's Figure 3: HGN alone, from each task's teacher alone, from all three (sampled NDCG@10), per
    dataset with an SSI-HGN row. Rows are matched by the paper row they reproduce (``paper_row``), so a
    composed run of any teacher family counts; the first such row of a dataset stands for it."""
    names = ["hgn", "ssi_hgn_temporal", "ssi_hgn_persona", "ssi_hgn_global", "ssi_hgn"]
    labels = ["HGN", "+temporal", "+persona", "+global", "+all three"]
    by_paper: dict[tuple[str, str], Any] = {}
    for (ds, model), cell in rows.items():
        by_paper.setdefault((ds, paper_row(model) or model), cell)
    rows = by_paper
    datasets = sorted(d for d in {d for d, _ in rows}  # an SSI-HGN row and something to compare it with
                      if any((d, n) in rows for n in names[1:]) and sum((d, n) in rows for n in names) >= 2)
    if not datasets:
        return False
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        present = [(lab, rows[(ds, n)]["ndcg@10"]) for n, lab in zip(names, labels) if (ds, n) in rows]
        means = [_agg(v)[0] for _, v in present]
        errs = [_agg(v)[1] for _, v in present]
        ax.bar([p[0] for p in present], means, yerr=errs, color="#4c72b0", capsize=3)
        ax.set_ylim(min(means) * 0.95, max(means) * 1.03)
        ax.set_title(f"{ds}: NDCG@10 (sampled) by consistency")
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def fig4(runs, results, path: Path) -> bool:
    pts: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in runs:
        if r.layers is not None and r in results and r.model == "ssi_hgn":
            pts[r.dataset].append((r.layers, results[r]["test"]["sampled"]["ndcg@10"]))
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for ds, p in pts.items():
        p.sort()
        ax.plot([x for x, _ in p], [y for _, y in p], marker="o", label=ds)
    ax.set_xlabel("teacher layers")
    ax.set_ylabel("SSI-HGN test NDCG@10")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def curves(runs, out: Path, report: Path) -> list[str]:
    """One PNG per dataset/model: training loss and validation NDCG@10; plus learned lambdas."""
    written, seen = [], set()
    for r in runs:  # the first finished run of each row (teachers of a set train on different seeds)
        hist_path = r.dir(out) / "history.json"
        if (r.dataset, r.name) in seen or not hist_path.is_file():
            continue
        seen.add((r.dataset, r.name))
        hist = json.loads(hist_path.read_text())
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        lam = sorted({k for h in hist for k in h if k.startswith("lambda")})
        task = [k for k in ("train_task_acc", "heldout_task_acc", "heldout_task_chance") if any(k in h for h in hist)]
        panels = 2 + bool(lam) + bool(task)
        fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.2))
        axes[0].plot(ep, [h.get("train_loss") for h in hist])
        axes[0].set_title(f"{r.name}: train loss")
        val = [(h["epoch"], h["valid_ndcg@10"]) for h in hist if "valid_ndcg@10" in h]
        axes[1].plot([e for e, _ in val], [v for _, v in val], marker=".")
        axes[1].set_title("valid NDCG@10 (sampled)")
        for k in lam:
            axes[2].plot(ep, [h.get(k) for h in hist], label=k)
        if lam:
            axes[2].set_title("learned teacher weights λ_i")
            axes[2].legend()
        for k in task:  # a teacher's consistency task: accuracy on its batches, on the held-out batch, chance
            axes[-1].plot(ep, [h.get(k) for h in hist], label=k.replace("_task_", " "), ls="--" if "chance" in k else "-")
        if task:
            axes[-1].set_title("consistency task accuracy")
            axes[-1].legend()
        for a in axes:
            a.set_xlabel("epoch")
        fig.tight_layout()
        name = f"curves_{r.dataset}_{r.name}.png"
        fig.savefig(report / name, dpi=100)
        plt.close(fig)
        written.append(name)
    return written


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in ("torch", "numpy", "onnx", "onnxruntime", "faiss-cpu", "faiss-gpu"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


# ImitationConfig fields that change what a student learns (the cache switches change only its speed)
_IMITATION_CACHES = {"cache_teacher", "cache_probs"}


def identity(model: str, teachers: list[str]) -> dict[str, Any]:
    """What a run is, read from its catalogue spec: a student, a loss, teachers and an imitation option.

    ``student``: the student it trains, named as that student alone (null for a teacher, baseline or
    ensemble); ``loss``: that student's loss (``bpr`` | ``ce``; null when not a student); ``teachers``: the runs
    it imitated, or an ensemble's members (``row/seedK``; empty when trained alone); ``imitation``: the
    ``ImitationConfig`` fields it sets apart from the paper's loss ({} for it; null without teachers);
    ``option``: the name of that imitation option, if it has one; ``alone``: the same student trained alone
    (itself for a student alone); ``ensemble``; ``paper_row``: the row of the paper's tables it reproduces
    (``catalogue.paper_row``), or null."""
    spec = spec_of(model) if is_known(model) else None
    student = student_label(model) if spec else None
    imitation = None
    if spec is not None and spec.teachers and spec.student is not None:
        default = ImitationConfig()
        imitation = {f.name: getattr(spec.imitation, f.name) for f in fields(ImitationConfig)
                     if f.name not in _IMITATION_CACHES and getattr(spec.imitation, f.name) != getattr(default, f.name)}
    option = next((o for o, c in IMITATION_OPTIONS.items() if spec is not None and c == spec.imitation), None)
    return {"student": student, "loss": student_loss(spec.student, spec.loss) if student else None,
            "teachers": teachers, "imitation": imitation, "option": option if spec and spec.teachers else None,
            "alone": alone_of(model) or student, "ensemble": bool(spec and spec.is_ensemble),
            "paper_row": paper_row(model)}


def run_entry(r: Run, out: Path, results: dict[Run, dict], recorded: dict[Run, dict] | None = None) -> dict[str, Any]:
    """One run of report.json: what it is (``identity``, read from its catalogue spec and its run.json), and its
    metrics. A run in ``recorded`` (an earlier report's entry, ``run_all --merge-report``) keeps that entry."""
    if recorded and r in recorded:
        return recorded[r]
    info_path = r.dir(out) / "run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    refs = list((info.get("teachers") or {}).values()) or list(info.get("members") or [])
    return {"dataset": r.dataset, "model": r.name, "seed": r.seed, "dir": str(r.dir(out)),
            **identity(r.model, [f"{Path(d).parent.name}/{Path(d).name}" for d in refs]),
            **{k: results[r].get(k) for k in ("wall_time_s", "device", "best_epoch", "epochs_run")},
            **({"task": results[r]["task"]} if "task" in results[r] else {}),  # a teacher's task accuracy and chance
            "metrics": {s: results[r][s] for s in ("valid", "test")}}


def write_report(out: Path, runs, results, datasets, preset: str, wall_time_s: float, peak_rss_mb: float,
                 negatives: dict[str, str], served: dict[str, str] | None = None,
                 recorded: dict[Run, dict] | None = None) -> Path:
    """Every report file under ``out/report``; ``served``: {dataset: the row chosen to serve (``row/seedK``)};
    ``recorded``: runs whose entries come from an earlier report.json, not from a folder under ``out``."""
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    for proto, suffix in (("sampled", ""), ("full", "_full")):
        md, csv_text = table(collect(runs, results, proto), proto, TABLE2 if proto == "sampled" else None)
        title = "Table 2: test metrics, sampled (target + 99 stored negatives)" if proto == "sampled" else \
            "Table 2 (full ranking): test metrics over all items, the user's history excluded"
        atomic_write_text(report / f"table2{suffix}.md", f"# {title}\n\npreset `{preset}`; mean ± std over seeds; "
                          "best per dataset and column in bold.\n\n" + md)
        atomic_write_text(report / f"table2{suffix}.csv", csv_text)
    sampled = collect(runs, results, "sampled")
    atomic_write_text(report / "table3.md", "# Table 3: imitation ablation (HGN student, test, sampled)\n\n"
                      + table3(sampled))
    task_md = task_table(runs, results)
    effect_md, effect_rows = task_effect(runs, results)
    atomic_write_text(report / "teachers.md", "# Teachers against the students trained alone (NDCG@10)\n\n"
                      "Choices are made on validation; test beside it. Teachers and ensembles train/evaluate on the "
                      "first seed; students alone are mean ± std over seeds.\n\n"
                      + validation_table(runs, results, list(ALONE), ("teacher_", ENSEMBLE, "bert4rec"))
                      + (f"\n## Consistency tasks: accuracy against chance (held-out: a fixed batch of validation "
                         f"views, training.teachers.HeldoutTask)\n\n{task_md}" if task_md else "")
                      + (f"\n## {TASK_EFFECT_TITLE} (test)\n\nThe control is the backbone's row without a task "
                         f"(`training.catalogue.teacher_control`; the ablation's plain teacher) on the seed the "
                         f"teacher trained on: one seed per task, so no std.\n\n{effect_md}" if effect_rows else ""))
    atomic_write_text(report / "options.md", "# Imitation options, chosen on validation\n\nEach option row "
                      "changes one `ImitationConfig` field (training/imitation.py) of the row it follows: "
                      "`ssi_hgn_ce_gru_<option>` of `ssi_hgn_ce_gru` (GRU teachers, the paper's loss), "
                      "`STUDENT--TEACHERS--<option>` of `STUDENT--TEACHERS`.\n\n"
                      + validation_table(runs, results, ["hgn_ce", "ssi_hgn_ce_gru", "kd_hgn_ce_gru4rec",
                                                         *option_rows({r.model for r in runs})],
                                         ("ssi_hgn_ce_gru_",)))
    gain_md, gain_rows = gains(runs, results)
    atomic_write_text(report / "gains.md", "# SSI gain: with imitation minus the same student alone (test)\n\n"
                      "Paired by seed: mean ± std of the per-seed differences.\n\n" + gain_md)
    ablation_md, ablation_rows = task_ablation(runs, results)
    atomic_write_text(report / "task_ablation.md", "# Consistency-task ablation: students of task teachers minus the "
                      "same student of plain teachers (test)\n\nThe control replaces each task teacher by its "
                      "backbone's row without a task on the same seed (`training.catalogue.task_control`); paired by "
                      "the student's seed: mean ± std of the per-seed differences.\n\n" + ablation_md)
    entries = [run_entry(r, out, results, recorded) for r in runs if r in results]
    value_md = value_table(out / "latency.json", entries)  # from `python -m export.latency ... --out <out>/latency.json`
    if value_md:
        atomic_write_text(report / "value.md", "# The value of distillation\n\n" + value_md)
    atomic_write_text(report / "summary.md", summary(runs, results, gain_md, value_md))
    figures = {"fig3": fig3(sampled, report / "fig3.png"), "fig4": fig4(runs, results, report / "fig4.png")}
    figures["curves"] = curves(runs, out, report)
    doc: dict[str, Any] = {
        "preset": preset, "wall_time_s": round(wall_time_s, 1), "peak_rss_mb": round(peak_rss_mb, 1),
        "packages": _versions(), "figures": figures, "gains": gain_rows,
        "task_ablation": ablation_rows, "task_effect": effect_rows,
        "datasets": {n: {"path": str(d.path), "sha256": d.sha256, "negatives_sha256": negatives.get(n),
                         "users": d.num_users, "items": d.num_items} for n, d in datasets.items()},
        "served": served or {}, "served_by": "mean validation full-ranking NDCG@10 of the student row over its seeds; its best seed",
        "runs": entries,
    }
    atomic_write_json(report / "report.json", doc)
    return report


# ---- the README's results block -------------------------------------------------------------------------
README_START, README_END = "<!-- results:start (run_all --update-readme) -->", "<!-- results:end -->"


def update_readme(readme: Path, summary: str) -> None:
    """Replace the README block between the results markers with ``summary``."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"error: {readme} has no block between '{README_START}' and '{README_END}'")
    readme.write_text(text[: start + len(README_START)] + "\n" + summary.strip() + "\n" + text[end:], encoding="utf-8")


def runs_from_report(doc: dict[str, Any]) -> tuple[list[Run], dict[Run, dict[str, Any]]]:
    """The runs and metrics a committed ``report.json`` holds, as ``write_report`` took them."""
    runs: list[Run] = []
    results: dict[Run, dict[str, Any]] = {}
    for e in doc["runs"]:
        name, layers = e["model"], None
        base, sep, depth = name.rpartition("_L")
        if sep and depth.isdigit() and is_known(base):
            name, layers = base, int(depth)
        run = Run(e["dataset"], name, int(e["seed"]), layers)
        runs.append(run)
        results[run] = {**e["metrics"], **{k: e.get(k) for k in ("wall_time_s", "device", "best_epoch", "epochs_run")},
                        **({"task": e["task"]} if "task" in e else {})}
    return runs, results


def main(argv: list[str] | None = None) -> int:
    """``python -m training.report REPORT_JSON``: the summary (and the README block) again from a committed
    report.json, without the run folders: the same numbers, in the tables' current form."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m training.report", description=main.__doc__)
    p.add_argument("report", type=Path, help="a report.json written by run_all (e.g. docs/results/gru-current/report.json)")
    p.add_argument("--update-readme", type=Path, default=None, metavar="README",
                   help="replace this README's results block with the summary")
    a = p.parse_args(argv)
    try:
        doc = json.loads(a.report.read_text(encoding="utf-8"))
        runs, results = runs_from_report(doc)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {a.report}: not a readable report.json ({e})") from None
    gain_md, _ = gains(runs, results)
    text = summary(runs, results, gain_md, value_table(a.report.parent / "latency.json", doc["runs"]))
    atomic_write_text(a.report.parent / "summary.md", text)
    print(f"wrote {a.report.parent / 'summary.md'}")
    if a.update_readme:
        update_readme(a.update_readme, text)
        print(f"{a.update_readme}: results block regenerated from {a.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
