"""The FastAPI application: the factory ``create_app(settings)``.

    uvicorn --factory serving.app:create_app     # settings from SSI_* variables
    uvicorn serving.app:app                      # the same: ``app`` is built on first access

Importing this module builds nothing: ``app`` is made by the module's ``__getattr__`` the first time it is
asked for (by uvicorn), so tests, tools and ``python -m serving`` build their own apps with their own
settings. At startup (ASGI lifespan) the artifact is loaded, verified and warmed before the server reports
ready, unless a ``ModelState`` loaded beforehand is passed (as ``python -m serving`` does). A bad
artifact stops the server with one line naming the file and the problem.
"""
from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.artifact import ArtifactError
from serving.config import Settings
from serving.engine import ModelState
from serving.errors import ServingError
from serving.evaluation import Evaluator
from serving.fastpath import ENDPOINTS, RecommendFastPath
from serving.metrics import ServingMetrics
from serving.middleware import LifespanMiddleware, RequestBodyMiddleware, RequestMetricsMiddleware
from serving.responses import validation_error_body
from serving.routes import admin, health, recommend
from serving.routes import eval as eval_routes
from serving.schemas import openapi_limits
from serving.security import AdminPolicy, PathRedactor
from serving.service import Service

log = logging.getLogger("serving")
DESCRIPTION = """Sequential recommendations from an SSI student model (ONNX encoder + FAISS item index).

Item ids are the artifact's raw ids when it ships an id map, else 1..N. Every error is a JSON body
`{"error": code, "message": text}`."""


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def install_error_handlers(app: FastAPI, redact: PathRedactor) -> None:
    """Every error becomes ``{"error", "message"}`` JSON; nothing leaks a traceback or a server path."""

    @app.exception_handler(ServingError)
    async def serving_error(_: Request, exc: ServingError) -> Response:
        body = exc.body()
        body["message"] = redact(body["message"])
        return json_response(exc.status, body, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return json_response(*validation_error_body(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return json_response(exc.status_code, {"error": code, "message": str(exc.detail)},
                             dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc, exc_info=exc)
        return json_response(500, {"error": "internal_error", "message": "internal server error; see the server log"})


class ServingApp(FastAPI):
    """FastAPI, with ``POST /recommend`` and ``POST /recommend/batch`` answered by ``serving.fastpath`` before
    the FastAPI stack (no telemetry check, middleware layers, routing or dependency solving per request).
    Everything else, the OpenAPI schema and the docs are FastAPI's."""

    fast_path: RecommendFastPath | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        fast = self.fast_path
        if fast is not None and scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            if path in ENDPOINTS:
                await fast(scope, receive, send, path)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, state: ModelState | None = None) -> FastAPI:
    """Build the app. The model is loaded in the lifespan (or ``state`` is used when given)."""
    settings = settings or Settings()
    metrics = ServingMetrics()
    service = Service(settings, metrics)
    evaluator = Evaluator(settings, metrics, service)

    app = ServingApp(title="SSI sequential recommender", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    app.state.service = service
    app.state.evaluator = evaluator
    app.state.metrics = metrics
    app.state.admin = admin_policy = AdminPolicy.from_settings(settings)
    redact = PathRedactor.for_settings(settings)
    install_error_handlers(app, redact)
    app.fast_path = RecommendFastPath(lambda: app.state.service, settings, metrics, redact)
    for module in (recommend, eval_routes, admin, health):
        app.include_router(module.router)
    _state_limits_in_openapi(app, settings)
    app.add_middleware(RequestBodyMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s,
                       metrics=metrics)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, known_paths=lambda: _route_paths(app))

    async def startup() -> None:
        log.log(logging.INFO if admin_policy.mode == "key" else logging.WARNING, admin_policy.describe())
        await service.start(preloaded=state)

    app.add_middleware(LifespanMiddleware, startup=startup, shutdown=service.stop,
                       expected=(ArtifactError, RuntimeError, OSError))
    return app


def _route_paths(app: FastAPI) -> set[str]:
    """Every path the app serves (routers included under their prefix, as the OpenAPI schema lists them)."""
    return set(app.openapi()["paths"]) | {path for r in app.routes if (path := getattr(r, "path", None))}


def _state_limits_in_openapi(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI schema with this server's limits (max_k, list lengths), generated once on first use."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_limits(generate(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def __getattr__(name: str) -> Any:
    """``serving.app.app`` for ``uvicorn serving.app:app``: built with ``Settings()`` on first access, then kept."""
    if name == "app":
        built = globals()["app"] = create_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
