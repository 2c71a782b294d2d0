"""HTTP routes, one module per area; shared dependencies live here."""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from serving.errors import ServingError
from serving.service import Service

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed when the server has an API key")


async def get_service(request: Request) -> Service:
    """The app's service. ``async`` on purpose: FastAPI runs a sync dependency in its thread pool, a thread
    hop on every request for a plain attribute read."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def require_api_key(request: Request, key: str | None = Security(api_key_header)) -> None:
    """401 unless the X-API-Key header matches the configured key (no key configured: open)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    if key is None or not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise ServingError(401, "unauthorized", "missing or wrong X-API-Key header",
                           headers={"WWW-Authenticate": "ApiKey"})
