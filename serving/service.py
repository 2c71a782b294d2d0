"""The running server's state and operations: the current model, the batcher, reload and /eval.

The current ``ModelState`` is one reference, replaced atomically on reload. A request captures it
when it is validated and is executed with that same version, so no request fails (or is mixed with
another catalogue) while a reload swaps versions.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

from protocol import DataError, evaluate, load_dataset, load_or_create_negatives
from protocol.data import dataset_path
from serving.artifact import ArtifactError
from serving.batching import BatcherStopped, LoopBatcher, MicroBatcher, QueueFullError
from serving.config import Settings
from serving.engine import Executor, ModelState, Prepared, eval_scorer, load_state, prepare, to_response
from serving.errors import ServingError
from serving.metrics import ServingMetrics
from serving.schemas import EvalRequest, EvalResponse, RecommendRequest, RecommendResponse, ReloadResponse
from serving.security import artifact_display_name

log = logging.getLogger("serving")
EVAL_TOLERANCE = 1e-4
RETRY_AFTER_S = "1"


def _not_ready() -> ServingError:
    return ServingError(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": RETRY_AFTER_S})


def batching_mode(settings: Settings, state: ModelState) -> str:
    """``loop`` or ``thread``: auto runs batches on the event loop unless the backend uses CUDA."""
    if settings.batching_mode == "loop" and state.backend.on_cuda:
        log.warning("batching_mode=loop is not used on a CUDA backend (a FAISS GPU index must stay on one thread, "
                    "and the loop would wait for the device); batches run on the worker thread")
        return "thread"
    if settings.batching_mode != "auto":
        return settings.batching_mode
    return "thread" if state.backend.on_cuda else "loop"


class Service:
    """Owns the model state, the micro-batcher and the locks for reload and /eval."""

    def __init__(self, settings: Settings, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state: ModelState | None = None
        self.batcher: MicroBatcher | LoopBatcher | None = None  # made in start(), once the backend is known
        self._reload_lock = threading.Lock()
        self._eval_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, preloaded: ModelState | None = None) -> None:
        """Load (unless given) and warm the model, then start the worker: from here on, ready."""
        state = preloaded or await asyncio.to_thread(load_state, self.settings)
        self._install(state)
        if self.batcher is None:
            kind = LoopBatcher if batching_mode(self.settings, state) == "loop" else MicroBatcher
            self.batcher = kind(Executor(self.metrics), self.settings.max_batch_size, self.settings.max_queue_delay_s,
                                self.settings.max_queue_size, self.metrics)
        self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.stop)

    @property
    def ready(self) -> bool:
        return self.state is not None and self.batcher is not None and self.batcher.running

    def _install(self, state: ModelState) -> None:
        self.state = state  # one reference assignment: the atomic swap
        self.metrics.set_model(state.artifact.name, state.version, state.backend.name)

    def current(self) -> ModelState:
        state = self.state
        if state is None or not self.ready:
            raise _not_ready()
        return state

    def _batcher(self) -> MicroBatcher | LoopBatcher:
        if self.batcher is None:
            raise _not_ready()
        return self.batcher

    # ------------------------------------------------------------------ recommend
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        (resp,) = await self.recommend_many([req])
        return resp

    async def recommend_many(self, reqs: list[RecommendRequest], label: str = "requests") -> list[RecommendResponse]:
        """Validate every request first (422 names the bad one), then queue all queries at once."""
        state = self.current()
        prepared: list[Prepared] = []
        for i, req in enumerate(reqs):
            try:
                prepared.append(prepare(state, req, self.settings))
            except ServingError as e:
                if len(reqs) > 1:
                    e.message = f"{label}[{i}]: {e.message}"
                    e.extra["index"] = i
                raise
        todo = [p for p in prepared if p.query is not None]
        results = await self._run([p.query for p in todo]) if todo else []
        ranked = dict(zip(map(id, todo), results))
        return [to_response(p, p.result if p.query is None else ranked[id(p)]) for p in prepared]

    async def _run(self, queries: list[Any]) -> list[Any]:
        try:
            futures = self._batcher().enqueue(queries)
        except QueueFullError as e:
            raise ServingError(503, "overloaded", f"{e}; retry shortly", headers={"Retry-After": RETRY_AFTER_S}) from None
        except BatcherStopped as e:
            raise ServingError(503, "shutting_down", str(e), headers={"Retry-After": RETRY_AFTER_S}) from None
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), self.settings.request_timeout_s)
        except TimeoutError:
            raise ServingError(504, "timeout", f"no answer within {self.settings.request_timeout_s}s") from None
        except BatcherStopped as e:
            raise ServingError(503, "shutting_down", str(e), headers={"Retry-After": RETRY_AFTER_S}) from None
        except Exception:
            log.exception("inference failed")
            raise ServingError(500, "inference_failed", "inference failed; see the server log") from None

    # ------------------------------------------------------------------ reload
    async def reload(self) -> ReloadResponse:
        """Load and warm the newest artifact off the event loop, then swap. A failure keeps the old one."""
        old = self.current()
        if not self._reload_lock.acquire(blocking=False):
            raise ServingError(409, "reload_in_progress", "a reload is already running")
        t0 = time.perf_counter()
        try:
            new = await asyncio.to_thread(load_state, self.settings)
        except (ArtifactError, RuntimeError, OSError) as e:
            self.metrics.reloads.labels(result="failed").inc()
            log.error("reload failed, still serving %s: %s", old.version, e)
            raise ServingError(422, "reload_failed", f"reload failed, still serving {old.version}: {e}") from None
        finally:
            self._reload_lock.release()
        self._install(new)
        self.metrics.reloads.labels(result="ok").inc()
        log.info("reloaded: %s -> %s", old.version, new.version)
        return ReloadResponse(reloaded=True, previous=old.version, model=new.version, path=artifact_display_name(new.artifact.path, self.settings),
                              seconds=round(time.perf_counter() - t0, 4))

    # ------------------------------------------------------------------ eval
    async def evaluate(self, req: EvalRequest) -> EvalResponse:
        """Run the offline evaluation through the served path, one at a time (409 while one runs)."""
        state = self.current()
        if not self._eval_lock.acquire(blocking=False):
            raise ServingError(409, "eval_in_progress", "an evaluation is already running; try again later",
                               headers={"Retry-After": "5"})
        return await asyncio.to_thread(self._evaluate_locked, state, req)

    def _evaluate_locked(self, state: ModelState, req: EvalRequest) -> EvalResponse:
        t0 = time.perf_counter()
        try:
            resp = self._evaluate(state, req, t0)
            self.metrics.evals.labels(result="ok").inc()
            return resp
        except ServingError:
            self.metrics.evals.labels(result="rejected").inc()
            raise
        except BatcherStopped as e:
            self.metrics.evals.labels(result="failed").inc()
            raise ServingError(503, "shutting_down", str(e)) from None
        except Exception:
            self.metrics.evals.labels(result="failed").inc()
            log.exception("/eval failed")
            raise ServingError(500, "eval_failed", "evaluation failed; see the server log") from None
        finally:
            self.metrics.eval_seconds.observe(time.perf_counter() - t0)
            self._eval_lock.release()

    def _evaluate(self, state: ModelState, req: EvalRequest, t0: float) -> EvalResponse:
        art = state.artifact
        ds = self._dataset(req.dataset, art.manifest.get("dataset") or {})
        negatives = self._negatives(ds, art.manifest.get("dataset") or {}) if req.protocol == "sampled" else None
        if ds.num_items > art.num_items:
            raise ServingError(409, "dataset_mismatch",
                               f"dataset {req.dataset!r} has {ds.num_items} items, the model {art.num_items}")
        if art.uses_user and art.num_users is not None and ds.num_users > art.num_users:
            raise ServingError(409, "dataset_mismatch",
                               f"dataset {req.dataset!r} has {ds.num_users} users, the model {art.num_users}")
        scorer = eval_scorer(state, self._batcher().run_job, self.settings.eval_chunk)
        metrics = evaluate(scorer, ds, req.split, req.protocol, max_len=art.max_len, limit_users=req.limit_users,
                           negatives=negatives)
        users = ds.num_users if req.limit_users is None else min(req.limit_users, ds.num_users)
        expected = None
        if users == ds.num_users:
            expected = ((art.manifest.get("metrics") or {}).get(req.split) or {}).get(req.protocol)
        diff = None
        if expected:
            diff = max((abs(float(metrics[key]) - float(expected[key])) for key in metrics if key in expected),
                       default=None)
        return EvalResponse(dataset=ds.name, split=req.split, protocol=req.protocol, users=users, metrics=metrics,
                            expected=expected or None, max_abs_diff=diff,
                            matches=None if diff is None else bool(diff <= EVAL_TOLERANCE),
                            tolerance=EVAL_TOLERANCE, model=state.version,
                            seconds=round(time.perf_counter() - t0, 4))

    def _dataset(self, name: str, meta: dict[str, Any]):
        """The named dataset of the configured data folder (never a path from the request), checksum-checked."""
        data_dir = self.settings.data_dir
        try:
            dataset_path(name, data_dir)
        except DataError:
            raise ServingError(404, "dataset_not_found", f"no dataset named {name!r} in the server's data folder") from None
        try:
            ds = load_dataset(name, data_dir)
        except (DataError, OSError) as e:
            raise ServingError(422, "dataset_unreadable", f"dataset {name!r}: {e}") from None
        want = meta.get("sha256")
        if want and want != ds.sha256:
            raise ServingError(409, "dataset_mismatch",
                               f"dataset {name!r} (sha256 {ds.sha256[:12]}...) is not the one this model was "
                               f"trained and evaluated on (sha256 {str(want)[:12]}...)")
        return ds

    @staticmethod
    def _negatives(ds, meta: dict[str, Any]):
        try:
            negs = load_or_create_negatives(ds)
        except (DataError, OSError) as e:
            raise ServingError(422, "negatives_unreadable", f"sampled negatives of {ds.name!r}: {e}") from None
        want = meta.get("negatives_sha256")
        if want and want != negs.sha256:
            raise ServingError(409, "negatives_mismatch",
                               f"the stored negatives of {ds.name!r} (sha256 {negs.sha256[:12]}...) differ from the "
                               f"ones the model was evaluated with (sha256 {str(want)[:12]}...)")
        return negs

    # ------------------------------------------------------------------ describe
    def describe(self) -> dict[str, Any]:
        """What /model shows: manifest summary, backend (providers actually in use, index), batching."""
        state = self.current()
        b = self._batcher()
        return {
            "model": state.artifact.summary(),
            "artifact": state.artifact.path.name,
            **state.backend.describe(),
            "loaded_at": datetime.fromtimestamp(state.loaded_at, timezone.utc).isoformat(),
            "warmup_seconds": round(state.warmup_seconds, 4),
            "batching": {"mode": "loop" if isinstance(b, LoopBatcher) else "thread",
                         "max_batch_size": b.max_batch_size, "max_queue_delay_ms": self.settings.max_queue_delay_ms,
                         "max_queue_size": b.max_queue_size, "queue_depth": b.depth,
                         "inference_count": b.inference_count, "execution_count": b.execution_count,
                         "average_batch_size": round(b.average_batch_size, 4)},
            "limits": {"max_k": self.settings.max_k, "max_history_len": self.settings.max_history_len,
                       "max_candidates": self.settings.max_candidates,
                       "max_batch_requests": self.settings.max_batch_requests,
                       "max_body_bytes": self.settings.max_body_bytes},
        }

