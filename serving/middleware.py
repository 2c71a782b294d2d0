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


class RequestBodyMiddleware:
    """Reads the request body first, within limits, then replays it to the app.

    - size: at most ``max_bytes`` (413 beyond, whether declared by Content-Length or streamed);
    - time: the whole body within ``timeout_s`` of the headers (408 and ``Connection: close`` after),
      so that a client promising more bytes than it sends cannot hold the connection;
    - a client that goes away mid-upload gets no answer (the metrics count it as 499, client closed).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, metrics: ServingMetrics | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_json(send, 400, {"error": "bad_request", "message": "invalid Content-Length header"})
                return
            if size > self.max_bytes:
                await self._too_large(send)
                return
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            if self.metrics is not None:
                self.metrics.slow_clients.labels(stage="body").inc()
            await send_json(send, 408, {"error": "body_timeout",
                                        "message": f"the request body did not arrive within {self.timeout_s:g} s"},
                            headers={"Connection": "close"})
            return
        if body is None:  # client gone
            return
        if len(body) > self.max_bytes:
            await self._too_large(send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Any) -> bytes | None:
        """The body (stops counting past ``max_bytes``: a longer result means too large), or None on disconnect."""
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            chunks.append(chunk)
            if total > self.max_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Any) -> None:
        await send_json(send, 413, {"error": "body_too_large",
                                    "message": f"request body is larger than {self.max_bytes} bytes"})


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
