"""POST /admin/reload: hot reload of the newest artifact."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from serving.routes import ServiceDep, require_admin
from serving.schemas import ADMIN_RESPONSES, ErrorResponse, ReloadResponse

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/reload", response_model=ReloadResponse,
             responses={**ADMIN_RESPONSES, 409: {"model": ErrorResponse},
                        422: {"model": ErrorResponse, "description": "the new artifact is bad; old one still serves"}})
async def reload(service: ServiceDep) -> ReloadResponse:
    """Load, verify and warm the newest artifact, then swap it in atomically."""
    return await service.reload()
