"""POST /recommend and /recommend/batch, typed: they state the API in the OpenAPI schema.

In the app they are answered by ``serving.fastpath`` (the same models and service, without FastAPI's
per-request machinery): these handlers run only in an app without that path, and give the same answers.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from serving.errors import bad_request
from serving.middleware import mark_handler_done, mark_handler_start
from serving.routes import ServiceDep
from serving.schemas import (
    ERROR_RESPONSES,
    RecommendBatchRequest,
    RecommendBatchResponse,
    RecommendRequest,
    RecommendResponse,
)

router = APIRouter(tags=["recommend"])


@router.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True,
             responses=ERROR_RESPONSES)
async def recommend(req: RecommendRequest, service: ServiceDep, request: Request) -> RecommendResponse:
    """Top-k items for a history (most recent last). Empty history: popularity ranking."""
    mark_handler_start(request.scope, service.metrics)
    (body,) = await service.recommend_many([req])
    mark_handler_done(request.scope)
    return _response(body)


@router.post("/recommend/batch", response_model=RecommendBatchResponse, response_model_exclude_none=True,
             responses=ERROR_RESPONSES)
async def recommend_batch(body: RecommendBatchRequest, service: ServiceDep,
                          request: Request) -> RecommendBatchResponse:
    """Several requests in one call; all are validated first (422 names the index of a bad one)."""
    mark_handler_start(request.scope, service.metrics)
    limit = service.settings.max_batch_requests
    if len(body.requests) > limit:
        raise bad_request(f"{len(body.requests)} requests in one call; at most {limit} are accepted")
    resp = RecommendBatchResponse(results=[_response(b) for b in await service.recommend_many(body.requests)])
    mark_handler_done(request.scope)
    return resp


def _response(body: dict[str, Any]) -> RecommendResponse:
    """An answer body (``engine.to_answer``) as the response model."""
    items = body["items"]
    return RecommendResponse(**{**body, "items": items.tolist() if hasattr(items, "tolist") else items,
                                "scores": [float(x) for x in body["scores"]]})
