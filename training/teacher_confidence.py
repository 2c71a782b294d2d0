"""How sure is a finished run of the targets it was trained on, against the ones it was not (issue 25).

    python -m training.teacher_confidence --dataset beauty-top1500 --data-dir data \
        --run artifacts/probe/beauty-top1500/sasrec_ce_prefix/seed42 [--augment 0.2] [--json out.json]

A student imitates its teachers on the training histories, whose next items the teachers were trained to
predict. If a teacher recalls those targets, its distribution there is close to the one-hot label and there
is little to imitate beyond the label; ``ImitationConfig.augment`` asks it about corrupted histories instead.
This reads the run through its servable contract (``FrozenTeacher``: encode, then the item table) on:

- ``train``: every training target (``s[:-2]`` of each user, each prefix predicting its next item);
- ``train, augmented``: the same targets after swapping each history item for a uniform random item with
  probability ``--augment`` (seeded; what ``kd_aug`` shows the teachers);
- ``valid``: each user's validation item (history ``s[:-2]``), which the run never trained on.

Per row: the mean probability of the target, hit@10 and the mean entropy of the distribution, all over every
item (seen items are not excluded, unlike the served full ranking: the question is what a student is asked
to imitate, not what is served). Prints a markdown table; ``--json`` writes the rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from protocol import DataError, SequenceDataset, load_dataset, pad_left, train_sequences
from training.runs import RunError
from training.students import FrozenTeacher, corrupt_sequences, prefix_segments


@dataclass(frozen=True)
class Confidence:
    rows: str  # which examples
    examples: int
    p_target: float  # mean probability of the true next item
    hit_at_10: float  # share of examples whose target is among the 10 most probable items
    entropy: float  # mean entropy of the distribution (nats; ln N for uniform)


def training_examples(seqs: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """(E, width) left-padded histories and (E,) targets: every prefix of every sequence and its next item, as a
    sequence student's examples give them to its teachers (``prefix_segments``, ``Examples.teacher_histories``)."""
    ex = prefix_segments(seqs, width)
    targets = np.asarray([seqs[u][p] for u, p in zip(ex.teacher_users, ex.teacher_prefix)], dtype=np.int64)
    return ex.teacher_histories(seqs, width), targets


@torch.no_grad()
def confidence(teacher: FrozenTeacher, histories: np.ndarray, targets: np.ndarray, rows: str,
               batch_size: int = 4096) -> Confidence:
    q = teacher.encode(torch.from_numpy(histories))  # (E, D')
    p_t, hits, ent = [], [], []
    for i in range(0, len(q), batch_size):
        log_p = torch.log_softmax(q[i:i + batch_size] @ teacher.items.T, dim=-1)  # (b, N)
        lp_t = log_p.gather(1, torch.from_numpy(targets[i:i + batch_size] - 1).unsqueeze(1))  # (b, 1)
        p_t.append(lp_t.exp().squeeze(1))
        hits.append(((log_p > lp_t).sum(1) < 10).float())
        ent.append(-(log_p.exp() * log_p).sum(1))
    return Confidence(rows, len(targets), float(torch.cat(p_t).mean()), float(torch.cat(hits).mean()),
                      float(torch.cat(ent).mean()))


def measure(ds: SequenceDataset, run: Path, augment: float = 0.2, width: int = 50, seed: int = 0) -> list[Confidence]:
    teacher = FrozenTeacher.load(run.name, run, ds)
    seqs = train_sequences(ds)
    hist, targets = training_examples(seqs, width)
    noisy_seqs, _ = corrupt_sequences(seqs, augment, ds.num_items, torch.Generator().manual_seed(seed))
    noisy, _ = training_examples(noisy_seqs, width)
    valid_hist = pad_left([s[-width:] for s in seqs], width)
    valid_targets = np.asarray([s[-2] for s in ds.sequences], dtype=np.int64)
    return [confidence(teacher, hist, targets, "train"),
            confidence(teacher, noisy, targets, f"train, augmented {augment:g}"),
            confidence(teacher, valid_hist, valid_targets, "valid")]


def markdown(rows: list[Confidence]) -> str:
    out = ["| examples | n | mean p(target) | hit@10 | entropy |", "|---|---|---|---|---|"]
    out += [f"| {r.rows} | {r.examples} | {r.p_target:.4f} | {r.hit_at_10:.4f} | {r.entropy:.3f} |" for r in rows]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.teacher_confidence", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset", required=True, help="dataset name or sequence file, as the run was trained on")
    p.add_argument("--data-dir", default=None, help="folder of the dataset files")
    p.add_argument("--run", type=Path, required=True, help="a finished run folder (model_config.json + weights)")
    p.add_argument("--augment", type=float, default=0.2, help="swap probability of the augmented row (default 0.2)")
    p.add_argument("--width", type=int, default=50, help="history length given to the run (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmented row's draws")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if not 0.0 <= args.augment < 1.0:
        p.error(f"--augment must be in [0, 1), got {args.augment}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ds = load_dataset(args.dataset, args.data_dir)
        rows = measure(ds, args.run, args.augment, args.width, args.seed)
    except (DataError, RunError) as e:
        raise SystemExit(f"error: {e}") from None
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
