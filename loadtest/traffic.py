"""Realistic request traffic for the recommender, and the checks every response must pass.

Requests are drawn from a dataset's test histories (``protocol.eval_examples(ds, "test")``): each request
takes the most recent ``n`` items of one user's test input, with ``n`` drawn log-uniformly between 1 and
``max_history`` so that short and long histories both occur. A configurable share of the requests is
anonymous (no ``user_id``), asks for ``exclude_seen``, restricts the answer to a candidate list, or goes
to the batch endpoint.

The pool of requests is built once, serialised once (so the load generator spends its CPU on HTTP, not on
JSON encoding), and each prepared request carries what a correct answer must look like, so that every
response is checked: status, shape, types, ``k`` items (or fewer only when fewer exist), ids in range, no
duplicates, scores sorted, seen items absent when excluded, items within the candidates when given.

Configuration is ``TrafficConfig``, read from ``SSI_LOADTEST_*`` environment variables (so that locust's
worker processes see it; ``TrafficConfig.to_env`` writes them) and, in the commands, from flags.
"""
from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from loadtest.settings import ENV_PREFIX, LoadtestSettings  # noqa: F401 - ENV_PREFIX re-exported

RECOMMEND_PATH = "/recommend"
BATCH_PATH = "/recommend/batch"


class TrafficConfig(LoadtestSettings):
    """What the traffic looks like. Every field is read from ``SSI_LOADTEST_<FIELD>`` and, in
    ``python -m loadtest.run`` / ``loadtest.bench``, from a ``--kebab-case`` flag (``loadtest.settings``)."""

    dataset: str = Field("lastfm", description="dataset whose test histories make the requests")
    data_dir: str | None = Field(
        None, description="data folder (none: protocol.data.resolve_data_dir, i.e. $SSI_DATA_DIR, ./data, ...)")
    split: Literal["valid", "test"] = Field("test", description="which inputs of the leave-one-out split")
    k: int = Field(10, ge=1, description="items per answer")
    anonymous_share: float = Field(0.3, ge=0.0, le=1.0, description="share of requests without user_id")
    exclude_seen_share: float = Field(0.5, ge=0.0, le=1.0, description="share of requests with exclude_seen")
    candidates_share: float = Field(0.1, ge=0.0, le=1.0, description="share of requests with a candidate list")
    batch_share: float = Field(0.05, ge=0.0, le=1.0, description="share of calls to /recommend/batch")
    cold_share: float = Field(0.02, ge=0.0, le=1.0,
                              description="share of cold-start requests (empty history: the popularity fallback)")
    unknown_share: float = Field(0.02, ge=0.0, le=1.0,
                                 description="share of requests with one unknown item id and unknown_items=ignore")
    batch_size: int = Field(8, ge=1, description="requests per batch call")
    num_candidates: int = Field(100, ge=1, description="candidates per candidate-list request")
    max_history: int = Field(200, ge=1, description="longest history sent")
    pool_size: int = Field(2000, ge=1, description="prepared requests (drawn at random for every call)")
    seed: int = Field(0, description="seed of the request pool")
    rate_per_user: float = Field(
        0.0, ge=0.0, description="requests per second per simulated user (locust constant_throughput); 0 = closed loop")
    check: Literal["full", "shape"] = Field(
        "full", description="answer checks: full, or shape = status, types, lengths and sortedness only")


@dataclass(frozen=True)
class Expectation:
    """What a correct answer to one recommendation request looks like."""

    k: int
    num_items: int
    #: Items that must not appear (the history, when ``exclude_seen``); empty otherwise.
    excluded: frozenset[int] = frozenset()
    #: When the request restricts the answer to candidates: the allowed items.
    candidates: frozenset[int] | None = None
    #: Empty history: the answer must be the popularity fallback.
    fallback: bool = False
    #: With ``unknown_items="ignore"``: how many ids the answer must report as dropped.
    dropped_unknown: int | None = None

    @property
    def expected_len(self) -> int:
        """``k``, or fewer only when fewer items are eligible."""
        if self.candidates is not None:
            available = len(self.candidates - self.excluded)
        else:
            available = self.num_items - sum(1 for i in self.excluded if 1 <= i <= self.num_items)
        return min(self.k, available)


@dataclass(frozen=True)
class PreparedRequest:
    """One serialised request with the expectations for its answer(s)."""

    path: str
    name: str
    body: bytes
    expect: tuple[Expectation, ...]
    payload: dict = field(compare=False, repr=False, default_factory=dict)

    @property
    def is_batch(self) -> bool:
        return self.path == BATCH_PATH


def sample_length(rng: random.Random, available: int, max_history: int) -> int:
    """A history length in ``[1, min(available, max_history)]``, log-uniform (many short, some long)."""
    hi = max(1, min(available, max_history))
    if hi == 1:
        return 1
    return max(1, min(hi, round(math.exp(rng.uniform(0.0, math.log(hi))))))


def build_single(
    rng: random.Random,
    history: list[int],
    user_id: int | None,
    target: int | None,
    cfg: TrafficConfig,
    num_items: int,
) -> tuple[dict, Expectation]:
    """One ``/recommend`` payload from a user's history, and what its answer must satisfy.

    ``user_id`` is the model's user index (dataset row + 1); it is sent unless the request is anonymous.
    """
    if rng.random() < cfg.cold_share:
        hist: list[int] = []
    else:
        n = sample_length(rng, len(history), cfg.max_history)
        hist = [int(i) for i in history[-n:]]
    exclude_seen = rng.random() < cfg.exclude_seen_share
    payload: dict[str, Any] = {"history": hist, "k": cfg.k, "exclude_seen": exclude_seen}
    if user_id is not None and rng.random() >= cfg.anonymous_share:
        payload["user_id"] = int(user_id)
    dropped: int | None = None
    if hist and rng.random() < cfg.unknown_share:
        payload["history"] = hist + [num_items + 1 + rng.randint(0, 10**6)]
        payload["unknown_items"] = "ignore"
        dropped = 1
    candidates: frozenset[int] | None = None
    if rng.random() < cfg.candidates_share:
        c = min(cfg.num_candidates, num_items)
        pool = set()
        if target is not None and 1 <= target <= num_items:
            pool.add(int(target))
        while len(pool) < c:
            pool.add(rng.randint(1, num_items))
        cand_list = sorted(pool)
        rng.shuffle(cand_list)
        payload["candidates"] = cand_list
        candidates = frozenset(cand_list)
    excluded = frozenset(hist) if exclude_seen else frozenset()
    return payload, Expectation(k=cfg.k, num_items=num_items, excluded=excluded, candidates=candidates,
                                fallback=not hist, dropped_unknown=dropped)


def _dumps(obj: Any) -> bytes:
    try:
        import orjson

        return orjson.dumps(obj)
    except ImportError:  # pragma: no cover - orjson is a dependency
        return json.dumps(obj, separators=(",", ":")).encode()


def build_pool_from_histories(
    histories: list[list[int]],
    user_ids: list[int] | None,
    targets: list[int] | None,
    num_items: int,
    cfg: TrafficConfig,
) -> list[PreparedRequest]:
    """Build ``cfg.pool_size`` prepared requests from plain histories (no dataset file needed)."""
    if not histories:
        raise ValueError("no histories to draw requests from")
    rng = random.Random(cfg.seed)
    pool: list[PreparedRequest] = []
    usable = [i for i, h in enumerate(histories) if len(h) > 0]
    if not usable:
        raise ValueError("every history is empty")

    def one() -> tuple[dict, Expectation]:
        u = rng.choice(usable)
        return build_single(
            rng, list(histories[u]), None if user_ids is None else user_ids[u],
            None if targets is None else targets[u], cfg, num_items,
        )

    for _ in range(cfg.pool_size):
        if rng.random() < cfg.batch_share:
            items = [one() for _ in range(cfg.batch_size)]
            payload = {"requests": [p for p, _ in items]}
            pool.append(PreparedRequest(BATCH_PATH, BATCH_PATH, _dumps(payload), tuple(e for _, e in items), payload))
        else:
            payload, exp = one()
            name = RECOMMEND_PATH + (" (candidates)" if exp.candidates is not None else "")
            pool.append(PreparedRequest(RECOMMEND_PATH, name, _dumps(payload), (exp,), payload))
    return pool


def build_pool(cfg: TrafficConfig) -> tuple[list[PreparedRequest], int]:
    """Load ``cfg.dataset`` and build the request pool from its ``cfg.split`` inputs.

    Returns the pool and the dataset's number of items. User ids sent are model user indices (row + 1).
    """
    from protocol import eval_examples, load_dataset

    ds = load_dataset(cfg.dataset, cfg.data_dir)
    inputs, targets = eval_examples(ds, cfg.split)  # type: ignore[arg-type]
    histories = [s.tolist() for s in inputs]
    pool = build_pool_from_histories(
        histories, list(range(1, ds.num_users + 1)), [int(t) for t in targets], ds.num_items, cfg
    )
    return pool, ds.num_items


# ----------------------------------------------------------------------------------------- checks

def check_recommendation(exp: Expectation, rec: Any, check: str = "full") -> str | None:
    """``None`` when ``rec`` is a correct answer for ``exp``, else a short reason (the failure message)."""
    if not isinstance(rec, dict):
        return f"answer is {type(rec).__name__}, not an object"
    items, scores = rec.get("items"), rec.get("scores")
    if not isinstance(items, list) or not isinstance(scores, list):
        return "items/scores missing or not lists"
    if not isinstance(rec.get("model"), str):
        return "model missing or not a string"
    if not isinstance(rec.get("fallback"), bool):
        return "fallback missing or not a boolean"
    if len(items) != len(scores):
        return f"{len(items)} items but {len(scores)} scores"
    want = exp.expected_len
    if len(items) != want:
        return f"{len(items)} items, expected {want}"
    for s in scores:
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
            return "a score is not a finite number"
    for a, b in itertools.pairwise(scores):
        if b > a + 1e-5 * max(1.0, abs(a)):
            return "scores not sorted in decreasing order"
    for i in items:
        if not isinstance(i, int) or isinstance(i, bool):
            return "an item id is not an integer"
    if rec.get("fallback") is not exp.fallback:
        return f"fallback is {rec.get('fallback')}, expected {exp.fallback}"
    if exp.dropped_unknown is not None and rec.get("dropped_unknown") != exp.dropped_unknown:
        return f"dropped_unknown is {rec.get('dropped_unknown')!r}, expected {exp.dropped_unknown}"
    if check == "shape":
        return None
    if len(set(items)) != len(items):
        return "duplicate items"
    if any(not 1 <= i <= exp.num_items for i in items):
        return f"item id out of range 1..{exp.num_items}"
    if exp.excluded and any(i in exp.excluded for i in items):
        return "a seen item was returned with exclude_seen"
    if exp.candidates is not None and any(i not in exp.candidates for i in items):
        return "an item outside the candidates was returned"
    return None


def batch_results(data: Any) -> list | None:
    """The list of answers in a batch response (``{"results": [...]}``), or None when absent."""
    if isinstance(data, dict):
        for key in ("results", "responses"):
            if isinstance(data.get(key), list):
                return data[key]
    return None


def check_response(req: PreparedRequest, data: Any, check: str = "full") -> str | None:
    """Check a decoded response body against a prepared request; ``None`` when correct."""
    if not req.is_batch:
        return check_recommendation(req.expect[0], data, check)
    results = batch_results(data)
    if results is None:
        return "batch response has no results list"
    if len(results) != len(req.expect):
        return f"batch of {len(req.expect)} requests got {len(results)} results"
    for n, (exp, rec) in enumerate(zip(req.expect, results)):
        err = check_recommendation(exp, rec, check)
        if err:
            return f"batch[{n}]: {err}"
    return None
