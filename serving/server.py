"""The HTTP server around the app: uvicorn, with a deadline for request headers.

uvicorn closes idle kept-alive connections (``timeout_keep_alive``) but sets no deadline on a request
whose headers never finish, nor on a new connection that sends nothing: each such client holds a
socket and a little memory for as long as it likes (slowloris). ``guarded_protocol`` adds that
deadline to uvicorn's own HTTP protocol class (httptools, else h11): the request line and headers must
arrive within ``header_timeout_s`` of the connection, or of the first byte of the next request on a
kept-alive one, else the server answers 408 and closes; and in at most ``max_header_bytes`` (431). The body has its own deadline in the app
(``RequestBodyMiddleware``, ``body_timeout_s``), so it holds under plain ``uvicorn serving.app:app`` too.

It also sends each response in one write (``CoalescingTransport``, setting ``coalesce_writes``): uvicorn writes the
status line and headers at ``http.response.start`` and the body at ``http.response.body``, two ``send`` calls
and two wake-ups of the client for one small JSON answer; the head is held until the body comes (or the end of
the loop turn, or ``close``) and both go out together.

``python -m serving``, the benchmark's floor and the tests build the server with ``uvicorn_config(app, settings)``.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from serving.config import Settings

log = logging.getLogger("serving.server")


def _raw_json_response(status: bytes, body: bytes) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection (written before any ASGI cycle exists)."""
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


TIMEOUT_RESPONSE = _raw_json_response(
    b"408 Request Timeout", b'{"error":"header_timeout","message":"the request headers did not arrive in time"}')
TOO_LARGE_RESPONSE = _raw_json_response(
    b"431 Request Header Fields Too Large",
    b'{"error":"headers_too_large","message":"the request line and headers are too large"}')


class CoalescingTransport:
    """A transport wrapper that sends a response head with the first write after it: one ``send`` per response.

    A write that starts with ``HTTP/1.`` while nothing is held is a response head (uvicorn writes the head alone,
    then the body): it is held and goes out with the next write (the body, or ``b""`` for an empty one), at the end
    of the current loop turn (a streamed body, ``HEAD``, ``100 Continue``), or before ``close``. Every other
    write goes straight through; every other attribute is the wrapped transport's."""

    __slots__ = ("_flush_handle", "_head", "_loop", "_transport")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._flush_handle.cancel()  # type: ignore[union-attr]
            self._transport.write(head + data)
        elif data[:7] == b"HTTP/1.":
            self._head = bytes(data)
            self._flush_handle = self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        head, self._head = self._head, None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeaderDeadline:
    """Mixin for uvicorn's HTTP protocols (``HttpToolsProtocol``, ``H11Protocol``): a deadline per request head.

    Both protocols create ``self.cycle`` when a request's headers are complete; a new cycle object after
    ``data_received`` means the head arrived. The deadline is armed when a connection opens and when
    bytes arrive while no request is in flight (the start of the next request), and dropped when the
    head is complete or the connection goes.
    """

    header_timeout_s: float = 10.0
    max_header_bytes: int = 65_536
    on_timeout: Callable[[], None] | None = None
    coalesce_writes: bool = True
    cycle: Any
    transport: Any
    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: Any) -> None:
        if self.coalesce_writes:
            transport = CoalescingTransport(transport, self.loop)
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self._head_deadline is None and (before is None or before.response_complete):
            self._arm_head_deadline()
        if self._head_deadline is not None:
            self._head_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:
            self._drop_head_deadline()
        elif self._head_deadline is not None and self._head_bytes > self.max_header_bytes:
            self._drop_head_deadline()  # still no complete head after this many bytes: refuse it
            if not self.transport.is_closing():
                self.transport.write(TOO_LARGE_RESPONSE)
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop_head_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_deadline(self) -> None:
        self._drop_head_deadline()
        self._head_bytes = 0
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _drop_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # no answer under way: say why before closing
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()
        if self.on_timeout is not None:
            self.on_timeout()


def guarded_protocol(header_timeout_s: float, max_header_bytes: int = 65_536,
                     on_timeout: Callable[[], None] | None = None,
                     base: type[asyncio.Protocol] = AutoHTTPProtocol,
                     coalesce_writes: bool = True) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (``base``) with a deadline and a size limit on request heads, and (by
    default) each response sent in one write (``CoalescingTransport``)."""
    attrs = {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes,
             "on_timeout": staticmethod(on_timeout) if on_timeout else None, "coalesce_writes": coalesce_writes}
    return type(f"HeaderDeadline{base.__name__}", (HeaderDeadline, base), attrs)


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of ``python -m serving``: host/port, timeouts for slow clients, no access log."""
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    on_timeout = metrics.slow_clients.labels(stage="headers").inc if metrics is not None else None
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level, "access_log": False,
        "http": guarded_protocol(settings.header_timeout_s, settings.max_header_bytes, on_timeout,
                                 coalesce_writes=settings.coalesce_writes),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        # h11's own head limit (it answers 400) above ours, so that both parsers answer 431 alike
        "h11_max_incomplete_event_size": 2 * settings.max_header_bytes,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
