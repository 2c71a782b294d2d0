"""A benchmark-only training run in seconds: a servable model with its initial (untrained) weights.

Serving cost does not depend on what the weights are, only on the architecture and sizes, so the
benchmark can measure the servers on a model that was never trained when no real run is at hand and
training a smoke model would take too long. The run folder has the layout of a real run (``run.json``,
``model_config.json``, ``model.safetensors``, ``metrics.json`` with the metrics actually measured on the
dataset for these weights, i.e. near chance), so ``python -m export`` and the naive server accept it.
``run.json`` says ``"untrained": true``; never serve such an artifact to users.

    python -m loadtest.baselines.untrained_run --dataset lastfm --model hgn --preset cpu --out artifacts/bench/runs-untrained
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path


def write_untrained_run(dataset: str, model_name: str, preset: str, out: Path, seed: int = 0,
                        data_dir: str | None = None) -> Path:
    """Build ``model_name`` for ``dataset`` with ``preset`` sizes, evaluate it, write a run folder; return it."""
    import torch

    from models import MODELS
    from protocol import evaluate, load_dataset, load_or_create_negatives
    from training.io import atomic_write_json
    from training.runs import save_best, write_model_config
    from training.scoring import ContractScorer

    if model_name not in MODELS:
        raise SystemExit(f"error: unknown model {model_name!r}; known: {', '.join(sorted(MODELS))}")
    ds = load_dataset(dataset, data_dir)
    neg = load_or_create_negatives(ds)
    cls = MODELS[model_name]
    sizes = {"num_items": ds.num_items}
    if getattr(cls, "uses_user", False):
        sizes["num_users"] = ds.num_users
    torch.manual_seed(seed)
    model = cls(cls.config_class.preset(preset, **sizes)).eval()
    run_dir = out / ds.name / model_name / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    save_best(model, run_dir)
    write_model_config(model, run_dir)
    atomic_write_json(run_dir / "run.json", {
        "model": model_name, "model_config": dataclasses.asdict(model.config), "dataset": ds.name,
        "data_sha256": ds.sha256, "negatives_sha256": neg.sha256, "seed": seed, "preset": preset,
        "untrained": True, "purpose": "serving benchmark only (initial weights)",
    })
    scorer = ContractScorer(model)
    metrics: dict = {split: {p: evaluate(scorer, ds, split, p, negatives=neg) for p in ("sampled", "full")}
                     for split in ("valid", "test")}
    metrics.update({"best_epoch": 0, "epochs_run": 0, "data_sha256": ds.sha256, "negatives_sha256": neg.sha256,
                    "dataset": ds.name, "model": model_name, "seed": seed,
                    "wall_time_s": round(time.time() - t0, 1), "device": "cpu", "untrained": True})
    atomic_write_json(run_dir / "metrics.json", metrics)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.baselines.untrained_run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="lastfm", help="dataset name")
    p.add_argument("--model", default="hgn", help="model name from the models registry (a servable student)")
    p.add_argument("--preset", default="cpu", choices=("smoke", "cpu", "paper"), help="model sizes")
    p.add_argument("--out", type=Path, required=True, help="runs folder (the run goes to <out>/<dataset>/<model>/seed<k>)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed")
    p.add_argument("--data-dir", default=None, help="data folder (default $SSI_DATA_DIR, else ./data)")
    args = p.parse_args(argv)
    print(write_untrained_run(args.dataset, args.model, args.preset, args.out, args.seed, args.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
