"""An ensemble of finished runs as one recommender: the mean of their next-item distributions.

``p(j | h) = (1/K) sum_k softmax(encode_k(h) @ item_vectors_k().T)_j`` over all items, then the usual
protocol (sampled and full ranking) on ``log p``. This is the target a student imitates when it sums the
KL terms of K teachers: with weights lambda_k, ``sum_k lambda_k KL(p_k || q)`` differs from
``(sum_k lambda_k) KL(p_bar || q)`` only by a constant in the student, where ``p_bar`` is the
lambda-weighted mean of the ``p_k``. So the ensemble's own NDCG says how good the imitated
distribution is, and it is what must beat the student trained alone for imitation to pay.

Nothing is trained: the run folder gets ``run.json`` (the members) and ``metrics.json``, as any run.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocol import SequenceDataset, evaluate, load_or_create_negatives
from training.catalogue import CHOOSE_BY
from training.io import atomic_write_json, read_json
from training.runs import RunError, is_finished, load_run_model
from training.scoring import ContractScorer


class EnsembleScorer:
    """``protocol.Scorer`` over the log of the mean of K members' softmax distributions."""

    def __init__(self, scorers: list[ContractScorer]):
        if not scorers:
            raise ValueError("an ensemble needs at least one member")
        self.scorers = scorers

    def __call__(self, histories: np.ndarray, users: np.ndarray, candidates: np.ndarray | None) -> np.ndarray:
        mean: torch.Tensor | None = None
        for scorer in self.scorers:
            logits = torch.from_numpy(scorer(histories, users, None)[:, 1:])  # (B, N) items 1..N
            p = torch.softmax(logits.double(), dim=1)
            mean = p if mean is None else mean + p
        logp = torch.log(mean / len(self.scorers))  # (B, N)
        if candidates is not None:
            return logp.gather(1, torch.as_tensor(candidates, dtype=torch.long) - 1).numpy()  # (B, C)
        pad = torch.full((logp.shape[0], 1), float("-inf"), dtype=logp.dtype)
        return torch.cat([pad, logp], dim=1).numpy()  # (B, N + 1), column = item id


def evaluate_ensemble(members: list[Path], ds: SequenceDataset, run_dir: str | os.PathLike, resume: bool = True,
                      max_len: int = 50, batch_size: int = 256) -> dict[str, Any]:
    """Valid/test metrics (sampled and full) of the members' mean distribution, written to ``run_dir``."""
    run_dir = Path(run_dir)
    if resume and is_finished(run_dir):
        return read_json(run_dir / "metrics.json")
    t0 = time.time()
    scorers, names = [], []
    for d in members:
        model, info = load_run_model(d)
        if info.get("data_sha256") not in (None, ds.sha256):
            raise RunError(f"ensemble member {d} was trained on other data than {ds.name}")
        scorers.append(ContractScorer(model))
        names.append(str(d))
    scorer, negatives = EnsembleScorer(scorers), load_or_create_negatives(ds)
    metrics: dict[str, Any] = {
        split: {p: evaluate(scorer, ds, split, p, max_len=max_len, batch_size=batch_size, negatives=negatives)
                for p in ("sampled", "full")} for split in ("valid", "test")}
    metrics.update({"model": "ensemble", "members": names, "dataset": ds.name, "data_sha256": ds.sha256,
                    "negatives_sha256": negatives.sha256, "wall_time_s": round(time.time() - t0, 1)})
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", {"model": "ensemble", "members": names, "dataset": ds.name,
                                             "data_sha256": ds.sha256})
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


# ---- members chosen on validation ------------------------------------------------------------------------


def _member_scorer(run_dir: Path, ds: SequenceDataset) -> ContractScorer:
    model, info = load_run_model(run_dir)
    if info.get("data_sha256") not in (None, ds.sha256):
        raise RunError(f"ensemble member {run_dir} was trained on other data than {ds.name}")
    return ContractScorer(model)


def select_members(candidates: list[Path], ds: SequenceDataset, max_members: int = 4, max_len: int = 50,
                   batch_size: int = 256) -> tuple[list[Path], list[dict[str, Any]]]:
    """Greedy forward selection (Caruana et al., "Ensemble selection from libraries of models", ICML 2004),
    without replacement, on validation full-ranking NDCG@10: start empty, add the candidate whose mean
    distribution with the chosen ones scores best, stop when no addition improves or at ``max_members``.

    Returns the chosen run folders and one trace row per step (every candidate tried, the one kept). Test
    metrics are never read here."""
    if not candidates:
        raise ValueError("no candidate runs to choose ensemble members from")
    split, proto, metric = CHOOSE_BY
    negatives = load_or_create_negatives(ds)
    scorers = {d: _member_scorer(d, ds) for d in candidates}

    def score(members: list[Path]) -> float:
        ens = EnsembleScorer([scorers[m] for m in members])
        return evaluate(ens, ds, split, proto, max_len=max_len, batch_size=batch_size, negatives=negatives)[metric]

    chosen: list[Path] = []
    trace: list[dict[str, Any]] = []
    best = -np.inf
    while len(chosen) < max_members:
        tried = {d: score([*chosen, d]) for d in candidates if d not in chosen}
        if not tried:
            break
        pick, value = max(tried.items(), key=lambda kv: (kv[1], -candidates.index(kv[0])))
        if value <= best:
            break
        chosen.append(pick)
        best = value
        trace.append({"added": str(pick), "valid_full_ndcg@10": value, "tried": {str(d): v for d, v in tried.items()}})
    return chosen, trace


def selection_table(trace: list[dict[str, Any]]) -> str:
    md = ["| step | added | valid full N@10 of the ensemble so far |", "|---|---|---|"]
    md += [f"| {i} | `{row['added']}` | {row['valid_full_ndcg@10']:.4f} |" for i, row in enumerate(trace, 1)]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging
    import sys

    from protocol import DataError, load_dataset
    from protocol.data import resolve_data_dir

    p = argparse.ArgumentParser(prog="python -m training.ensemble",
                                description="Ensembles of finished runs (the mean of their next-item distributions).")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("select", help="choose members among finished runs on validation full NDCG@10 (greedy "
                                      "forward selection), then evaluate the ensemble into --out")
    s.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="candidate finished run folders")
    s.add_argument("--dataset", required=True, help="the runs' dataset (beauty, toys, lastfm or a NAME.txt)")
    s.add_argument("--data-dir", type=Path, default=None, help="data folder (default: the project's rule)")
    s.add_argument("--out", type=Path, required=True, help="run folder of the chosen ensemble")
    s.add_argument("--max-members", type=int, default=4)
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        ds = load_dataset(args.dataset, resolve_data_dir(args.data_dir))
        missing = [str(d) for d in args.runs if not is_finished(d)]
        if missing:
            raise RunError(f"not finished runs (no metrics.json): {', '.join(missing)}")
        chosen, trace = select_members(list(args.runs), ds, args.max_members)
        metrics = evaluate_ensemble(chosen, ds, args.out, resume=False)
    except (DataError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = read_json(args.out / "run.json")
    atomic_write_json(args.out / "run.json", {**info, "selection": {"by": ".".join(CHOOSE_BY), "steps": trace}})
    print(selection_table(trace))
    v, t = metrics["valid"]["full"]["ndcg@10"], metrics["test"]["full"]["ndcg@10"]
    print(f"{args.out}: {len(chosen)} members; valid full N@10 {v:.4f}, test full N@10 {t:.4f} "
          f"(sampled: valid {metrics['valid']['sampled']['ndcg@10']:.4f}, test {metrics['test']['sampled']['ndcg@10']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
