"""Request and response bodies of the HTTP API (they are also the OpenAPI schema at /docs)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from serving.config import MAX_K_LIMIT

INT64_MAX = 2**63 - 1
ItemId = Annotated[StrictInt, Field(ge=-INT64_MAX, le=INT64_MAX)] | Annotated[StrictStr, Field(max_length=256)]


class RecommendRequest(BaseModel):
    """One recommendation request. Item ids are the artifact's raw ids when it has an id map."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"history": [1, 2, 3], "k": 10}]})

    history: list[ItemId] = Field(
        default_factory=list,
        description="the user's items, oldest first; only the most recent encoder.max_len feed the model. "
                    "Empty: popularity ranking (fallback: true)",
    )
    k: int = Field(10, ge=1, le=MAX_K_LIMIT, description="how many items to return (at most the server's max_k)")
    exclude_seen: bool = Field(True, description="leave out items that are in the history")
    user_id: int | None = Field(
        None, ge=0, le=INT64_MAX,
        description="model user index (dataset row + 1); 0 or absent = anonymous. Ignored by models without users",
    )
    candidates: list[ItemId] | None = Field(
        None, description="rank only these items (duplicates are dropped); k is capped at their number",
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
    limit_users: int | None = Field(None, ge=1, le=INT64_MAX, description="evaluate only the first users")


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
    path: str
    seconds: float


class ErrorResponse(BaseModel):
    """Every error answer: a short code and a readable message (never a traceback)."""

    error: str
    message: str
    details: list[dict[str, Any]] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [(400, "malformed request"), (413, "request body too large"),
                       (422, "invalid request"), (503, "queue full or not ready (see Retry-After)")]
}
