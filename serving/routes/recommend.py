"""POST /recommend and /recommend/batch."""
from __future__ import annotations

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
    resp = await service.recommend(req)
    mark_handler_done(request.scope)
    return resp


@router.post("/recommend/batch", response_model=RecommendBatchResponse, response_model_exclude_none=True,
             responses=ERROR_RESPONSES)
async def recommend_batch(body: RecommendBatchRequest, service: ServiceDep,
                          request: Request) -> RecommendBatchResponse:
    """Several requests in one call; all are validated first (422 names the index of a bad one)."""
    mark_handler_start(request.scope, service.metrics)
    limit = service.settings.max_batch_requests
    if len(body.requests) > limit:
        raise bad_request(f"{len(body.requests)} requests in one call; at most {limit} are accepted")
    resp = RecommendBatchResponse(results=await service.recommend_many(body.requests))
    mark_handler_done(request.scope)
    return resp
