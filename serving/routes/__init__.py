"""HTTP routes, one module per area; shared dependencies live here."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from serving.evaluation import Evaluator
from serving.security import AdminPolicy
from serving.service import Service

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="the server's SSI_API_KEY (admin endpoints; see the README's "
                                          "'Security and limits')")


async def get_service(request: Request) -> Service:
    """The app's service. ``async`` on purpose: FastAPI runs a sync dependency in its thread pool, a thread
    hop on every request for a plain attribute read."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def get_evaluator(request: Request) -> Evaluator:
    """The app's /eval runner (``serving.evaluation``)."""
    return request.app.state.evaluator


EvaluatorDep = Annotated[Evaluator, Depends(get_evaluator)]


async def require_admin(request: Request, key: str | None = Security(api_key_header)) -> None:
    """The admin rule (``serving.security``): the key when one is set; without one, 403 unless the server
    binds a loopback address and the request is a local one."""
    policy: AdminPolicy = request.app.state.admin
    policy.check(request.scope, key)
