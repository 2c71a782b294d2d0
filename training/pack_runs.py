"""Pack a ``run_all --out`` folder for a size-capped trip back from a lent machine (``training/gpu_catalogue.sh``).

    python -m training.pack_runs RUNS OUT [--max-file-mb 15] [--max-total-mb 60] [--max-files 7]

Writes ``OUT/runs-meta.tar.gz`` (every finished run's metrics, history, run.json and model_config.json, plus the
workers' logs) and ``OUT/weights-K.tar`` archives of weights, each under ``--max-file-mb``, in this order until
``--max-total-mb`` or ``--max-files`` is reached:
  1. interrupted runs (``checkpoint.pt`` without ``metrics.json``): checkpoint and configs, to resume elsewhere;
  2. finished teachers and ensemble members (rows that other rows reference: ``sasrec_ce_prefix``, ``teacher_*``);
  3. the other finished runs, best validation full NDCG@10 first.
What did not fit is listed. Unpack with ``tar xzf runs-meta.tar.gz -C DIR`` and ``tar xf weights-K.tar -C DIR``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tarfile
from pathlib import Path

META = ("metrics.json", "metrics_anonymous.json", "history.json", "history.csv", "run.json", "model_config.json")


def is_reference_row(row: str) -> bool:
    return "--" not in row and row.startswith(("sasrec_ce_prefix", "sasrec_ce", "teacher_"))


def valid_full(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))["valid"]["full"]["ndcg@10"]


def pack(runs: Path, out: Path, max_file_mb: float, max_total_mb: float, max_files: int) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    finished = sorted(p.parent for p in runs.glob("*/*/seed*/metrics.json"))
    interrupted = sorted(p.parent for p in runs.glob("*/*/seed*/checkpoint.pt") if p.parent not in finished)
    with tarfile.open(out / "runs-meta.tar.gz", "w:gz") as tar:
        for d in finished:
            for name in META:
                if (d / name).is_file():
                    tar.add(d / name, arcname=str((d / name).relative_to(runs)))
        if (runs / "logs").is_dir():
            tar.add(runs / "logs", arcname="logs")
    groups = [(d, ["checkpoint.pt", "run.json", "model_config.json"]) for d in interrupted]
    refs = [d for d in finished if is_reference_row(d.parent.name)]
    groups += [(d, ["model.safetensors"]) for d in refs]
    groups += [(d, ["model.safetensors"]) for d in sorted(set(finished) - set(refs), key=valid_full, reverse=True)]
    lines: list[str] = []
    names: list[str] = []  # of the archive being written
    archives, size, total = 0, 0.0, 0.0
    cap = max_file_mb * 2**20
    with contextlib.ExitStack() as stack:
        current: tarfile.TarFile | None = None
        for d, group in groups:
            files = [d / n for n in group if (d / n).is_file()]
            n = sum(f.stat().st_size for f in files)
            new_archive = current is None or size + n > cap
            if not files or n > cap or total + n > max_total_mb * 2**20 or (new_archive and archives == max_files):
                lines.append(f"left behind: {d.relative_to(runs)} ({n / 2**20:.1f} MB)")
                continue
            if new_archive:
                archives += 1
                current = stack.enter_context(tarfile.open(out / f"weights-{archives}.tar", "w"))
                size = 0.0
            for f in files:
                current.add(f, arcname=str(f.relative_to(runs)))
                names.append(str(f.relative_to(runs)))
            size += n
            total += n
    lines.append(f"{len(finished)} finished and {len(interrupted)} interrupted runs; {len(names)} files of weights "
                 f"and checkpoints in {archives} archives ({total / 2**20:.1f} MB)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.pack_runs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, help="a run_all --out folder")
    p.add_argument("out", type=Path, help="where the archives go")
    p.add_argument("--max-file-mb", type=float, default=15)
    p.add_argument("--max-total-mb", type=float, default=60)
    p.add_argument("--max-files", type=int, default=7, help="at most this many weights archives")
    a = p.parse_args(argv)
    if not a.runs.is_dir():
        raise SystemExit(f"error: {a.runs}: no such folder")
    for line in pack(a.runs, a.out, a.max_file_mb, a.max_total_mb, a.max_files):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
