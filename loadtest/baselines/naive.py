"""The naive server: FastAPI + the torch model in eager mode, full scoring and a full argsort per request.

What a first version of a model server usually looks like: a synchronous handler per request, no
batching, no ONNX, no index: rebuild the model from the training run (``training.runs.load_run_model``),
then for every request encode the padded history, score all N items (``query @ item_vectors.T``), mask,
``argsort`` all N scores and take the top k. Same request schema and answers as the real server, so the
same traffic and checks apply.

    python -m loadtest.baselines.naive --run-dir artifacts/runs-smoke/lastfm/hgn/seed0 --port 8102

It imports torch and the model code, which the real server never does; it exists only for the benchmark.
Configuration for the app factory travels in ``SSI_NAIVE_RUN_DIR`` / ``SSI_DATA_DIR``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Response

from loadtest.baselines.common import (
    RecommendBatchRequest,
    RecommendRequest,
    add_ops_routes,
    cli,
    dedupe,
    error_response,
    json_response,
    serve,
    split_known,
)


class NaiveRecommender:
    """Eager torch scoring of every item for each request."""

    def __init__(self, run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> None:
        import torch

        from training.runs import load_run_model

        self.torch = torch
        self.model, info = load_run_model(run_dir)
        self.model.eval()
        cfg = self.model.config
        self.num_items = int(cfg.num_items)
        self.max_len = int(cfg.max_len)
        self.uses_user = bool(getattr(self.model, "uses_user", False))
        self.num_users = int(getattr(cfg, "num_users", 0) or 0)
        with torch.no_grad():
            self.item_table = self.model.item_vectors().detach()  # (N, D')
        self.version = f"naive-{info.get('model', getattr(self.model, 'model_name', 'model'))}"
        self.popularity = self._popularity(info, data_dir)

    def _popularity(self, info: dict[str, Any], data_dir: str | os.PathLike | None) -> list[int]:
        """Item ids by training-part frequency (the fallback for an empty history); ids order if no data."""
        name = (info.get("dataset") or {}).get("name") if isinstance(info.get("dataset"), dict) else info.get("dataset")
        counts = np.zeros(self.num_items + 1, dtype=np.int64)
        if name:
            try:
                from protocol import load_dataset, train_sequences

                for s in train_sequences(load_dataset(name, data_dir)):
                    np.add.at(counts, s[s <= self.num_items], 1)
            except Exception as e:  # noqa: BLE001 - no data: fall back to id order
                print(f"naive: no popularity from dataset {name!r} ({e}); using id order", flush=True)
        counts[0] = -1
        return [int(i) for i in np.argsort(-counts, kind="stable") if i != 0]

    def answer(self, req: RecommendRequest) -> dict[str, Any] | Response:
        torch = self.torch
        history, unknown = split_known(req.history, self.num_items)
        cands: list[int] | None = None
        if req.candidates is not None:
            cands, unknown_c = split_known(req.candidates, self.num_items)
            unknown += unknown_c
            cands = dedupe(cands)
        if unknown and req.unknown_items == "error":
            return error_response(422, "unknown_items", f"unknown item ids: {unknown[:10]}")
        extra = {"dropped_unknown": len(unknown)} if req.unknown_items == "ignore" else {}
        if not history:  # cold start: popularity
            excluded: set[int] = set()
            order = cands if cands is not None else self.popularity
            if cands is not None:
                rank = {i: r for r, i in enumerate(self.popularity)}
                order = sorted(cands, key=lambda i: rank.get(i, len(rank)))
            items = [i for i in order if i not in excluded][: req.k]
            return {"items": items, "scores": [1.0 / (1 + r) for r in range(len(items))],
                    "model": self.version, "fallback": True, **extra}
        h = torch.zeros((1, self.max_len), dtype=torch.int64)
        recent = history[-self.max_len:]
        h[0, self.max_len - len(recent):] = torch.tensor(recent, dtype=torch.int64)
        user = None
        if self.uses_user:
            uid = req.user_id or 0
            user = torch.tensor([uid if 0 <= uid <= self.num_users else 0], dtype=torch.int64)
        with torch.no_grad():
            q = self.model.encode(h, user)  # (1, D')
            scores = (q @ self.item_table.T)[0]  # (N,) for item ids 1..N
        if req.exclude_seen:
            scores[torch.tensor(sorted(set(history)), dtype=torch.int64) - 1] = -float("inf")
        if cands is not None:
            mask = torch.full_like(scores, -float("inf"))
            idx = torch.tensor(cands, dtype=torch.int64) - 1
            mask[idx] = scores[idx]
            scores = mask
        order = torch.argsort(scores, descending=True)[: req.k]
        top = scores[order]
        keep = torch.isfinite(top)
        return {"items": (order[keep] + 1).tolist(), "scores": top[keep].tolist(), "model": self.version,
                "fallback": False, **extra}


def create_app(run_dir: str | None = None, data_dir: str | None = None) -> FastAPI:
    """The naive app (factory for uvicorn)."""
    rec = NaiveRecommender(run_dir or os.environ["SSI_NAIVE_RUN_DIR"], data_dir or os.environ.get("SSI_DATA_DIR"))
    app = FastAPI(title="naive torch server", docs_url=None, redoc_url=None)
    add_ops_routes(app, {"name": "naive", "version": rec.version, "items": rec.num_items})

    # Plain synchronous handlers: FastAPI runs them in its thread pool, one request at a time each.
    @app.post("/recommend")
    def recommend(req: RecommendRequest) -> Response:
        out = rec.answer(req)
        return out if isinstance(out, Response) else json_response(out)

    @app.post("/recommend/batch")
    def recommend_batch(batch: RecommendBatchRequest) -> Response:
        results = []
        for r in batch.requests:
            out = rec.answer(r)
            if isinstance(out, Response):
                return out
            results.append(out)
        return json_response({"results": results})

    return app


def main(argv: list[str] | None = None) -> None:
    p = cli("Naive server: eager torch model, full scoring + argsort per request, no batching (for the benchmark).",
            "python -m loadtest.baselines.naive")
    p.add_argument("--run-dir", type=Path, required=True, help="finished training run (model_config.json + model.safetensors)")
    p.add_argument("--data-dir", default=None, help="data folder for the popularity fallback (default $SSI_DATA_DIR)")
    args = p.parse_args(argv)
    os.environ["SSI_NAIVE_RUN_DIR"] = str(args.run_dir)
    if args.data_dir:
        os.environ["SSI_DATA_DIR"] = args.data_dir
    serve("loadtest.baselines.naive:create_app", args)


if __name__ == "__main__":
    main()
