"""JSON bodies written straight to bytes: answers (``engine.to_answer``'s dicts of numpy arrays) and errors.

The recommendation answer is built by the server from values it has checked (ids from the catalogue,
finite float scores, the model version), so it is written with orjson directly instead of being validated
again against ``RecommendResponse`` on the way out; the tests check that every answer still validates
against that model and the OpenAPI schema. Numpy arrays are written by orjson itself
(``OPT_SERIALIZE_NUMPY``): float64 scores come out exactly as Python's ``repr`` of the same floats.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import orjson

MAX_ERRORS_LISTED = 5
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _fallback(obj: Any) -> Any:
    """What orjson does not write itself: numpy scalars and non-contiguous arrays."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(body: Any) -> bytes:
    """``body`` as JSON bytes (numpy arrays and scalars included)."""
    return orjson.dumps(body, default=_fallback, option=_OPTIONS)


def describe_validation(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A readable one-line message and JSON-safe details (no echo of the input, which may be huge)."""
    details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
               for e in errors]
    parts = [f"{'.'.join(d['loc']) or 'body'}: {d['msg']}" for d in details[:MAX_ERRORS_LISTED]]
    more = f" (and {len(details) - MAX_ERRORS_LISTED} more)" if len(details) > MAX_ERRORS_LISTED else ""
    return "; ".join(parts) + more, details[:50]


def validation_error_body(errors: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """(status, body) of a request that failed validation: 400 for a body that is not JSON, else 422."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, {"error": "malformed_json", "message": "request body is not valid JSON"}
    message, details = describe_validation(errors)
    return 422, {"error": "validation_error", "message": message, "details": details}
