"""POST /admin/reload: hot reload of the newest artifact."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from serving.routes import ServiceDep, require_api_key
from serving.schemas import ErrorResponse, ReloadResponse

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_api_key)])


@router.post("/reload", response_model=ReloadResponse,
             responses={401: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
                        422: {"model": ErrorResponse, "description": "the new artifact is bad; old one still serves"}})
async def reload(service: ServiceDep) -> ReloadResponse:
    """Load, verify and warm the newest artifact, then swap it in atomically."""
    return await service.reload()
