"""The running server's state and operations: the current model, the batcher, recommend and reload.

``/eval`` lives in ``serving.evaluation`` (it reads the current model and runs its chunks as batcher
jobs through ``current()`` and ``run_job()``).

The current ``ModelState`` is one reference, replaced atomically on reload. A request captures it
when it is validated and is executed with that same version, so no request fails (or is mixed with
another catalogue) while a reload swaps versions.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from serving.artifact import ArtifactError
from serving.batching import NOT_NOW, BatcherStopped, LoopBatcher, QueueFullError, ThreadBatcher
from serving.config import Settings
from serving.engine import Executor, ModelState, Prepared, load_state, prepare, to_answer
from serving.errors import ServingError
from serving.metrics import ServingMetrics
from serving.schemas import RecommendRequest, RecommendResponse, ReloadResponse
from serving.security import artifact_display_name

log = logging.getLogger("serving")
RETRY_AFTER_S = "1"


def _expire(futures: list[asyncio.Future]) -> None:
    """The request deadline passed: fail whatever is still waiting (the batcher skips done futures)."""
    for fut in futures:
        if not fut.done():
            fut.set_exception(TimeoutError())


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
    """Owns the model state, the micro-batcher and the reload lock."""

    def __init__(self, settings: Settings, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state: ModelState | None = None
        self.batcher: ThreadBatcher | LoopBatcher | None = None  # made in start(), once the backend is known
        self._reload_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, preloaded: ModelState | None = None) -> None:
        """Load (unless given) and warm the model, then start the worker: from here on, ready."""
        state = preloaded or await asyncio.to_thread(load_state, self.settings)
        self._install(state)
        if self.batcher is None:
            kind = LoopBatcher if batching_mode(self.settings, state) == "loop" else ThreadBatcher
            s = self.settings
            self.batcher = kind(Executor(self.metrics), s.max_batch_size, s.max_queue_delay_s, s.max_queue_size,
                                self.metrics, preferred_batch_sizes=s.preferred_batch_sizes,
                                idle_dispatch=s.idle_dispatch)
        self.batcher.start()
        self._freeze(collect=True)

    def _freeze(self, collect: bool) -> None:
        """``gc_freeze``: what the server holds now (app, model, libraries) leaves the collector's generations, so
        that its collections scan only the objects requests create (``gc.freeze``; reference counting still frees
        a frozen object, e.g. the model a reload replaced). At start-up a full collection first; on reload not (it
        would hold the event loop for tens of milliseconds)."""
        if self.settings.gc_freeze:
            if collect:
                gc.collect()
            gc.freeze()

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

    def _batcher(self) -> ThreadBatcher | LoopBatcher:
        if self.batcher is None:
            raise _not_ready()
        return self.batcher

    def run_job(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn()`` as a batcher job (the /eval chunks): beside the request batches, never on the loop."""
        return self._batcher().run_job(fn)

    # ------------------------------------------------------------------ recommend
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        """One request as a validated ``RecommendResponse`` (Python callers; HTTP uses ``recommend_many``)."""
        (body,) = await self.recommend_many([req])
        items = body["items"]
        return RecommendResponse(**{**body, "items": items.tolist() if hasattr(items, "tolist") else items,
                                    "scores": body["scores"].tolist()})

    async def recommend_many(self, reqs: list[RecommendRequest], label: str = "requests") -> list[dict[str, Any]]:
        """Validate every request first (422 names the bad one), then queue all queries at once. Returns the
        answer bodies (``engine.to_answer``: dicts of arrays, written by ``serving.responses``)."""
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
        if len(prepared) == 1:  # the usual call: one request, no bookkeeping
            p = prepared[0]
            return [to_answer(p, p.result if p.query is None else (await self._run([p.query]))[0])]
        todo = [p for p in prepared if p.query is not None]
        results = await self._run([p.query for p in todo]) if todo else []
        ranked = dict(zip(map(id, todo), results))
        return [to_answer(p, p.result if p.query is None else ranked[id(p)]) for p in prepared]

    async def _run(self, queries: list[Any]) -> list[Any]:
        batcher = self._batcher()
        if len(queries) == 1 and isinstance(batcher, LoopBatcher):  # a lone request on an idle server: run here
            try:
                result = batcher.run_now(queries[0])
            except BatcherStopped as e:
                raise ServingError(503, "shutting_down", str(e), headers={"Retry-After": RETRY_AFTER_S}) from None
            if result is not NOT_NOW:
                if isinstance(result, Exception):
                    log.error("inference failed", exc_info=result)
                    raise ServingError(500, "inference_failed", "inference failed; see the server log") from None
                return [result]
        try:
            futures = batcher.enqueue(queries)
        except QueueFullError as e:
            raise ServingError(503, "overloaded", f"{e}; retry shortly", headers={"Retry-After": RETRY_AFTER_S}) from None
        except BatcherStopped as e:
            raise ServingError(503, "shutting_down", str(e), headers={"Retry-After": RETRY_AFTER_S}) from None
        # the deadline: one timer that fails what is still waiting (cheaper than wait_for + gather per request);
        # none when the batcher ran the request at once (loop mode, idle server: its future is done already)
        deadline = (None if futures[-1].done() else
                    asyncio.get_running_loop().call_later(self.settings.request_timeout_s, _expire, futures))
        try:
            if len(futures) == 1:
                return [await futures[0]]
            return await asyncio.gather(*futures)
        except TimeoutError:
            raise ServingError(504, "timeout", f"no answer within {self.settings.request_timeout_s}s") from None
        except BatcherStopped as e:
            raise ServingError(503, "shutting_down", str(e), headers={"Retry-After": RETRY_AFTER_S}) from None
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("inference failed")
            raise ServingError(500, "inference_failed", "inference failed; see the server log") from None
        finally:
            if deadline is not None:
                deadline.cancel()

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
        self._freeze(collect=False)
        self.metrics.reloads.labels(result="ok").inc()
        log.info("reloaded: %s -> %s", old.version, new.version)
        return ReloadResponse(reloaded=True, previous=old.version, model=new.version, path=artifact_display_name(new.artifact.path, self.settings),
                              seconds=round(time.perf_counter() - t0, 4))

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
                         "preferred_batch_sizes": sorted(b.preferred_batch_sizes), "idle_dispatch": b.idle_dispatch,
                         "max_queue_size": b.max_queue_size, "queue_depth": b.depth,
                         "inference_count": b.inference_count, "execution_count": b.execution_count,
                         "idle_dispatches": b.idle_dispatches,
                         "eager_dispatches": getattr(b, "eager_dispatches", 0),
                         "average_batch_size": round(b.average_batch_size, 4)},
            "limits": {"max_k": self.settings.max_k, "max_history_len": self.settings.max_history_len,
                       "max_candidates": self.settings.max_candidates,
                       "max_batch_requests": self.settings.max_batch_requests,
                       "max_body_bytes": self.settings.max_body_bytes},
        }

