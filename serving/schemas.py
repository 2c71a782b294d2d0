"""Request and response bodies of the HTTP API (they are also the OpenAPI schema at /docs).

Request types are strict where JSON is: a count or an id must be a JSON number with an integral value
(``5``; ``"5"``, ``true`` and ``5.5`` are refused) and a flag a JSON boolean (``"yes"`` is refused).
``5.0`` is accepted as 5: JSON Schema, and so the OpenAPI schema, defines an integer as a number with a
zero fractional part, and the server must not refuse what its schema allows. Limits that depend on the
server's settings (``max_k``, history and candidate lengths, requests per batch) are checked by
``serving.engine`` and written into the OpenAPI schema by ``openapi_limits``, so that the schema states
what the server really accepts.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr
from pydantic_core import PydanticCustomError

from serving.config import MAX_K_LIMIT, Settings

# The largest integer every JSON reader holds exactly (I-JSON, RFC 7493: a double's 53-bit mantissa). A
# bound above it (say 2**63 - 1) becomes 2**63 in a double-based validator, so client and server would
# disagree about the values next to it. Raw item ids beyond it can be sent as strings ("5" and 5 are the
# same raw id).
JSON_INT_MAX = 2**53 - 1


_JSON_KINDS = {str: "a string", bool: "a boolean", type(None): "null", list: "an array", dict: "an object"}


def _json_number(value: Any) -> Any:
    """Refuse strings and booleans before pydantic's int parsing (which would read ``"5"`` as 5, ``true`` as 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("int_type", "Input should be a valid integer (a JSON number, not {kind})",
                                  {"kind": _JSON_KINDS.get(type(value), type(value).__name__)})
    return value


# Integers as JSON Schema has them: a JSON number with no fractional part, never a string or a boolean.
# Bounds go before the validator, so that pydantic writes them as JSON Schema minimum/maximum.
ItemInt = Annotated[int, Field(ge=-JSON_INT_MAX, le=JSON_INT_MAX), BeforeValidator(_json_number)]
K = Annotated[int, Field(ge=1, le=MAX_K_LIMIT), BeforeValidator(_json_number)]
UserId = Annotated[int, Field(ge=0, le=JSON_INT_MAX), BeforeValidator(_json_number)]
Count = Annotated[int, Field(ge=1, le=JSON_INT_MAX), BeforeValidator(_json_number)]
ItemId = ItemInt | Annotated[StrictStr, Field(max_length=256)]


class RecommendRequest(BaseModel):
    """One recommendation request. Item ids are the artifact's raw ids when it has an id map."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"history": [1, 2, 3], "k": 10}]})

    history: list[ItemId] = Field(
        description="required: the user's items, oldest first; only the most recent encoder.max_len feed the "
                    "model. Empty list: popularity ranking (fallback: true)",
    )
    k: K = Field(10, description="how many items to return (at most the server's max_k)")
    exclude_seen: StrictBool = Field(True, description="leave out items that are in the history")
    user_id: UserId | None = Field(
        None,
        description="model user index (dataset row + 1); 0 or absent = anonymous. Ignored by models without users",
    )
    candidates: Annotated[list[ItemId], Field(min_length=1)] | None = Field(
        None, description="rank only these items (at least one; duplicates are dropped); k is capped at their "
                          "number. Leave it out to rank the whole catalogue",
    )
    unknown_items: Literal["error", "ignore"] = Field(
        "error", description="unknown item ids: 'error' answers 422 naming them, 'ignore' drops them (counted)",
    )


class RecommendResponse(BaseModel):
    """Top-k items, best first, and their scores (inner products; popularity fallback: 1 / (1 + rank))."""

    items: list[int | str]
    scores: list[float]
    model: str = Field(description="version of the model that answered")
    fallback: bool = Field(description="true when the popularity ranking answered (empty history)")
    dropped_unknown: int | None = Field(None, description="unknown ids dropped (only with unknown_items='ignore')")


class RecommendBatchRequest(BaseModel):
    """Several recommendation requests answered in one call (each one is batched like a single call)."""

    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendRequest] = Field(min_length=1)


class RecommendBatchResponse(BaseModel):
    results: list[RecommendResponse]


class EvalRequest(BaseModel):
    """Offline metrics through the served path, on a dataset file of the server's data folder."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                         description="dataset name (e.g. beauty, lastfm), never a path")
    split: Literal["test", "valid"] = "test"
    protocol: Literal["sampled", "full"] = "sampled"
    limit_users: Count | None = Field(None, description="evaluate only the first users")


class EvalResponse(BaseModel):
    dataset: str
    split: str
    protocol: str
    users: int
    metrics: dict[str, float]
    expected: dict[str, float] | None = Field(None, description="the artifact's training-time metrics, when known")
    max_abs_diff: float | None = None
    matches: bool | None = Field(None, description="all metrics within tolerance of the expected ones")
    tolerance: float
    model: str
    seconds: float


class ReloadResponse(BaseModel):
    reloaded: bool
    previous: str | None
    model: str
    path: str = Field(description="the artifact folder, relative to the artifact root (e.g. hgn/<version>)")
    seconds: float


class ErrorResponse(BaseModel):
    """Every error answer: a short code and a readable message (never a traceback)."""

    error: str
    message: str
    details: list[dict[str, Any]] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [(400, "malformed request"), (408, "the request body did not arrive within body_timeout_s"),
                       (413, "request body too large"), (422, "invalid request"),
                       (503, "queue full or not ready (see Retry-After)")]
}

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "SSI_API_KEY is set and X-API-Key is missing or wrong"},
    403: {"model": ErrorResponse, "description": "no SSI_API_KEY: admin endpoints are refused, except for local "
                                                 "requests to a server bound to a loopback address"},
}


def openapi_limits(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Write the server's own limits into a generated OpenAPI schema (in place; returned for chaining)."""
    components = schema["components"]["schemas"]
    rec = components["RecommendRequest"]["properties"]
    rec["k"]["maximum"] = settings.max_k
    rec["history"]["maxItems"] = settings.max_history_len
    (array,) = [s for s in rec["candidates"]["anyOf"] if s.get("type") == "array"]
    array["maxItems"] = settings.max_candidates
    components["RecommendBatchRequest"]["properties"]["requests"]["maxItems"] = settings.max_batch_requests
    return schema
