"""Operations: liveness, readiness, the loaded model, Prometheus metrics."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from serving.errors import ServingError
from serving.routes import ServiceDep
from serving.schemas import ErrorResponse
from serving.service import RETRY_AFTER_S

router = APIRouter(tags=["ops"])


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "alive"}


@router.get("/health/ready", responses={503: {"model": ErrorResponse}})
async def ready(service: ServiceDep) -> dict[str, str]:
    """Ready = the artifact is loaded and warmed and the worker is running."""
    if not service.ready:
        raise ServingError(503, "not_ready", "model not loaded and warmed yet", headers={"Retry-After": RETRY_AFTER_S})
    return {"status": "ready", "model": service.current().version}


@router.get("/model", responses={503: {"model": ErrorResponse}})
async def model(service: ServiceDep) -> dict[str, Any]:
    """Manifest summary, ONNX Runtime providers in use, index type and device, batching figures."""
    return service.describe()


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)
