"""The serving core, free of HTTP: a loaded model, request preparation, batch execution, /eval scoring.

- ``load_state(settings)`` finds, verifies, loads and warms an artifact -> ``ModelState``.
- ``prepare(state, request, settings)`` validates ids and limits and builds a ``Query`` for the
  worker, or answers directly from the popularity ranking (empty history).
- ``Executor`` runs on the batching worker: one encoder call per batch, then search (over-fetching
  by the number of seen items to exclude) or candidate scoring per request.
- ``eval_scorer`` is the ``protocol.Scorer`` that /eval runs through the same encoder and item table.
"""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from protocol.split import pad_left
from serving.artifact import Artifact, load_artifact, resolve_latest
from serving.backends import Backend, IndexSpec, create_backend
from serving.config import Settings
from serving.errors import bad_request
from serving.metrics import ServingMetrics
from serving.schemas import RecommendRequest, RecommendResponse

log = logging.getLogger("serving.engine")
MAX_UNKNOWN_LISTED = 20
SHARED_FETCH = 64  # requests fetching up to this many items share one index search per batch


@dataclass(frozen=True, eq=False)
class ModelState:
    """One loaded, verified and warmed model version; swapped as a whole on reload."""

    artifact: Artifact
    backend: Backend
    loaded_at: float
    warmup_seconds: float

    @property
    def version(self) -> str:
        return self.artifact.version


def artifact_to_serve(settings: Settings) -> Path:
    """The folder named by ``artifact_path``, else the latest under ``artifact_root``."""
    return Path(settings.artifact_path) if settings.artifact_path else resolve_latest(settings.artifact_root)


def warmup_batch_sizes(settings: Settings) -> list[int]:
    """Every batch shape the worker can execute: requests (1..max_batch_size) and /eval chunks."""
    return list(range(1, max(settings.max_batch_size, settings.eval_chunk) + 1))


def load_state(settings: Settings, path: Path | None = None) -> ModelState:
    """Load, verify and warm the artifact. Raises ArtifactError (bad artifact) or RuntimeError (device)."""
    artifact = load_artifact(path or artifact_to_serve(settings))
    index = IndexSpec(settings.index, settings.hnsw_m, settings.hnsw_ef_search)
    backend = create_backend(artifact, settings.device, settings.ort_threads, index)
    t0 = time.perf_counter()
    backend.warmup(warmup_batch_sizes(settings), artifact.max_len)
    warm = time.perf_counter() - t0
    log.info("loaded %s %s from %s (%s), warmed %d shapes in %.2fs", artifact.name, artifact.version,
             artifact.path, backend.name, len(warmup_batch_sizes(settings)), warm)
    return ModelState(artifact=artifact, backend=backend, loaded_at=time.time(), warmup_seconds=warm)


# ----------------------------------------------------------------------------------------- requests


@dataclass(eq=False)
class Query:
    """What the worker needs for one request (internal item ids only)."""

    state: ModelState
    window: np.ndarray  # (L,) int64, the most recent items, left-padded
    user: int
    k: int
    exclude: np.ndarray  # sorted unique internal ids to leave out
    candidates: np.ndarray | None  # (C,) unique internal ids, or None for the whole catalogue


@dataclass
class Ranked:
    ids: np.ndarray  # internal ids, best first
    scores: np.ndarray
    fallback: bool = False


@dataclass
class Prepared:
    """A validated request: either a query for the worker or an answer already (popularity)."""

    state: ModelState
    query: Query | None
    result: Ranked | None
    dropped: int | None


def prepare(state: ModelState, req: RecommendRequest, settings: Settings) -> Prepared:
    """Validate limits and ids, map raw ids to internal ones; 422 (ServingError) when the request is bad."""
    _check_limits(req, settings)
    art = state.artifact
    history, unknown = map_ids(art, req.history)
    candidates, unknown_c = (None, []) if req.candidates is None else map_ids(art, req.candidates)
    dropped = None
    if req.unknown_items == "error":
        _reject_unknown(art, _unique(unknown + unknown_c))
    else:
        dropped = len(unknown) + len(unknown_c)
    exclude = _sorted_unique(history) if req.exclude_seen else np.zeros(0, dtype=np.int64)
    if candidates is not None:
        candidates = _unique_array(candidates)
    user = _user(art, req.user_id)
    if len(history) == 0:
        return Prepared(state, None, popularity_ranking(art, req.k, exclude, candidates), dropped)
    window = pad_left([history], art.max_len)[0]
    return Prepared(state, Query(state, window, user, req.k, exclude, candidates), None, dropped)


def _reject_unknown(art: Artifact, unknown: list[Any]) -> None:
    """422 naming the unknown ids (the first few of them)."""
    if not unknown:
        return
    shown = unknown[:MAX_UNKNOWN_LISTED]
    more = f" and {len(unknown) - len(shown)} more" if len(unknown) > len(shown) else ""
    ids = "" if art.id_map else f", ids 1..{art.num_items}"
    raise bad_request(f"unknown item ids: {shown}{more} (catalogue of {art.num_items} items{ids}); "
                      "send unknown_items='ignore' to drop them", unknown_items=shown)


def _check_limits(req: RecommendRequest, settings: Settings) -> None:
    if req.k > settings.max_k:
        raise bad_request(f"k={req.k} is larger than this server's max_k={settings.max_k}")
    if len(req.history) > settings.max_history_len:
        raise bad_request(f"history has {len(req.history)} items; at most {settings.max_history_len} are accepted "
                          "(send the most recent ones)")
    if req.candidates is not None and len(req.candidates) > settings.max_candidates:
        raise bad_request(f"candidates has {len(req.candidates)} items; at most {settings.max_candidates} are accepted")


def map_ids(art: Artifact, raw: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Raw ids -> (internal ids of the known ones in order, the unknown raw ids in order)."""
    n = art.num_items
    known: list[int] = []
    unknown: list[Any] = []
    if art.id_map is None:
        for r in raw:
            if type(r) is int and 1 <= r <= n:
                known.append(r)
            else:
                unknown.append(r)
    else:
        to_internal = art.id_map.to_internal
        for r in raw:
            i = to_internal(r)
            if i is None:
                unknown.append(r)
            else:
                known.append(i)
    return np.asarray(known, dtype=np.int64), unknown


def _unique(values: list[Any]) -> list[Any]:
    """Unique values in order (5 and "5" are different)."""
    seen: dict[tuple[str, Any], Any] = {}
    for v in values:
        seen.setdefault((type(v).__name__, v), v)
    return list(seen.values())


def _unique_array(ids: np.ndarray) -> np.ndarray:
    """Unique ids in order of first occurrence."""
    return np.fromiter(dict.fromkeys(ids.tolist()), dtype=np.int64)


def _sorted_unique(ids: np.ndarray) -> np.ndarray:
    """Sorted unique ids (a set is much faster than np.unique for request-sized arrays)."""
    return np.array(sorted(set(ids.tolist())), dtype=np.int64)


def _not_in(ids: np.ndarray, exclude: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of ``ids`` (internal, 1..n) that are not in ``exclude``."""
    if len(exclude) == 0:
        return np.ones(len(ids), dtype=bool)
    mask = np.zeros(n + 1, dtype=bool)
    mask[exclude] = True
    return ~mask[ids]


def _user(art: Artifact, user_id: int | None) -> int:
    if not art.uses_user or not user_id:
        return 0
    if art.num_users is not None and user_id > art.num_users:
        raise bad_request(f"user_id {user_id} is out of range: 0 (anonymous) or 1..{art.num_users}")
    return int(user_id)


def popularity_ranking(art: Artifact, k: int, exclude: np.ndarray, candidates: np.ndarray | None) -> Ranked:
    """The fallback for empty histories: most popular first; score = 1 / (1 + popularity rank)."""
    if candidates is not None:
        pool = candidates[_not_in(candidates, exclude, art.num_items)]
        ids = pool[np.argsort(art.pop_rank[pool], kind="stable")][:k]
    else:
        pool = art.popularity[: k + len(exclude)]
        ids = pool[_not_in(pool, exclude, art.num_items)][:k]
    return Ranked(ids=ids, scores=1.0 / (1.0 + art.pop_rank[ids].astype(np.float64)), fallback=True)


def to_response(prepared: Prepared, ranked: Ranked) -> RecommendResponse:
    """Internal ids -> the client's raw ids."""
    art = prepared.state.artifact
    ids = ranked.ids.tolist()
    items = [art.id_map.to_raw(i) for i in ids] if art.id_map is not None else ids
    return RecommendResponse(items=items, scores=np.asarray(ranked.scores, dtype=np.float64).tolist(),
                             model=prepared.state.version, fallback=ranked.fallback,
                             dropped_unknown=prepared.dropped)


# ---------------------------------------------------------------------------------------- execution


class Executor:
    """Runs a batch of queries on the worker thread. Queries of different model versions (during a
    reload) are executed with their own version."""

    def __init__(self, metrics: ServingMetrics | None = None) -> None:
        self.metrics = metrics

    def __call__(self, batch: list[Query]) -> list[Ranked | Exception]:
        groups: dict[int, list[int]] = defaultdict(list)
        for i, q in enumerate(batch):
            groups[id(q.state)].append(i)
        out: list[Ranked | Exception] = [RuntimeError("not executed")] * len(batch)
        for rows in groups.values():
            queries = [batch[i] for i in rows]
            try:
                results: list[Ranked | Exception] = list(self._run(queries[0].state.backend, queries))
            except Exception as e:  # an inference failure fails this group only
                log.exception("inference failed for %d requests", len(queries))
                results = [e] * len(queries)
            for i, r in zip(rows, results):
                out[i] = r
        return out

    def _run(self, backend: Backend, qs: list[Query]) -> list[Ranked]:
        t0 = time.perf_counter()
        queries = backend.encode(np.stack([q.window for q in qs]), np.asarray([q.user for q in qs], dtype=np.int64))
        t1 = time.perf_counter()
        results: list[Ranked | None] = [None] * len(qs)
        self._search(backend, queries, qs, results)
        for i, q in enumerate(qs):
            if q.candidates is not None:
                results[i] = rank_candidates(backend.score(queries[i], q.candidates), q.candidates, q.exclude, q.k,
                                             len(backend.items))
        t2 = time.perf_counter()
        if self.metrics is not None:
            self.metrics.encode_seconds.observe(t1 - t0)
            self.metrics.search_seconds.observe(t2 - t1)
        return results  # type: ignore[return-value]

    @staticmethod
    def _search(backend: Backend, queries: np.ndarray, qs: list[Query], results: list[Ranked | None]) -> None:
        """Whole-catalogue requests, searched together per over-fetch group.

        A request fetches ``k`` plus the number of seen items it excludes. Requests that fetch at most
        ``SHARED_FETCH`` share one FAISS call (the usual case: one call per batch); larger fetches are
        grouped by the next power of two, so one long history does not make the whole batch fetch deep.
        """
        n = len(backend.items)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, q in enumerate(qs):
            if q.candidates is None:
                fetch = min(n, q.k + len(q.exclude))
                groups[max(SHARED_FETCH, 1 << math.ceil(math.log2(fetch)))].append(i)
        for rows in groups.values():
            fetch = min(n, max(qs[i].k + len(qs[i].exclude) for i in rows))
            scores, ids = backend.search(queries[rows], fetch)
            for j, i in enumerate(rows):
                results[i] = _top_unseen(ids[j], scores[j], qs[i].exclude, qs[i].k)


def _top_unseen(ids: np.ndarray, scores: np.ndarray, exclude: np.ndarray, k: int) -> Ranked:
    """The first ``k`` of a ranked list that are not in ``exclude`` (a set test: lists here are short)."""
    if len(exclude) == 0:
        return Ranked(ids=ids[:k], scores=scores[:k])
    seen = set(exclude.tolist())
    keep = [c for c, item in enumerate(ids.tolist()) if item not in seen][:k]
    return Ranked(ids=ids[keep], scores=scores[keep])


def rank_candidates(scores: np.ndarray, candidates: np.ndarray, exclude: np.ndarray, k: int, n: int) -> Ranked:
    """Top-k candidates by score (ties: earlier candidate first), excluded items left out."""
    keep = _not_in(candidates, exclude, n)
    cand, sc = candidates[keep], scores[keep]
    order = np.lexsort((np.arange(len(cand)), -sc))[:k]
    return Ranked(ids=cand[order], scores=sc[order])


# --------------------------------------------------------------------------------------------- eval


def score_chunk(state: ModelState, hist: np.ndarray, users: np.ndarray, cand: np.ndarray | None) -> np.ndarray:
    """Worker-side scoring for /eval: candidate scores (B, C), or (B, N + 1) scores indexed by item id."""
    backend = state.backend
    queries = backend.encode(hist, users)
    if cand is not None:
        return backend.score_batch(queries, cand)
    out = np.empty((len(hist), len(backend.items) + 1), dtype=np.float32)
    out[:, 0] = -np.inf
    out[:, 1:] = backend.score_all(queries)
    return out


def eval_scorer(state: ModelState, run_job: Callable[[Callable[[], np.ndarray]], Any], chunk: int):
    """A ``protocol.Scorer`` whose work runs as worker jobs of at most ``chunk`` users each."""
    uses_user = state.artifact.uses_user

    def scorer(histories: np.ndarray, users: np.ndarray, candidates: np.ndarray | None) -> np.ndarray:
        model_users = (np.asarray(users, dtype=np.int64) + 1) if uses_user else np.zeros(len(users), dtype=np.int64)
        parts = []
        for s in range(0, len(histories), chunk):
            sl = slice(s, s + chunk)
            job = partial(score_chunk, state, histories[sl], model_users[sl],
                          None if candidates is None else candidates[sl])
            parts.append(run_job(job).result())
        return np.concatenate(parts, axis=0)

    return scorer
