"""Teacher training throughput: one epoch of each teacher variant, side by side (not part of the tests).

    python -m training.bench [--dataset beauty] [--preset cpu] [--batches N] [--threads 1]

Every variant trains on the same cloze batches (same epoch rng); the consistency variants add their
augmentation and their extra encoder pass. Variants run interleaved, ``--chunk`` batches at a time,
so that load from other processes on a shared machine hits all of them alike. Prints a markdown table
of sequences per second (cloze sequences of the epoch / seconds of batch building + training steps)
and the slowdown against plain BERT4Rec.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from protocol import load_dataset
from training.teachers import PRESETS, VARIANTS, TeacherTask, build_teacher, resolve_setup


@dataclass
class Tally:
    batches: int = 0
    sequences: int = 0  # cloze rows
    task_rows: int = 0  # rows of the consistency pass
    build_s: float = 0.0  # batch building (masking + augmentation)
    step_s: float = 0.0  # forward + backward + clip + optimiser step

    @property
    def total_s(self) -> float:
        return self.build_s + self.step_s


class Runner:
    def __init__(self, task: TeacherTask, epoch: int, seed: int, grad_clip: float):
        self.task = task
        self.opt = torch.optim.Adam(task.parameters(), lr=1e-3)
        self.grad_clip = grad_clip
        self.it: Iterator[dict[str, torch.Tensor]] = task.batches(epoch, np.random.default_rng([seed, epoch]), 0, 1)
        self.tally = Tally()
        task.train()

    def step(self) -> bool:
        t0 = time.perf_counter()
        batch = next(self.it, None)
        t1 = time.perf_counter()
        if batch is None:
            return False
        loss = self.task(batch)["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.task.parameters(), self.grad_clip)
        self.opt.step()
        t2 = time.perf_counter()
        tl = self.tally
        tl.batches, tl.build_s, tl.step_s = tl.batches + 1, tl.build_s + t1 - t0, tl.step_s + t2 - t1
        tl.sequences += len(batch["input"])
        tl.task_rows += sum(len(v) for k, v in batch.items() if k.startswith(("task_input", "global_")))
        return True


def run(dataset: str, preset: str, variants: Sequence[str], max_batches: int | None, chunk: int,
        seed: int = 42, data_dir: str | None = None) -> dict[str, Tally]:
    ds = load_dataset(dataset, data_dir)
    runners: dict[str, Runner] = {}
    for v in variants:
        setup = resolve_setup(v, preset, ds.num_items, seed, progress=False)
        runners[v] = Runner(build_teacher(v, ds, setup), 1, seed, setup.train.grad_clip or 5.0)
    limit = max_batches or next(iter(runners.values())).task.num_batches(1)
    active = dict(runners)
    while active:
        for v, r in list(active.items()):
            for _ in range(chunk):
                if r.tally.batches >= limit or not r.step():
                    del active[v]
                    break
    return {v: r.tally for v, r in runners.items()}


def table(tallies: dict[str, Tally], base: str = "bert4rec") -> str:
    ref = tallies.get(base)
    rows = ["| variant | batches | sequences | task rows | batch build s | train s | total s | seq/s | time vs bert4rec |",
            "|---|---|---|---|---|---|---|---|---|"]
    for v, t in tallies.items():
        ratio = f"{t.total_s / ref.total_s * ref.sequences / t.sequences:.2f}x" if ref else "-"
        rows.append(f"| {v} | {t.batches} | {t.sequences} | {t.task_rows} | {t.build_s:.1f} | {t.step_s:.1f} | "
                    f"{t.total_s:.1f} | {t.sequences / t.total_s:.0f} | {ratio} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--preset", default="cpu", choices=PRESETS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batches", type=int, default=None, help="batches per variant (default: one epoch)")
    p.add_argument("--chunk", type=int, default=5, help="batches per variant per round (interleaving)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    tallies = run(args.dataset, args.preset, args.variants, args.batches, args.chunk, args.seed, args.data_dir)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nTeacher epoch throughput: {args.dataset}, preset {args.preset}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {load:.1f}, {time.time() - t0:.0f} s in all\n")
    print(table(tallies))


if __name__ == "__main__":
    main()
