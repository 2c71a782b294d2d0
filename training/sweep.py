"""A sweep table from finished runs: one row per run folder, what it changed against the first, its metrics.

    python -m training.sweep artifacts/runs/beauty/teacher_gru_temporal/seed42 artifacts/probes/* --md sweep.md

Every run folder written by ``training.teachers``, ``training.students``, ``training.baselines`` or
``run_all`` holds ``run.json`` (its configs) and, once finished, ``metrics.json``. A row shows the config
fields in which the run differs from the reference run (the first folder given), validation NDCG@10 beside
test NDCG@10 on the sampled and the full-ranking protocol, the best epoch, the epochs run and the wall
time, so that a probe with ``--set weight=0.1`` reads as ``consistency.weight=0.1`` next to its numbers.
Choose on the validation columns; the test columns are there to report, not to choose.

Torch-free: it reads JSON only.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_SECTIONS = {"model_config": "model", "train_config": "train", "consistency_config": "consistency",
                   "cloze_config": "cloze", "imitation": "imitation"}
TOP_LEVEL = ("variant", "model", "dataset", "preset", "teacher_variant", "teacher_backbone", "student", "loss")
IGNORED = {"train.seed", "train.progress", "train.device", "train.eval_batch_size"}  # not a setting of the recipe
METRICS = (("valid", "sampled"), ("valid", "full"), ("test", "sampled"), ("test", "full"))


class SweepError(Exception):
    """A run folder that cannot be read; the message names the folder and the file."""


@dataclass(frozen=True)
class SweepRow:
    path: Path
    info: dict[str, Any]  # run.json
    metrics: dict[str, Any]  # metrics.json

    @property
    def settings(self) -> dict[str, Any]:
        """The run's configs flattened to ``section.field`` (``consistency.weight``), plus its kind."""
        flat: dict[str, Any] = {k: self.info.get(k) for k in TOP_LEVEL}
        for key, section in CONFIG_SECTIONS.items():
            for field, value in (self.info.get(key) or {}).items():
                flat[f"{section}.{field}"] = value
        return {k: v for k, v in flat.items() if k not in IGNORED and v is not None}

    def ndcg(self, split: str, protocol: str) -> float | None:
        return self.metrics.get(split, {}).get(protocol, {}).get("ndcg@10")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{path}: missing (is the run finished?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SweepError(f"{path}: unreadable ({e})") from None
    if not isinstance(doc, dict):
        raise SweepError(f"{path}: expected a JSON object")
    return doc


def read_run(run_dir: Path) -> SweepRow:
    """The run in ``run_dir``; ``SweepError`` naming the file when it is not a finished run."""
    if not run_dir.is_dir():
        raise SweepError(f"{run_dir}: not a folder")
    return SweepRow(run_dir, _read_json(run_dir / "run.json"), _read_json(run_dir / "metrics.json"))


def changes(row: SweepRow, reference: SweepRow) -> str:
    """What ``row`` changed against ``reference``: ``key=value`` for a setting with another value,
    ``+key=value`` for one recorded only in ``row`` (a newer field, or another kind of run), ``-key`` for one
    only in the reference; a config section only one side has is one entry (``+imitation``, ``-consistency``)."""
    mine, ref = row.settings, reference.settings

    def section(k: str) -> str:
        return k.partition(".")[0] if "." in k else ""

    only_mine = {section(k) for k in mine} - {section(k) for k in ref}
    only_ref = {section(k) for k in ref} - {section(k) for k in mine}
    diff = [f"+{s}" for s in sorted(only_mine)] + [f"-{s}" for s in sorted(only_ref)]
    for k in sorted(mine.keys() | ref.keys()):
        if section(k) in only_mine | only_ref or mine.get(k) == ref.get(k):
            continue
        diff.append(f"{k}={mine[k]}" if k in mine and k in ref else f"+{k}={mine[k]}" if k in mine else f"-{k}")
    if diff:
        return ", ".join(diff)
    return "reference" if row.path == reference.path else "same settings"


HEADER = ["run", "seed", "changes against the first run", "valid sampled N@10", "valid full N@10",
          "test sampled N@10", "test full N@10", "best epoch", "epochs run", "wall min"]


def table_rows(rows: list[SweepRow]) -> list[list[str]]:
    def num(x: float | None, fmt: str = ".4f") -> str:
        return "–" if x is None else format(x, fmt)

    out = []
    for r in rows:
        wall = r.metrics.get("wall_time_s")
        out.append([str(r.path), str(r.info.get("train_config", {}).get("seed", r.metrics.get("seed", "–"))),
                    changes(r, rows[0]), *(num(r.ndcg(s, p)) for s, p in METRICS),
                    str(r.metrics.get("best_epoch", "–")), str(r.metrics.get("epochs_run", "–")),
                    num(wall / 60 if wall is not None else None, ".1f")])
    return out


def markdown(rows: list[SweepRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[SweepRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(HEADER)
    writer.writerows(table_rows(rows))
    return buf.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.sweep", description=__doc__.split("\n\n")[0],
                                epilog="Unfinished or unreadable folders are named on stderr and left out.")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="finished run folders; the first is the reference the others are compared with")
    p.add_argument("--md", type=Path, help="also write the markdown table here")
    p.add_argument("--csv", type=Path, help="also write the table as CSV here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[SweepRow] = []
    for d in args.run_dirs:
        try:
            rows.append(read_run(d))
        except SweepError as e:
            print(f"skipped: {e}", file=sys.stderr)
    if not rows:
        print("error: no finished run among the folders given", file=sys.stderr)
        return 2
    md = markdown(rows)
    print(md, end="")
    if args.md:
        args.md.write_text(md, encoding="utf-8")
    if args.csv:
        args.csv.write_text(csv_text(rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
