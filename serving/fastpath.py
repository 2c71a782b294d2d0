"""``POST /recommend`` and ``POST /recommend/batch`` as plain ASGI handlers, in front of the FastAPI stack.

Every request pays for what its route needs and nothing else: the body is read within the limits
(``middleware.read_body``: 413, 408, 499), parsed with orjson and validated by pydantic-core (``parse_json``
+ ``RecommendRequest.model_validate``: the same model in the same mode as FastAPI, so the same rules, error
types and messages, the rules the OpenAPI schema states), answered by the service and written with orjson
(``serving.responses``), with the same error bodies, status codes, headers and metrics as the rest of the
app (``tests/serving/test_serving_fastpath.py`` compares both paths request by request). FastAPI still owns every other route, the
OpenAPI schema (the typed ``/recommend`` routes in ``serving.routes.recommend`` document these two and
answer only when this path is not installed) and the docs.

What this skips per request (``loadtest/README.md`` has the profiles): FastAPI's telemetry check, five
middleware layers, routing, dependency solving, the JSON decode into Python objects before validation, and
the response-model validation + serialisation of the answer.
"""
from __future__ import annotations

import email.message
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from serving.config import Settings
from serving.errors import ServingError, bad_request
from serving.metrics import ServingMetrics
from serving.middleware import read_body
from serving.responses import dumps, validation_error_body
from serving.schemas import RecommendBatchRequest, RecommendRequest

log = logging.getLogger("serving")
JSON_HEADERS = [(b"content-type", b"application/json")]
ENDPOINTS = ("/recommend", "/recommend/batch")


def is_json(headers: list[tuple[bytes, bytes]]) -> bool | None:
    """FastAPI's rule for a JSON body: ``application/json`` or ``application/*+json``; None: no content type."""
    value = None
    for name, v in headers:
        if name == b"content-type":
            value = v
            break
    if value is None:
        return None
    if value == b"application/json":  # the usual header, without parameters
        return True
    msg = email.message.Message()
    msg["content-type"] = value.decode("latin-1")
    if msg.get_content_maintype() != "application":
        return False
    sub = msg.get_content_subtype()
    return sub == "json" or sub.endswith("+json")


def parse_json(body: bytes) -> Any:
    """The body as Python values, as FastAPI reads it (``json.loads``), with orjson for speed: what orjson
    refuses and the standard library accepts (NaN, integers beyond 64 bits) is read by the latter; what both
    refuse is a ``json_invalid`` error (400)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise _Refused([{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error"}]) from e


class _Refused(Exception):
    """A request body refused before validation, as FastAPI refuses it (status and body)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid request body")
        self.errors = errors


class RecommendFastPath:
    """The two recommendation routes of one app. ``service()`` gives the object whose ``recommend_many``
    answers (the real ``Service``; the benchmark's floor swaps in a fixed answer)."""

    def __init__(self, service: Callable[[], Any], settings: Settings, metrics: ServingMetrics,
                 redact: Callable[[str], str]) -> None:
        self.service = service
        self.settings = settings
        self.metrics = metrics
        self.redact = redact

    async def __call__(self, scope: dict, receive: Any, send: Any, endpoint: str) -> None:
        start = time.perf_counter()
        status = 500
        try:
            status = await self._handle(scope, receive, send, endpoint, start)
        except Exception as e:
            log.error("unhandled error on POST %s: %r", endpoint, e, exc_info=e)
            status = await self._json(send, 500, {"error": "internal_error",
                                                  "message": "internal server error; see the server log"})
        finally:
            self.metrics.observe_request(endpoint, "POST", status, time.perf_counter() - start)

    async def _handle(self, scope: dict, receive: Any, send: Any, endpoint: str, start: float) -> int:
        s, m = self.settings, self.metrics
        refused, body = await read_body(scope, receive, send, s.max_body_bytes, s.body_timeout_s, m)
        if refused:
            return refused
        try:
            if not body:  # as FastAPI: no body at all -> the required body is missing
                raise _Refused([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
            if not is_json(scope.get("headers") or []):  # FastAPI validates the raw bytes then, which fails
                raise _Refused([{"type": "model_attributes_type", "loc": ("body",),
                                 "msg": "Input should be a valid dictionary or object to extract fields from"}])
            data = parse_json(body)
            if endpoint == "/recommend":
                req = RecommendRequest.model_validate(data, from_attributes=True)  # as FastAPI validates a body
                m.parse_seconds.observe(time.perf_counter() - start)
                (answer,) = await self.service().recommend_many([req])
                done = time.perf_counter()
                payload = dumps(answer)
            else:
                batch = RecommendBatchRequest.model_validate(data, from_attributes=True)
                m.parse_seconds.observe(time.perf_counter() - start)
                if len(batch.requests) > s.max_batch_requests:
                    raise bad_request(f"{len(batch.requests)} requests in one call; at most {s.max_batch_requests} "
                                      "are accepted")
                answers = await self.service().recommend_many(batch.requests)
                done = time.perf_counter()
                payload = dumps({"results": answers})
        except ValidationError as e:  # the loc as FastAPI writes it: under "body"
            status, err = validation_error_body([{**d, "loc": ("body", *d.get("loc", ()))} for d in e.errors()])
            return await self._json(send, status, err)
        except _Refused as e:
            status, err = validation_error_body(e.errors)
            return await self._json(send, status, err)
        except ServingError as e:
            err = e.body()
            err["message"] = self.redact(err["message"])
            return await self._json(send, e.status, err, e.headers)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]})
        m.serialize_seconds.observe(time.perf_counter() - done)
        await send({"type": "http.response.body", "body": payload})
        return 200

    @staticmethod
    async def _json(send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
        payload = dumps(body)
        raw = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
        return status
