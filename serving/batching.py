"""Dynamic micro-batching, in two execution modes behind one interface.

When a batch goes (both modes; Triton's dynamic batcher with preferred sizes, plus idle dispatch):

- at once when it holds ``max_batch_size`` requests, or one of the ``preferred_batch_sizes``;
- **idle dispatch**: at once when the server is idle, i.e. the recent batches held a single arrival each
  (their moving average, ``LOAD_EWMA`` over about five batches, is below ``BUSY_BATCH``: no concurrency
  seen; an arrival is one ``enqueue`` call, so the requests of one ``/recommend/batch`` call count once:
  they came together and say nothing about how soon the next request comes) or the last one ended more
  than ``IDLE_AFTER_DELAYS`` x ``max_queue_delay`` ago. A lone request
  never waits for ``max_queue_delay``: its queue wait is the time to the next turn of the event loop
  (``loop``) or to the worker's wake-up (``thread``);
- **under load** (recent batches held two or more arrivals on average, and the last one ended recently):
  when the oldest queued request has waited ``max_queue_delay``, unless a size above is reached first.
  Batches form only when requests overlap, and grow with the load; a moving average rather than the last
  batch alone, so that one batch of one under load does not switch the waiting off (measured: the last
  batch alone gave 0.84x of the throughput at 16 users, ``loadtest/README.md``).

``idle_dispatch=False`` restores the plain rule (always wait for the size or the delay).

- ``ThreadBatcher`` (mode ``thread``, also ``MicroBatcher``): one worker thread owns ORT and FAISS. Besides
  request batches the worker runs *jobs* (callables, e.g. chunks of an ``/eval``), alternating with batches
  so that a long job stream never starves ``/recommend``. The mode for GPU backends: a CUDA call waits for
  the device without the GIL, and FAISS GPU indexes must stay on one thread.
- ``LoopBatcher`` (mode ``loop``): the batch runs on the event-loop thread itself, at the end of the loop
  turn that queued its first request (every request that arrived in that turn joins), or later under load
  as above; a lone request on an idle server with no other arrival and no batch end for
  ``max(max_queue_delay, EAGER_GAP_S)`` runs at once, inside its own handler (no loop turn, no future to
  wake: the usual case at low rates). No thread hand-off, no GIL ping-pong and no cross-thread wake-up per batch: on a CPU backend,
  where the model work is a few hundred microseconds of CPU that would hold the GIL anyway, this is the
  faster mode (``python -m loadtest.bench`` measures both). Jobs run on a separate thread (ORT sessions
  and the CPU searchers are safe to call concurrently).

Both queues are bounded: ``enqueue`` raises ``QueueFullError`` when full (the API answers 503 with
Retry-After). ``execute(payloads) -> results``: a result that is an ``Exception`` fails only its own
request, an exception raised by ``execute`` fails the whole batch.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.metrics import ServingMetrics

log = logging.getLogger("serving.batching")
IDLE_AFTER_DELAYS = 10  # idle again when the last batch ended this many max_queue_delays ago
EAGER_GAP_S = 0.001  # loop mode: a lone request runs in its own handler when none arrived for max(delay, this)
LOAD_EWMA = 0.2  # weight of the newest batch size in the moving average of batch sizes
BUSY_BATCH = 1.5  # under load when that average is at least this


NOT_NOW = object()  # LoopBatcher.run_now: not run, queue it


class QueueFullError(Exception):
    """The request queue is full; retry later."""


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no more work."""


@dataclass(slots=True)
class _Pending:
    payload: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)
    arrival: bool = True  # the first payload of its enqueue call (one HTTP request, even a /recommend/batch call)


def _deliver(fut: asyncio.Future, value: Any, error: BaseException | None) -> None:
    """Runs on the event loop: complete a future unless it was cancelled (client gone, timeout)."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def _deliver_all(done: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    """Runs on the event loop: a whole batch's results in one wake-up of the loop."""
    for fut, value, error in done:
        _deliver(fut, value, error)


class _Batcher:
    """What both modes share: the execute function, limits, counters and metrics."""

    def __init__(
        self,
        execute: Callable[[list[Any]], Sequence[Any]],
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        metrics: ServingMetrics | None = None,
        preferred_batch_sizes: Sequence[int] = (),
        idle_dispatch: bool = True,
    ) -> None:
        self.execute = execute
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.metrics = metrics
        self.preferred_batch_sizes = frozenset(b for b in preferred_batch_sizes if 1 <= b <= max_batch_size)
        self.idle_dispatch = idle_dispatch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._stopping = False
        self.inference_count = 0  # requests executed
        self.execution_count = 0  # batches executed
        self.idle_dispatches = 0  # batches sent at once because the server was idle
        self._load = 0.0  # moving average of arrivals per executed batch (LOAD_EWMA)
        self._last_end = -math.inf  # when it ended (perf_counter)
        if metrics is not None:
            metrics.set_average_batch_size(lambda: self.average_batch_size)
            metrics.set_queue_depth(lambda: self.depth)
        self._init_mode()

    def _idle(self, now: float) -> bool:
        """Idle dispatch applies: no concurrency seen in the recent batches, or the last one ended long ago."""
        return self.idle_dispatch and (
            self._load < BUSY_BATCH or now - self._last_end > IDLE_AFTER_DELAYS * self.max_queue_delay_s)

    def _size_reached(self, size: int) -> bool:
        return size >= self.max_batch_size or size in self.preferred_batch_sizes

    def _init_mode(self) -> None:
        """The mode's own state (threads, locks); called at the end of ``__init__``."""

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def average_batch_size(self) -> float:
        return self.inference_count / self.execution_count if self.execution_count else 0.0

    async def submit(self, payload: Any, timeout: float | None = None) -> Any:
        """Queue one payload and wait for its result."""
        (fut,) = self.enqueue([payload])
        return await asyncio.wait_for(fut, timeout)

    def _admit(self, payloads: Sequence[Any]) -> list[_Pending]:
        """Wrap ``payloads`` for the queue, or raise when stopping / full. Call with the queue guarded."""
        if self._stopping:
            raise BatcherStopped("server is shutting down")
        if len(self._queue) + len(payloads) > self.max_queue_size:
            raise QueueFullError(f"request queue is full ({len(self._queue)}/{self.max_queue_size})")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        return [_Pending(p, loop.create_future(), loop, now, i == 0) for i, p in enumerate(payloads)]

    def _pop_batch(self) -> list[_Pending]:
        """Up to ``max_batch_size`` queued requests whose callers still wait. Call with the queue guarded."""
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.max_batch_size:
            p = self._queue.popleft()
            if not p.future.done():  # skip requests whose caller gave up
                batch.append(p)
        return batch

    def _execute(self, batch: list[_Pending]) -> list[Any]:
        """Run one batch and count it; never raises (a failed batch fails each of its requests)."""
        now = time.perf_counter()
        m = self.metrics
        if m is not None:
            if len(batch) == 1:
                m.queue_seconds.observe(now - batch[0].enqueued)
            else:
                m.observe_queue_waits([now - p.enqueued for p in batch])
            m.batch_size.observe(len(batch))
        try:
            results = list(self.execute([p.payload for p in batch]))
        except Exception as e:
            log.exception("batch of %d failed", len(batch))
            results = [e] * len(batch)
        self.inference_count += len(batch)
        self.execution_count += 1
        arrivals = batch[0].arrival if len(batch) == 1 else sum(p.arrival for p in batch)  # arrivals, not payloads
        self._load += LOAD_EWMA * (arrivals - self._load)
        self._last_end = time.perf_counter()
        if m is not None:
            m.inference_count.inc(len(batch))
            m.execution_count.inc()
        return results

    @staticmethod
    def _complete(p: _Pending, value: Any, error: BaseException | None) -> None:
        """Thread-safe: complete ``p`` on its own event loop."""
        try:
            p.loop.call_soon_threadsafe(_deliver, p.future, value, error)
        except RuntimeError:  # event loop already closed
            pass


class ThreadBatcher(_Batcher):
    """Mode ``thread``: requests from the event loop, executed in batches on one worker thread."""

    def _init_mode(self) -> None:
        self._jobs: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="serving-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work, let the current batch finish, fail whatever is still queued."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            pending, self._queue = list(self._queue), collections.deque()
            jobs, self._jobs = list(self._jobs), collections.deque()
        for p in pending:
            self._complete(p, None, BatcherStopped("server is shutting down"))
        for _, fut in jobs:
            fut.set_exception(BatcherStopped("server is shutting down"))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    # ------------------------------------------------------------------ producers
    def enqueue(self, payloads: Sequence[Any]) -> list[asyncio.Future]:
        """Queue all ``payloads`` or none (QueueFullError). Call from the event loop."""
        with self._cond:
            items = self._admit(payloads)
            self._queue.extend(items)
            self._cond.notify()
        return [i.future for i in items]

    def run_job(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn()`` on the worker thread between batches. Call from any thread but the worker."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise BatcherStopped("server is shutting down")
            self._jobs.append((fn, fut))
            self._cond.notify()
        return fut

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        prefer_job = False
        while True:
            with self._cond:
                while not self._queue and not self._jobs and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                if self._jobs and (prefer_job or not self._queue):
                    job = self._jobs.popleft()
                    batch = None
                else:
                    job, batch = None, self._take_batch()
            prefer_job = batch is not None
            if job is not None:
                self._run_job(*job)
            elif batch:
                self._run_batch(batch)

    def _take_batch(self) -> list[_Pending]:
        """With the lock held: pop a batch at once when idle, else when it reaches a size (max or preferred)
        or the oldest request is due."""
        if self._idle(time.perf_counter()):
            self.idle_dispatches += 1
            return self._pop_batch()
        deadline = self._queue[0].enqueued + self.max_queue_delay_s
        while self._queue and not self._size_reached(len(self._queue)) and not self._stopping:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        return self._pop_batch()

    @staticmethod
    def _run_job(fn: Callable[[], Any], fut: concurrent.futures.Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - the job's caller gets the exception
            fut.set_exception(e)

    def _run_batch(self, batch: list[_Pending]) -> None:
        results = self._execute(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any, BaseException | None]]] = {}
        for p, r in zip(batch, results):
            by_loop.setdefault(p.loop, []).append((p.future, r, r if isinstance(r, Exception) else None))
        for loop, done in by_loop.items():  # one thread-safe wake-up per loop, not one per request
            try:
                loop.call_soon_threadsafe(_deliver_all, done)
            except RuntimeError:  # event loop already closed
                pass


class LoopBatcher(_Batcher):
    """Mode ``loop``: batches run on the event-loop thread, jobs on one helper thread.

    The first request of a batch schedules a flush: when idle (or with ``max_queue_delay`` 0), right after
    the loop has run the callbacks that are ready now (every request that arrived in the same turn joins);
    under load, when the oldest request is due; a batch that reaches ``max_batch_size`` or a preferred size
    is flushed at the end of the turn. ``enqueue`` and the flush run on the loop thread; ``stop`` may be
    called from any thread.
    """

    def _init_mode(self) -> None:
        self._lock = threading.Lock()  # guards the queue against stop() from another thread
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._jobs: concurrent.futures.ThreadPoolExecutor | None = None
        self._last_arrival = -math.inf  # when the last enqueue call came (perf_counter)
        self._eager_gap = max(self.max_queue_delay_s, EAGER_GAP_S)
        self.eager_dispatches = 0  # batches run at once in the enqueuing handler (a lone request, idle server)

    def start(self) -> None:
        with self._lock:
            self._stopping = False
            if self._jobs is None:
                self._jobs = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="serving-jobs")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work and fail whatever is still queued (a batch runs to its end on the loop)."""
        with self._lock:
            self._stopping = True
            pending, self._queue = list(self._queue), collections.deque()
            jobs, self._jobs = self._jobs, None
        for p in pending:
            self._complete(p, None, BatcherStopped("server is shutting down"))
        if jobs is not None:
            jobs.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> bool:
        return self._jobs is not None and not self._stopping

    def enqueue(self, payloads: Sequence[Any]) -> list[asyncio.Future]:
        """Queue all ``payloads`` or none (QueueFullError). Call from the event loop.

        A lone arrival on an idle server (nothing queued, no other request and no batch end for
        ``max(max_queue_delay, EAGER_GAP_S)``) runs here and now, in the caller's handler: its futures are done
        when this returns (no loop turn, no wake-up). Requests that arrive in the same turn after it form the
        next batch."""
        with self._lock:
            items = self._admit(payloads)
            self._queue.extend(items)
            size = len(self._queue)
        if not items:
            return []
        arrived = items[0].enqueued
        # quiet since the last arrival and since the last batch ended: in a closed loop the next requests come
        # right after the answers, so a gap that only the batcher's own wait made does not count
        gap = arrived - max(self._last_arrival, self._last_end)
        self._last_arrival = arrived
        if size == len(items) and self._idle(arrived):  # first of a batch, idle
            self.idle_dispatches += 1
            if gap > self._eager_gap and self._flush_handle is None:
                self.eager_dispatches += 1
                self._flush(items[0].loop)
            else:
                self._schedule(items[0].loop, now=True)
        else:
            self._schedule(items[0].loop, now=self.max_queue_delay_s <= 0 or self._size_reached(size))
        return [i.future for i in items]

    def run_now(self, payload: Any) -> Any:
        """The eager case of ``enqueue`` for one payload, run here without a queue entry or a future: its result
        (an ``Exception`` instance for a failed request), or ``NOT_NOW`` when the payload must be queued (the
        server is not idle, something is queued or a flush is due, or the last arrival or batch end was less than
        ``max(max_queue_delay, EAGER_GAP_S)`` ago; nothing has changed then). Counted as ``enqueue`` counts it (an
        arrival, an idle and eager dispatch, its queue wait, the batch of one). Call from the event loop."""
        if self._stopping:
            raise BatcherStopped("server is shutting down")
        if self._queue or self._flush_handle is not None:
            return NOT_NOW
        now = time.perf_counter()
        if now - max(self._last_arrival, self._last_end) <= self._eager_gap or not self._idle(now):
            return NOT_NOW
        self._last_arrival = now
        self.idle_dispatches += 1
        self.eager_dispatches += 1
        return self._execute([_Pending(payload, None, None, now)])[0]  # type: ignore[arg-type]

    def run_job(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn()`` on the job thread. Call from any thread but the event loop's."""
        jobs = self._jobs
        if jobs is None or self._stopping:
            raise BatcherStopped("server is shutting down")
        return jobs.submit(fn)

    def _schedule(self, loop: asyncio.AbstractEventLoop, now: bool) -> None:
        handle = self._flush_handle
        if handle is not None:
            if not now or not isinstance(handle, asyncio.TimerHandle):
                return  # a flush is already due at least as soon
            handle.cancel()
        if now:
            self._flush_handle = loop.call_soon(self._flush, loop)
        else:  # the oldest request is due max_queue_delay after it arrived
            due = self._queue[0].enqueued + self.max_queue_delay_s if self._queue else time.perf_counter()
            self._flush_handle = loop.call_later(max(0.0, due - time.perf_counter()), self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_handle = None
        with self._lock:
            batch = self._pop_batch()
            left = len(self._queue)
        if left:  # more than one batch was queued: the rest has waited long enough
            self._schedule(loop, now=True)
        if not batch:
            return
        for p, r in zip(batch, self._execute(batch)):
            _deliver(p.future, r, r if isinstance(r, Exception) else None)


MicroBatcher = ThreadBatcher  # the former name of the thread mode
