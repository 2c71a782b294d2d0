"""``run_all.py --workers N``: train up to N runs of a plan at once, one process per run, sharing ``--out``.

For a machine where one run leaves most of it idle: the 16 cores of a GPU host around one GPU (these models
are small, so a run keeps the GPU mostly waiting on Python), or a many-core CPU box. Each worker is
``run_all.py ... --only DATASET/ROW/seedK`` with the parent's options: it trains exactly that run (the folder's
run lock still guards it) and writes no report. A run starts once the runs it imitates or averages are
finished; a failed run's dependants are skipped. With a time budget, no run starts after it and the running ones
are stopped (each resumes from its last epoch checkpoint next time). The parent writes the report afterwards.

This schedules processes on one machine and nothing more; DDP (``torchrun``) is the way to spread one run.
"""
from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from training.catalogue import Run

log = logging.getLogger("ssi.workers")


def run_key(run: Run) -> str:
    """``DATASET/ROW/seedK``: the name ``--only`` takes (a Figure 4 teacher's row carries its ``_L<n>``)."""
    return f"{run.dataset}/{run.name}/seed{run.seed}"


@dataclass
class PoolResult:
    finished: list[Run] = field(default_factory=list)
    failed: list[Run] = field(default_factory=list)  # exited without metrics.json (log named in the warning)
    skipped: list[Run] = field(default_factory=list)  # never started: a reference failed, or the budget ran out
    stopped: list[Run] = field(default_factory=list)  # running when the time budget ran out


def run_pool(runs: Sequence[Run], command: Callable[[Run], list[str]], references: Callable[[Run], list[Run]],
             is_done: Callable[[Run], bool], log_dir: Path, workers: int, time_budget_s: float | None = None,
             poll_s: float = 0.5) -> PoolResult:
    """Train the unfinished ``runs`` with up to ``workers`` processes ``command(run)`` at a time, in plan order
    among those whose ``references`` are done. Each process writes ``log_dir/<dataset>__<row>__seed<k>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = [r for r in runs if not is_done(r)]
    result = PoolResult()
    active: dict[Run, tuple[subprocess.Popen, Path]] = {}
    deadline = time.monotonic() + time_budget_s if time_budget_s else float("inf")
    bar = tqdm(total=len(pending), desc=f"runs ({workers} workers)", unit="run", dynamic_ncols=True, mininterval=5,
               disable=None)  # None: a bar on a terminal, none in a log
    while pending or active:
        lost = set(result.failed) | set(result.skipped)
        for r in [r for r in pending if any(ref in lost for ref in references(r))]:
            pending.remove(r)
            result.skipped.append(r)
            log.warning("%s skipped: a run it imitates or averages did not finish", run_key(r))
        ready = [r for r in pending if all(is_done(ref) for ref in references(r))]
        while ready and len(active) < workers and time.monotonic() < deadline:
            r = ready.pop(0)
            pending.remove(r)
            path = log_dir / (run_key(r).replace("/", "__") + ".log")
            with path.open("w", encoding="utf-8") as fh:
                active[r] = (subprocess.Popen(command(r), stdout=fh, stderr=subprocess.STDOUT), path)
        bar.set_postfix_str(f"{len(active)} running", refresh=False)
        if not active:
            break  # nothing runs and nothing can start: the budget is spent, or the rest waits on what failed
        time.sleep(poll_s)
        for r, (proc, path) in list(active.items()):
            if proc.poll() is None:
                continue
            del active[r]
            if proc.returncode == 0 and is_done(r):
                result.finished.append(r)
                bar.update(1)
                tqdm.write(f"finished {run_key(r)}")
            else:
                result.failed.append(r)
                tail = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
                log.error("%s failed (exit %s); log %s ends:\n  %s", run_key(r), proc.returncode, path,
                          "\n  ".join(tail))
        if time.monotonic() >= deadline and active:
            for proc, _ in active.values():
                proc.terminate()
            for r, (proc, _) in active.items():
                proc.wait()
                result.stopped.append(r)
            log.warning("time budget spent: stopped %s (each resumes from its last epoch checkpoint next time)",
                        ", ".join(run_key(r) for r in active))
            active.clear()
    result.skipped += pending
    bar.close()
    return result
