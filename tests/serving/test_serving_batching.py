"""Both batchers (thread: ThreadBatcher, loop: LoopBatcher): size or delay, idle dispatch, preferred sizes,
bounded queue, jobs, failures."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

import serving.batching
from serving.batching import BatcherStopped, LoopBatcher, MicroBatcher, QueueFullError, ThreadBatcher
from serving.metrics import ServingMetrics


class Recorder:
    """An execute function that records batch sizes and can be held closed by a gate."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, payloads: list) -> list:
        self.started.set()
        self.gate.wait(10)
        self.sizes.append(len(payloads))
        return [p * 2 if p != "boom" else ValueError("bad item") for p in payloads]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=[ThreadBatcher, LoopBatcher], ids=["thread", "loop"])
def kind(request: pytest.FixtureRequest) -> type:
    """The batcher class: every contract test below runs for both execution modes."""
    return request.param


def test_full_batch_is_sent_without_waiting_for_the_delay(kind: type) -> None:
    rec = Recorder()
    b = kind(rec, max_batch_size=4, max_queue_delay_s=5.0, max_queue_size=100, idle_dispatch=False)
    b.start()

    async def main() -> tuple[list, float]:
        t0 = time.perf_counter()
        out = await asyncio.gather(*(b.submit(i) for i in range(4)))
        return out, time.perf_counter() - t0

    try:
        out, took = run(main())
    finally:
        b.stop()
    assert out == [0, 2, 4, 6]
    assert rec.sizes == [4]
    assert took < 2.0  # far below the 5 s delay


def test_partial_batch_waits_for_the_oldest_request_delay(kind: type) -> None:
    rec = Recorder()
    b = kind(rec, max_batch_size=64, max_queue_delay_s=0.15, max_queue_size=100, idle_dispatch=False)
    b.start()

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit(i) for i in range(3)))
        return time.perf_counter() - t0

    try:
        took = run(main())
    finally:
        b.stop()
    assert rec.sizes == [3]
    assert 0.1 <= took < 2.0
    assert b.average_batch_size == 3.0


# ------------------------------------------------------------------------------- idle dispatch, under load


def test_a_lone_request_on_an_idle_server_is_sent_at_once(kind: type) -> None:
    """Idle dispatch: no max_queue_delay for a request that nothing else accompanies (Triton-like)."""
    rec = Recorder()
    metrics = ServingMetrics()
    b = kind(rec, max_batch_size=32, max_queue_delay_s=5.0, max_queue_size=10, metrics=metrics)
    b.start()

    async def main() -> list[float]:
        took = []
        for i in range(3):  # sequential requests: every batch holds one, the server stays idle
            t0 = time.perf_counter()
            await b.submit(i)
            took.append(time.perf_counter() - t0)
        return took

    try:
        took = run(main())
    finally:
        b.stop()
    assert max(took) < 1.0, took  # far below the 5 s delay
    assert rec.sizes == [1, 1, 1] and b.idle_dispatches == 3
    assert metrics.sample("ssi_queue_seconds_sum") < 1.0


def test_loop_mode_under_load_waits_for_the_delay_then_idles_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of several requests (requests overlapped) put the batcher under load: the next lone request waits
    for max_queue_delay (more may come); after IDLE_AFTER_DELAYS quiet delays it is idle again."""
    monkeypatch.setattr(serving.batching, "IDLE_AFTER_DELAYS", 3)
    rec = Recorder()
    b = LoopBatcher(rec, max_batch_size=32, max_queue_delay_s=0.2, max_queue_size=10)
    b.start()

    async def timed(n: int) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit(i) for i in range(n)))
        return time.perf_counter() - t0

    async def main() -> list[float]:
        first = await timed(8)  # idle: the first runs at once in its handler, the 7 of the same turn together
        # at the end of it (arrivals per batch 1 then 7: moving average 1.56, under load)
        loaded = await timed(1)  # recent batches held several: under load, waits for the delay
        await asyncio.sleep(0.9)  # > 3 x 0.2 s since that batch: idle again
        idle = await timed(1)
        return [first, loaded, idle]

    try:
        first, loaded, idle = run(main())
    finally:
        b.stop()
    assert rec.sizes == [1, 7, 1, 1]
    assert first < 0.15 and 0.15 <= loaded < 2.0 and idle < 0.15, (first, loaded, idle)
    assert b.eager_dispatches == 2  # the first of the burst and the idle one


def test_loop_mode_runs_a_lone_request_on_an_idle_server_in_its_own_handler() -> None:
    """No loop turn for an isolated request: its future is done when enqueue returns; a request that arrives
    right after it (within max(max_queue_delay, EAGER_GAP_S)) waits for the end of the turn as before."""
    rec = Recorder()
    b = LoopBatcher(rec, max_batch_size=32, max_queue_delay_s=0.2, max_queue_size=10)
    b.start()

    async def main() -> tuple[bool, bool, bool]:
        (lone,) = b.enqueue([1])
        done_at_once = lone.done()
        (right_after,) = b.enqueue([2])  # within the gap: not run at once
        pending = not right_after.done()
        await right_after
        await asyncio.sleep(0.25)  # > max(0.2 s, EAGER_GAP_S) since the last arrival, idle: at once again
        (later,) = b.enqueue([3])
        return done_at_once, pending, later.done()

    try:
        assert run(main()) == (True, True, True)
    finally:
        b.stop()
    assert rec.sizes == [1, 1, 1] and b.eager_dispatches == 2 and b.idle_dispatches == 3


def test_preferred_batch_size_goes_before_the_delay() -> None:
    rec = Recorder()
    b = LoopBatcher(rec, max_batch_size=32, max_queue_delay_s=5.0, max_queue_size=100, preferred_batch_sizes=[3],
                    idle_dispatch=False)
    b.start()

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit(i) for i in range(3)))
        return time.perf_counter() - t0

    try:
        took = run(main())
    finally:
        b.stop()
    assert rec.sizes == [3] and took < 2.0


def test_thread_mode_under_load_waits_for_a_preferred_size() -> None:
    """Thread mode: requests that queued while a batch ran make the batcher busy; the next batch then goes
    when it reaches a preferred size (2 here), not at the first request."""
    rec = Recorder()
    rec.gate.clear()
    b = ThreadBatcher(rec, max_batch_size=32, max_queue_delay_s=5.0, max_queue_size=100, preferred_batch_sizes=[2])
    b.start()

    async def main() -> float:
        first = asyncio.ensure_future(b.submit(0))  # idle: sent at once, held by the gate
        await asyncio.to_thread(rec.started.wait, 5)
        queued = [asyncio.ensure_future(b.submit(i)) for i in range(1, 9)]  # wait while the worker is busy
        await asyncio.sleep(0.05)
        rec.gate.set()
        await asyncio.gather(first, *queued)  # batch [0], then the 8 (the worker is free: idle, all queued)
        t0 = time.perf_counter()
        a = asyncio.ensure_future(b.submit(9))  # recent batches held several: under load, waits for a second one
        await asyncio.sleep(0.3)
        assert not a.done()
        await asyncio.gather(a, b.submit(10))
        return time.perf_counter() - t0

    try:
        took = run(main())
    finally:
        rec.gate.set()
        b.stop()
    assert rec.sizes == [1, 8, 2] and 0.3 <= took < 4.0, (rec.sizes, took)


def test_batches_never_exceed_max_batch_size_and_counts_add_up(kind: type) -> None:
    rec = Recorder()
    metrics = ServingMetrics()
    b = kind(rec, max_batch_size=5, max_queue_delay_s=0.01, max_queue_size=1000, metrics=metrics)
    b.start()

    async def main() -> list:
        return await asyncio.gather(*(b.submit(i) for i in range(23)))

    try:
        out = run(main())
    finally:
        b.stop()
    assert out == [2 * i for i in range(23)]
    assert max(rec.sizes) <= 5 and sum(rec.sizes) == 23
    assert b.inference_count == 23 and b.execution_count == len(rec.sizes)
    assert metrics.sample("ssi_inference_count_total") == 23
    assert metrics.sample("ssi_execution_count_total") == len(rec.sizes)
    assert metrics.sample("ssi_average_batch_size") == pytest.approx(23 / len(rec.sizes))
    assert metrics.sample("ssi_batch_size_count") == len(rec.sizes)


def test_bounded_queue_rejects_when_full() -> None:
    rec = Recorder()
    rec.gate.clear()  # the worker blocks inside its first batch
    b = MicroBatcher(rec, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2)
    b.start()

    async def main() -> tuple[list, type]:
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.to_thread(rec.started.wait, 5)  # request 1 is executing, the queue is empty
        queued = [asyncio.ensure_future(b.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            b.enqueue([4])
        rec.gate.set()
        return await asyncio.gather(first, *queued), QueueFullError

    try:
        out, _ = run(main())
    finally:
        rec.gate.set()
        b.stop()
    assert out == [2, 4, 6]


def test_enqueue_is_all_or_nothing(kind: type) -> None:
    rec = Recorder()
    rec.gate.clear()
    b = kind(rec, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=3)
    b.start()

    async def main() -> int:
        with pytest.raises(QueueFullError):
            b.enqueue([1, 2, 3, 4])
        return b.depth

    try:
        assert run(main()) == 0
    finally:
        b.stop()
    assert rec.sizes == []


def test_item_exception_fails_only_that_request(kind: type) -> None:
    b = kind(Recorder(), max_batch_size=8, max_queue_delay_s=0.01, max_queue_size=10)
    b.start()

    async def main() -> list:
        return await asyncio.gather(b.submit(1), b.submit("boom"), b.submit(3), return_exceptions=True)

    try:
        out = run(main())
    finally:
        b.stop()
    assert out[0] == 2 and out[2] == 6 and isinstance(out[1], ValueError)


def test_jobs_run_on_the_worker_thread_between_batches() -> None:
    assert MicroBatcher is ThreadBatcher  # the former name still works
    names: list[str] = []
    b = MicroBatcher(lambda p: [x for x in p], max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=10)
    b.start()
    try:
        fut = b.run_job(lambda: names.append(threading.current_thread().name) or 42)
        assert fut.result(5) == 42
        failing = b.run_job(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(5)
    finally:
        b.stop()
    assert names == ["serving-worker"]


def test_requests_are_served_while_jobs_keep_coming() -> None:
    """A stream of slow jobs (an /eval) must not starve requests: they alternate."""
    b = MicroBatcher(lambda p: list(p), max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=100)
    b.start()
    jobs = [b.run_job(lambda: time.sleep(0.05)) for _ in range(20)]  # 1 s of jobs

    async def main() -> float:
        t0 = time.perf_counter()
        await b.submit(1)
        return time.perf_counter() - t0

    try:
        took = run(main())
    finally:
        for j in jobs:
            j.result(10)
        b.stop()
    assert took < 0.5


# ------------------------------------------------------------------------------------------- loop mode


def test_loop_mode_batches_what_arrived_in_one_turn_on_the_loop_thread() -> None:
    threads: list[str] = []

    def execute(payloads: list) -> list:
        threads.append(threading.current_thread().name)
        return [p + 1 for p in payloads]

    b = LoopBatcher(execute, max_batch_size=32, max_queue_delay_s=0.0, max_queue_size=100)
    b.start()

    async def main() -> list:
        # one turn: the first at once (an idle server's lone arrival), the 6 after it in one batch
        first = await asyncio.gather(*(b.submit(i) for i in range(7)))
        second = await b.submit(100)  # right after: at the end of its turn
        return first + [second]

    try:
        out = run(main())
    finally:
        b.stop()
    assert out == [1, 2, 3, 4, 5, 6, 7, 101]
    assert b.execution_count == 3 and b.inference_count == 8 and b.eager_dispatches == 1
    assert threads == [threading.current_thread().name] * 3  # asyncio.run's thread: the loop's own


def test_loop_mode_stop_fails_what_is_queued_and_refuses_new_work() -> None:
    b = LoopBatcher(lambda p: list(p), max_batch_size=8, max_queue_delay_s=5.0, max_queue_size=10,
                    idle_dispatch=False)
    b.start()

    async def main() -> object:
        (fut,) = b.enqueue([1])  # waits for the 5 s delay
        b.stop()
        with pytest.raises(BatcherStopped):
            b.enqueue([2])
        return await asyncio.gather(fut, return_exceptions=True)

    (out,) = run(main())
    assert isinstance(out, BatcherStopped) and not b.running
    with pytest.raises(BatcherStopped):
        b.run_job(lambda: 1)


def test_loop_mode_jobs_run_on_their_own_thread() -> None:
    b = LoopBatcher(lambda p: list(p), max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=10)
    b.start()
    try:
        assert b.run_job(lambda: threading.current_thread().name).result(5).startswith("serving-jobs")
        with pytest.raises(ZeroDivisionError):
            b.run_job(lambda: 1 / 0).result(5)
    finally:
        b.stop()


def test_loop_run_now_runs_a_lone_request_at_once_and_counts_it_as_enqueue_would() -> None:
    """LoopBatcher.run_now (the service's path for a lone request): on an idle server the payload runs in the caller,
    without a queue entry or a future, counted as an arrival, an idle and eager dispatch and a batch of one; when a
    request is queued, or the last arrival was too recent, it answers NOT_NOW and changes nothing."""
    from serving.batching import NOT_NOW

    rec = Recorder()
    metrics = ServingMetrics()
    b = LoopBatcher(rec, max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=10, metrics=metrics)
    b.start()

    async def main() -> tuple:
        first = b.run_now(3)
        too_soon = b.run_now(4)  # within EAGER_GAP_S of the first: queue it
        await asyncio.sleep(2 * serving.batching.EAGER_GAP_S)
        failed = b.run_now("boom")
        fut = b.enqueue([5, 6])  # right after a batch: queued, flushed at the end of this loop turn
        busy = b.run_now(7)  # something is queued
        return first, too_soon, failed, busy, await asyncio.gather(*fut)

    try:
        first, too_soon, failed, busy, queued = run(main())
    finally:
        b.stop()
    assert first == 6 and too_soon is NOT_NOW and busy is NOT_NOW and queued == [10, 12]
    assert isinstance(failed, ValueError)
    assert rec.sizes == [1, 1, 2] and b.inference_count == 4 and b.execution_count == 3
    assert b.eager_dispatches == 2 and b.idle_dispatches == 3
    assert metrics.sample("ssi_queue_seconds_count") == 4 and metrics.sample("ssi_batch_size_count") == 3
    with pytest.raises(BatcherStopped):
        b.run_now(1)
