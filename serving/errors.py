"""Errors that become JSON answers: ``{"error": code, "message": text, ...}``, never a traceback."""
from __future__ import annotations

from typing import Any


class ServingError(Exception):
    """An error with its HTTP status, a short code and a message meant for the client."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


def bad_request(message: str, **extra: Any) -> ServingError:
    """422: the request is well-formed JSON but cannot be answered as asked."""
    return ServingError(422, "invalid_request", message, **extra)
