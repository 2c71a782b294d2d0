"""Pure ASGI middlewares: the request body (size limit 413, time limit 408) and per-endpoint request metrics."""
from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from serving.metrics import CLIENT_CLOSED, ServingMetrics

ASGIApp = Any
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


async def send_json(send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """Send a complete JSON response straight over ASGI."""
    payload = orjson.dumps(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


async def read_body(scope: dict, receive: Any, send: Any, max_bytes: int, timeout_s: float,
                    metrics: ServingMetrics | None = None) -> tuple[int, bytes]:
    """The request body within limits: ``(0, body)``; or ``(status, b"")`` when a 400 / 413 / 408 answer
    was sent here; or ``(CLIENT_CLOSED, b"")`` (499) when the client left mid-upload (nothing sent).

    - size: at most ``max_bytes`` (413 beyond, whether declared by Content-Length or streamed);
    - time: the whole body within ``timeout_s`` of the headers (408 and ``Connection: close`` after).
      The deadline is one timer that cancels this task (cheaper than ``asyncio.timeout`` per request).
    """
    declared = None
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            declared = value
            break
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            await send_json(send, 400, {"error": "bad_request", "message": "invalid Content-Length header"})
            return 400, b""
        if size > max_bytes:
            await _too_large(send, max_bytes)
            return 413, b""
    task = asyncio.current_task()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        if task is not None:
            task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        body = await _read(receive, max_bytes)
    except asyncio.CancelledError:
        if not expired or task is None or task.uncancel() > 0:
            raise  # cancelled from outside: pass it on
        if metrics is not None:
            metrics.slow_clients.labels(stage="body").inc()
        await send_json(send, 408, {"error": "body_timeout",
                                    "message": f"the request body did not arrive within {timeout_s:g} s"},
                        headers={"Connection": "close"})
        return 408, b""
    finally:
        timer.cancel()
    if body is None:
        return CLIENT_CLOSED, b""
    if len(body) > max_bytes:
        await _too_large(send, max_bytes)
        return 413, b""
    return 0, body


async def _read(receive: Any, max_bytes: int) -> bytes | None:
    """The body (stops counting past ``max_bytes``: a longer result means too large), or None on disconnect."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    if not message.get("more_body", False):  # the usual case: the whole body in one message
        return message.get("body", b"")
    chunks: list[bytes] = [message.get("body", b"")]
    total = len(chunks[0])
    while total <= max_bytes:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        total += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _too_large(send: Any, max_bytes: int) -> None:
    await send_json(send, 413, {"error": "body_too_large", "message": f"request body is larger than {max_bytes} bytes"})


class RequestBodyMiddleware:
    """Reads the request body first, within limits (``read_body``: 413, 408, 499), then replays it to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, metrics: ServingMetrics | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        refused, body = await read_body(scope, receive, send, self.max_bytes, self.timeout_s, self.metrics)
        if not refused:
            await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


STAGE_KEY = "ssi.timing"  # scope entry shared with the handlers: {"start": t, "handler_done": t}


def mark_handler_start(scope: dict, metrics: ServingMetrics) -> None:
    """Called first thing in a handler: everything since arrival was parsing (body, JSON, validation)."""
    timing = scope.get(STAGE_KEY)
    if timing is not None:
        metrics.parse_seconds.observe(time.perf_counter() - timing["start"])


def mark_handler_done(scope: dict) -> None:
    """Called when a handler has its result: what follows until the response starts is serialisation."""
    timing = scope.get(STAGE_KEY)
    if timing is not None:
        timing["handler_done"] = time.perf_counter()


class RequestMetricsMiddleware:
    """Counts requests and errors by endpoint (route template) and status, and times them; with
    ``mark_handler_start`` / ``mark_handler_done`` it also times the parse and serialise stages."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, known_paths: Callable[[], set[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self._known_paths = known_paths
        self._known: set[str] | None = None

    @property
    def known_paths(self) -> set[str]:
        """The app's route paths, read once on first use (every router is included by then). A request that
        ends before routing (413, 408, 499) is labelled by its path when it is one of these, else "other"."""
        if self._known is None:
            self._known = self._known_paths()
        return self._known

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        timing = scope[STAGE_KEY] = {"start": start}
        status: int | None = None
        client_gone = False

        async def receive_wrapper() -> dict:
            nonlocal client_gone
            message = await receive()
            if message["type"] == "http.disconnect":
                client_gone = True
            return message

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                done = timing.get("handler_done")
                if done is not None:
                    self.metrics.serialize_seconds.observe(time.perf_counter() - done)
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            if status is None:  # no answer: the client left first (nginx's 499), else the server failed
                status = CLIENT_CLOSED if client_gone else 500
            route = getattr(scope.get("route"), "path", None)
            endpoint = route or (scope["path"] if scope["path"] in self.known_paths else "other")
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            self.metrics.observe_request(endpoint, method, status, time.perf_counter() - start)


class LifespanMiddleware:
    """Answers the ASGI lifespan protocol itself, so that a bad artifact stops ``uvicorn serving.app:app``
    with one line (``cannot start: <path>: <problem>``) instead of a traceback."""

    def __init__(self, app: ASGIApp, startup: Callable[[], Awaitable[None]], shutdown: Callable[[], Awaitable[None]],
                 expected: tuple[type[BaseException], ...]) -> None:
        self.app = app
        self.startup = startup
        self.shutdown = shutdown
        self.expected = expected

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                failure = await self._run(self.startup)
                if failure is not None:
                    await send({"type": "lifespan.startup.failed", "message": failure})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                failure = await self._run(self.shutdown)
                await send({"type": "lifespan.shutdown.failed", "message": failure} if failure is not None
                           else {"type": "lifespan.shutdown.complete"})
                return

    async def _run(self, step: Callable[[], Awaitable[None]]) -> str | None:
        """None on success, else the message to report (one line for expected errors)."""
        try:
            await step()
        except self.expected as e:
            return f"cannot start: {e}"
        except Exception:  # noqa: BLE001 - anything else is a bug: report it in full
            return traceback.format_exc()
        return None
