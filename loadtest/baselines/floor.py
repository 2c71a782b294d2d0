"""The HTTP floor: the same app and request schema as the real server, a fixed answer, no model.

Two modes:

- ``serving`` (the benchmark's floor): the real app, ``serving.app.create_app``, with everything it runs
  per request (the ``/recommend`` fast path: body limits, validation by the request models, orjson
  answers, error bodies, metrics; the middlewares, error handlers, health/metrics routes and lifespan of
  the rest), where only the answer is swapped: the service's ``recommend_many`` answers from a fixed
  ranking without touching the model, the queue or the index. What this server costs per request is the
  price of HTTP + validation + JSON in our stack: the floor under ours, whatever that stack is.
  Needs an artifact (``SSI_ARTIFACT_PATH``), because the app's lifespan loads one before it is ready.
- ``fastapi``: the same, with the ``/recommend`` fast path switched off: FastAPI's typed routes (request
  models in, response models out, routing, dependencies, middlewares) answer the fixed ranking. The floor
  of the benchmark runs before the fast path existed; the bench measures its CPU per request beside ours.
- ``standalone``: a minimal FastAPI app with the same request schema and no artifact (for tests and for
  the JSON/HTTP levers).

The fixed ranking is item 1, 2, 3, ... with fixed decreasing scores; seen items are skipped and candidates
honoured, so the load generator's checks pass unchanged.

    python -m loadtest.baselines.floor --mode standalone --num-items 3646 --port 8101

Settings for the app factory travel in environment variables (so ``--workers`` > 1 works):
``SSI_FLOOR_NUM_ITEMS``, ``SSI_FLOOR_MODE``, ``SSI_FLOOR_JSON``. The ``serving`` mode with one worker and the default
parser and loop runs under ``python -m serving``'s own HTTP server (``serving.server.uvicorn_config``), as ours does.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import ValidationError

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
    take_ranked,
)

MODEL = "floor"
FLOOR_PATHS = ("/recommend", "/recommend/batch")


class FixedRanker:
    """Answers every request from one fixed ranking of ``num_items`` items."""

    def __init__(self, num_items: int, max_k: int = 1000) -> None:
        if num_items < 1:
            raise ValueError("num_items must be >= 1")
        self.num_items = num_items
        self.order = range(1, num_items + 1)
        self.scores = [1.0 / (1 + r) for r in range(min(num_items, max_k) + 1)]

    def answer(self, req: RecommendRequest) -> dict[str, Any] | tuple[int, str]:
        """The answer body, or ``(status, message)`` for a request the real server would refuse."""
        history, unknown = split_known(req.history, self.num_items)
        cands: list[int] | None = None
        if req.candidates is not None:
            cands, unknown_c = split_known(req.candidates, self.num_items)
            unknown += unknown_c
            cands = dedupe(cands)
        if unknown and req.unknown_items == "error":
            return 422, f"unknown item ids: {unknown[:10]}"
        excluded = set(history) if req.exclude_seen else set()
        items = take_ranked(cands if cands is not None else self.order, req.k, excluded)
        out: dict[str, Any] = {"items": items, "scores": self.scores[: len(items)], "model": MODEL,
                               "fallback": not history}
        if req.unknown_items == "ignore":
            out["dropped_unknown"] = len(unknown)
        return out


def _standalone_app(ranker: FixedRanker, json_mode: str) -> FastAPI:
    app = FastAPI(title="HTTP floor (standalone)", docs_url=None, redoc_url=None)
    add_ops_routes(app, {"name": MODEL, "version": MODEL, "items": ranker.num_items})

    def respond(out: dict[str, Any] | tuple[int, str]) -> Response:
        if isinstance(out, tuple):
            return error_response(out[0], "unknown_items", out[1])
        return json_response(out)

    if json_mode == "orjson":
        # Parse with pydantic from raw bytes, answer with orjson: the cheapest FastAPI path.
        @app.post("/recommend")
        async def recommend(request: Request) -> Response:
            try:
                req = RecommendRequest.model_validate_json(await request.body())
            except ValidationError as e:
                return error_response(422, "validation_error", str(e.errors()[:3]))
            return respond(ranker.answer(req))

        @app.post("/recommend/batch")
        async def recommend_batch(request: Request) -> Response:
            try:
                body = RecommendBatchRequest.model_validate_json(await request.body())
            except ValidationError as e:
                return error_response(422, "validation_error", str(e.errors()[:3]))
            outs = [ranker.answer(r) for r in body.requests]
            bad = next((o for o in outs if isinstance(o, tuple)), None)
            return respond(bad) if bad else json_response({"results": outs})
    else:
        from serving.errors import ServingError

        @app.exception_handler(ServingError)
        async def serving_error(_: Request, exc: ServingError) -> Response:
            return json_response(exc.body(), exc.status)

        _add_model_routes(app, ranker)
    return app


def _add_model_routes(app: FastAPI, ranker: FixedRanker) -> None:
    """The real server's route shapes: FastAPI body models in, response models out."""
    from serving.errors import ServingError
    from serving.schemas import RecommendBatchResponse, RecommendResponse

    def one(req: RecommendRequest) -> RecommendResponse:
        out = ranker.answer(req)
        if isinstance(out, tuple):
            raise ServingError(out[0], "invalid_request", out[1])
        return RecommendResponse(**out)

    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        return one(req)

    @app.post("/recommend/batch", response_model=RecommendBatchResponse, response_model_exclude_none=True)
    async def recommend_batch(body: RecommendBatchRequest) -> RecommendBatchResponse:
        return RecommendBatchResponse(results=[one(r) for r in body.requests])


def _serving_app(ranker: FixedRanker) -> FastAPI:
    """The real app, whose service answers from the fixed ranking (its routes and per-request path unchanged)."""
    from serving.app import create_app as create_serving_app
    from serving.config import Settings
    from serving.errors import ServingError

    app = create_serving_app(Settings())

    async def recommend_many(reqs: list[RecommendRequest], label: str = "requests") -> list[dict[str, Any]]:
        out = []
        for i, req in enumerate(reqs):
            answer = ranker.answer(req)
            if isinstance(answer, tuple):
                where = f"{label}[{i}]: " if len(reqs) > 1 else ""
                raise ServingError(answer[0], "invalid_request", where + answer[1])
            answer["model"] = MODEL
            out.append(answer)
        return out

    app.state.service.recommend_many = recommend_many  # the fast path asks the service for its answers
    n_before = len(app.router.routes)
    _add_model_routes(app, ranker)  # the typed routes too (used only without the fast path), in front
    added = app.router.routes[n_before:]
    del app.router.routes[n_before:]
    app.router.routes[0:0] = added
    return app


def create_app(num_items: int | None = None, mode: str | None = None, json_mode: str | None = None) -> FastAPI:
    """The floor app (a factory for uvicorn; arguments default to ``SSI_FLOOR_*`` variables)."""
    n = num_items or int(os.environ.get("SSI_FLOOR_NUM_ITEMS", "1000"))
    mode = mode or os.environ.get("SSI_FLOOR_MODE", "standalone")
    json_mode = json_mode or os.environ.get("SSI_FLOOR_JSON", "model")
    ranker = FixedRanker(n)
    if mode == "serving":
        return _serving_app(ranker)
    if mode == "fastapi":
        app = _serving_app(ranker)
        app.fast_path = None  # type: ignore[attr-defined]  # FastAPI's routes answer (see the module docstring)
        return app
    if mode == "standalone":
        return _standalone_app(ranker, json_mode)
    raise ValueError(f"mode must be 'serving', 'fastapi' or 'standalone', got {mode!r}")


def main(argv: list[str] | None = None) -> None:
    p = cli("HTTP floor server: the real request schema, a fixed answer, no model (for the benchmark).",
            "python -m loadtest.baselines.floor")
    p.add_argument("--num-items", type=int, required=True, help="catalogue size (item ids 1..N)")
    p.add_argument("--mode", choices=("serving", "fastapi", "standalone"), default="standalone",
                   help="serving: the real app (needs SSI_ARTIFACT_PATH) answering a fixed ranking; fastapi: the "
                        "same through FastAPI's routes (no fast path); standalone: a minimal app, no artifact")
    p.add_argument("--json", dest="json_mode", choices=("model", "orjson"), default="model",
                   help="standalone only: model = FastAPI response models (as the real server); "
                        "orjson = raw bytes in, orjson out")
    args = p.parse_args(argv)
    os.environ.update(SSI_FLOOR_NUM_ITEMS=str(args.num_items), SSI_FLOOR_MODE=args.mode,
                      SSI_FLOOR_JSON=args.json_mode)
    if args.mode == "serving" and args.workers == 1 and args.http == "auto" and args.loop == "auto":
        serve_as_ours(args)
        return
    serve("loadtest.baselines.floor:create_app", args)


def serve_as_ours(args: argparse.Namespace) -> None:
    """The serving-mode floor under ``python -m serving``'s own HTTP server (``serving.server.uvicorn_config``: the
    same protocol class, with its header deadline and one write per response), so that only the answer differs."""
    import uvicorn

    from serving.config import Settings
    from serving.server import uvicorn_config

    if args.host != "localhost" and not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit(f"refusing to bind {args.host}: the reference servers listen on loopback only")
    settings = Settings(host=args.host, port=args.port, log_level=args.log_level)
    uvicorn.Server(uvicorn_config(create_app(args.num_items, "serving"), settings)).run()


if __name__ == "__main__":
    main()
