"""The serving core, free of HTTP: a loaded model, request preparation, batch execution, /eval scoring.

- ``load_state(settings)`` finds, verifies, loads and warms an artifact -> ``ModelState``.
- ``prepare(state, request, settings)`` validates ids and limits and builds a ``Query`` for the
  worker, or answers directly from the popularity ranking (empty history).
- ``Executor`` runs on the batching worker: one encoder call per batch, then one scoring call for the
  whole-catalogue requests (the matmul path scores seen items -inf; FAISS over-fetches by their number)
  and candidate scoring per request.
- ``to_answer`` turns a ranking into the response body (a dict of arrays for ``serving.responses``).
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
    index = IndexSpec(settings.index, settings.scoring, settings.matmul_max_items, settings.fuse_topk)
    backend = create_backend(artifact, settings.device, settings.ort_threads, index)
    t0 = time.perf_counter()
    backend.warmup(warmup_batch_sizes(settings), artifact.max_len)
    warm = time.perf_counter() - t0
    log.info("loaded %s %s from %s (%s), warmed %d shapes in %.2fs", artifact.name, artifact.version,
             artifact.path, backend.name, len(warmup_batch_sizes(settings)), warm)
    return ModelState(artifact=artifact, backend=backend, loaded_at=time.time(), warmup_seconds=warm)


# ----------------------------------------------------------------------------------------- requests


@dataclass(eq=False, slots=True)
class Query:
    """What the worker needs for one request (internal item ids only)."""

    state: ModelState
    recent: np.ndarray  # (<= max_len,) int64, the most recent known items, oldest first
    user: int
    k: int
    exclude: np.ndarray  # internal ids to leave out (the history under exclude_seen; duplicates allowed)
    candidates: np.ndarray | None  # (C,) unique internal ids, or None for the whole catalogue

    @property
    def window(self) -> np.ndarray:
        """(max_len,) int64: ``recent`` left-padded with 0, as the encoder gets it."""
        return pad_left([self.recent], self.state.artifact.max_len)[0]


@dataclass(slots=True)
class Ranked:
    ids: np.ndarray  # internal ids, best first
    scores: np.ndarray
    fallback: bool = False


@dataclass(slots=True)
class Prepared:
    """A validated request: either a query for the worker or an answer already (popularity)."""

    state: ModelState
    query: Query | None
    result: Ranked | None
    dropped: int | None


_NO_IDS = np.zeros(0, dtype=np.int64)


def prepare(state: ModelState, req: RecommendRequest, settings: Settings) -> Prepared:
    """Validate limits and ids, map raw ids to internal ones; 422 (ServingError) when the request is bad."""
    _check_limits(req, settings)
    art = state.artifact
    history, unknown = map_ids(art, req.history)
    candidates, unknown_c = (None, []) if req.candidates is None else map_ids(art, req.candidates)
    dropped = None
    if req.unknown_items == "error":
        if unknown or unknown_c:
            _reject_unknown(art, _unique(unknown + unknown_c))
    else:
        dropped = len(unknown) + len(unknown_c)
    exclude = history if req.exclude_seen else _NO_IDS
    if candidates is not None:
        candidates = _unique_array(candidates)
    user = _user(art, req.user_id)
    if len(history) == 0:
        return Prepared(state, None, popularity_ranking(art, req.k, exclude, candidates), dropped)
    recent = history[-art.max_len:]
    return Prepared(state, Query(state, recent, user, req.k, exclude, candidates), None, dropped)


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
    if art.id_map is None:
        if not raw:
            return _NO_IDS, []
        if set(map(type, raw)) == {int}:  # the usual request: integers only
            ids = np.fromiter(raw, dtype=np.int64, count=len(raw))
            if min(raw) >= 1 and max(raw) <= n:  # all known: builtins, no numpy call (cheaper on a cold CPU)
                return ids, []
            known = (ids >= 1) & (ids <= n)
            return ids[known], [r for r, ok in zip(raw, known.tolist()) if not ok]
        known_ids: list[int] = []
        unknown: list[Any] = []
        for r in raw:
            if type(r) is int and 1 <= r <= n:
                known_ids.append(r)
            else:
                unknown.append(r)
        return np.asarray(known_ids, dtype=np.int64), unknown
    to_internal = art.id_map.to_internal
    found: list[int] = []
    missing: list[Any] = []
    for r in raw:
        i = to_internal(r)
        if i is None:
            missing.append(r)
        else:
            found.append(i)
    return np.asarray(found, dtype=np.int64), missing


def _unique(values: list[Any]) -> list[Any]:
    """Unique values in order (5 and "5" are different)."""
    seen: dict[tuple[str, Any], Any] = {}
    for v in values:
        seen.setdefault((type(v).__name__, v), v)
    return list(seen.values())


def _unique_array(ids: np.ndarray) -> np.ndarray:
    """Unique ids in order of first occurrence."""
    return np.fromiter(dict.fromkeys(ids.tolist()), dtype=np.int64)


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


def to_answer(prepared: Prepared, ranked: Ranked) -> dict[str, Any]:
    """The answer body (``RecommendResponse``'s fields, None left out) with the client's raw ids, ready for
    ``serving.responses.dumps``: numpy arrays stay arrays (orjson writes them without a Python list)."""
    art = prepared.state.artifact
    ids = np.ascontiguousarray(ranked.ids, dtype=np.int64)
    out: dict[str, Any] = {
        "items": ids if art.id_map is None else [art.id_map.to_raw(i) for i in ids.tolist()],
        "scores": np.ascontiguousarray(ranked.scores, dtype=np.float64),
        "model": prepared.state.version,
        "fallback": ranked.fallback,
    }
    if prepared.dropped is not None:
        out["dropped_unknown"] = prepared.dropped
    return out


def to_response(prepared: Prepared, ranked: Ranked) -> RecommendResponse:
    """The answer as a validated ``RecommendResponse`` (for Python callers; the HTTP path writes ``to_answer``)."""
    body = to_answer(prepared, ranked)
    items = body["items"]
    return RecommendResponse(**{**body, "items": items.tolist() if isinstance(items, np.ndarray) else items,
                                "scores": body["scores"].tolist()})


# ---------------------------------------------------------------------------------------- execution


class Executor:
    """Runs a batch of queries on the batching worker (the loop thread, or the worker thread). Queries of
    different model versions (during a reload) are executed with their own version."""

    def __init__(self, metrics: ServingMetrics | None = None) -> None:
        self.metrics = metrics

    def __call__(self, batch: list[Query]) -> list[Ranked | Exception]:
        state = batch[0].state
        if len(batch) == 1 or all(q.state is state for q in batch):  # the usual case: one version
            return self._run_or_fail(state, batch)
        by: dict[int, list[int]] = defaultdict(list)  # during a reload: each version with its own model
        for i, q in enumerate(batch):
            by[id(q.state)].append(i)
        out: list[Ranked | Exception] = [RuntimeError("not executed")] * len(batch)
        for rows in by.values():
            queries = [batch[i] for i in rows]
            for i, r in zip(rows, self._run_or_fail(queries[0].state, queries)):
                out[i] = r
        return out

    def _run_or_fail(self, state: ModelState, qs: list[Query]) -> list[Ranked | Exception]:
        """``_run``'s answers, or its exception for every query: an inference failure fails these queries only."""
        try:
            return list(self._run(state, qs))
        except Exception as e:
            log.exception("inference failed for %d requests", len(qs))
            return [e] * len(qs)

    def _run(self, state: ModelState, qs: list[Query]) -> list[Ranked]:
        backend = state.backend
        t0 = time.perf_counter()
        length = state.artifact.max_len
        hist = np.zeros((len(qs), length), dtype=np.int64)
        for i, q in enumerate(qs):  # left-padded: the most recent item last
            hist[i, length - len(q.recent):] = q.recent
        users = np.array([q.user for q in qs], dtype=np.int64)
        results: list[Ranked | None] = [None] * len(qs)
        whole = [i for i, q in enumerate(qs) if q.candidates is None]
        fused = backend.fused
        if fused is not None and whole:  # encoder + top-k in one ONNX Runtime call (candidate rows: query only)
            ex = [q.exclude if q.candidates is None else _NO_IDS for q in qs]
            queries, scores, ids = fused.rank(hist, users, max(qs[i].k for i in whole), ex)
            t1 = time.perf_counter()
            if len(whole) < len(qs):
                scores, ids = scores[whole], ids[whole]
            self._collect(scores, ids, [qs[i].k for i in whole], whole, results)
        else:
            queries = backend.encode(hist, users)
            t1 = time.perf_counter()
            if whole:
                if getattr(backend.searcher, "supports_mask", False):
                    self._search_masked(backend, queries, qs, whole, results)
                else:
                    self._search(backend, queries, qs, whole, results)
        if len(whole) < len(qs):
            n = len(backend.items)
            for i, q in enumerate(qs):
                if q.candidates is not None:
                    results[i] = rank_candidates(backend.score(queries[i], q.candidates), q.candidates, q.exclude,
                                                 q.k, n)
        t2 = time.perf_counter()
        if self.metrics is not None:
            self.metrics.encode_seconds.observe(t1 - t0)
            self.metrics.search_seconds.observe(t2 - t1)
        return results  # type: ignore[return-value]

    @classmethod
    def _search_masked(cls, backend: Backend, queries: np.ndarray, qs: list[Query], rows: list[int],
                       results: list[Ranked | None]) -> None:
        """Whole-catalogue requests in one scoring call: excluded items scored -inf, the top k of the rest."""
        ks = [qs[i].k for i in rows]
        scores, ids = backend.searcher.search_masked(  # type: ignore[attr-defined]
            queries if len(rows) == len(qs) else queries[rows], max(ks), [qs[i].exclude for i in rows])
        cls._collect(scores, ids, ks, rows, results)

    @staticmethod
    def _collect(scores: np.ndarray, ids: np.ndarray, ks: list[int], rows: list[int],
                 results: list[Ranked | None]) -> None:
        """Row ``j`` of a masked top-k (best first, -inf where fewer than k items were left) -> ``results[rows[j]]``,
        its first ``ks[j]``."""
        complete = np.isfinite(scores[:, -1]) if scores.shape[1] else np.ones(len(rows), dtype=bool)  # best first
        for j, i in enumerate(rows):
            kk = ks[j]
            if complete[j]:
                results[i] = Ranked(ids=ids[j, :kk], scores=scores[j, :kk])
            else:  # fewer than k items left once the excluded ones are out
                keep = np.isfinite(scores[j])
                results[i] = Ranked(ids=ids[j][keep][:kk], scores=scores[j][keep][:kk])

    @staticmethod
    def _search(backend: Backend, queries: np.ndarray, qs: list[Query], rows: list[int],
                results: list[Ranked | None]) -> None:
        """Whole-catalogue requests on an index that cannot mask (FAISS), searched together per over-fetch group.

        A request fetches ``k`` plus the number of seen items it excludes. Requests that fetch at most
        ``SHARED_FETCH`` share one FAISS call (the usual case: one call per batch); larger fetches are
        grouped by the next power of two, so one long history does not make the whole batch fetch deep.
        """
        n = len(backend.items)
        excludes = {i: np.unique(qs[i].exclude) for i in rows}
        groups: dict[int, list[int]] = defaultdict(list)
        for i in rows:
            fetch = min(n, qs[i].k + len(excludes[i]))
            groups[max(SHARED_FETCH, 1 << math.ceil(math.log2(max(fetch, 1))))].append(i)
        for members in groups.values():
            fetch = min(n, max(qs[i].k + len(excludes[i]) for i in members))
            scores, ids = backend.search(queries[members], fetch)
            for j, i in enumerate(members):
                results[i] = _top_unseen(ids[j], scores[j], excludes[i], qs[i].k)


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
