"""Prometheus metrics (Triton-style) in a registry of their own, one per app.

Requests and errors by endpoint and status, request latency, the stages of a /recommend request
(parse -> queue -> encode -> search -> serialise), executed batch sizes, queue depth, inference count vs execution count (and their ratio, the
average executed batch size), the loaded model version, reloads and /eval runs, and the usual
``process_*`` (CPU seconds, resident memory, open files) and ``python_gc_*`` families.

The metrics a request touches on its way (requests, errors, latency, the stages, batch sizes, inference and
execution counts) are plain counters read by a custom collector (``HotPathCollector``, prometheus_client's
documented way to export values it does not own) when ``/metrics`` is scraped: an observation is a ``bisect``
and two additions, with no lock and no per-call checks (prometheus_client's ``Histogram.observe`` takes a lock
per value and walks the bucket bounds in Python: about 1 us a call, ten calls a request, and several times that
on a cold CPU, measured in ``loadtest/README.md``, issue 27 part 4). Each of them has one writer thread (the
event loop; the batch metrics: the thread that executes batches), so no update is lost. The exposition is
prometheus_client's (same names, types, labels and bucket bounds; only the ``*_created`` samples are gone). The
rest (model info, reloads, /eval, slow clients) are prometheus_client's own metrics.
"""
from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
CLIENT_CLOSED = 499  # nginx's code for a request whose client left before the answer
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def observe_many(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for every value (``FastHistogram.observe_many`` when it has one)."""
    many = getattr(histogram, "observe_many", None)
    if many is not None:
        many(values)
        return
    for v in values:
        histogram.observe(v)


class FastHistogram:
    """A histogram whose ``observe`` is one ``bisect`` and two additions (no lock: one writer thread).

    ``counts[i]`` holds the values in bucket ``i`` alone (``bounds[i - 1] < v <= bounds[i]``, the last one +Inf);
    the exposition makes them cumulative, as Prometheus wants them."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value, as prometheus_client
        self.sum += value

    def observe_many(self, values: list[float]) -> None:
        counts, bounds = self.counts, self.bounds
        for v in values:
            counts[bisect.bisect_left(bounds, v)] += 1
        self.sum += sum(values)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last (``HistogramMetricFamily.add_metric``'s form)."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts):
            total += n
            out.append((floatToGoString(bound), float(total)))
        return out


class FastCounter:
    """A counter whose ``inc`` is one addition (no lock: one writer thread)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HotPathCollector:
    """Exports the hot-path metrics of one ``ServingMetrics`` at scrape time (a prometheus_client custom
    collector: ``collect`` yields metric families)."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.m = metrics

    def collect(self) -> Any:
        m = self.m
        requests = CounterMetricFamily("ssi_requests", REQUESTS_DOC, labels=["endpoint", "method", "status"])
        errors = CounterMetricFamily("ssi_request_errors", ERRORS_DOC, labels=["endpoint", "status"])
        for (endpoint, method, status), (total, _, _) in list(m._request_children.items()):
            requests.add_metric([endpoint, method, str(status)], total.value)
        for (endpoint, status), error in list(m._errors_by_key.items()):
            errors.add_metric([endpoint, str(status)], error.value)
        yield requests
        yield errors
        latency = HistogramMetricFamily("ssi_request_seconds", REQUEST_SECONDS_DOC, labels=["endpoint"])
        for endpoint, h in list(m._latency_by_endpoint.items()):
            latency.add_metric([endpoint], h.buckets(), h.sum)
        yield latency
        for name, doc, h in ((name, doc, getattr(m, attr)) for name, attr, doc, _ in HOT_HISTOGRAMS):
            family = HistogramMetricFamily(name, doc)
            family.add_metric([], h.buckets(), h.sum)
            yield family
        yield CounterMetricFamily("ssi_inference_count", INFERENCE_DOC, value=m.inference_count.value)
        yield CounterMetricFamily("ssi_execution_count", EXECUTION_DOC, value=m.execution_count.value)


REQUESTS_DOC = ("HTTP requests by endpoint and status; status 499: the client closed the connection before an answer "
                "(nothing sent, not a server error)")
ERRORS_DOC = "HTTP responses with status >= 400 (499, client closed, is not a response and is not counted here)"
REQUEST_SECONDS_DOC = "HTTP request latency"
INFERENCE_DOC = "requests executed by the worker"
EXECUTION_DOC = "batches executed by the worker"
# (metric name, ServingMetrics attribute, help, buckets)
HOT_HISTOGRAMS: tuple[tuple[str, str, str, tuple[float, ...]], ...] = (
    ("ssi_parse_seconds", "parse_seconds", ("request arrival to the /recommend handler: body read, JSON decoding, "
     "validation, routing"), LATENCY_BUCKETS),
    ("ssi_serialize_seconds", "serialize_seconds", ("/recommend handler return to the response start: response "
     "validation and JSON encoding"), LATENCY_BUCKETS),
    ("ssi_queue_seconds", "queue_seconds", "time a request waited in the batch queue", LATENCY_BUCKETS),
    ("ssi_encode_seconds", "encode_seconds", ("encoder time per executed batch (fuse_topk, the CPU default: the one "
     "ONNX Runtime call of the encoder and the top-k)"), LATENCY_BUCKETS),
    ("ssi_search_seconds", "search_seconds", ("search/scoring time per executed batch (fuse_topk: what follows the "
     "fused call: results per request, candidate lists)"), LATENCY_BUCKETS),
    ("ssi_batch_size", "batch_size", "executed batch sizes", BATCH_BUCKETS),
)


class ServingMetrics:
    """All metrics of one server instance. ``render()`` gives the Prometheus text format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.slow_clients = Counter("ssi_slow_client_timeouts", "connections closed because the request headers or "
                                    "body did not arrive within header_timeout_s / body_timeout_s", ["stage"],
                                    registry=r)
        for _, attr, _, buckets in HOT_HISTOGRAMS:  # parse_seconds, ..., batch_size: exported by HotPathCollector
            setattr(self, attr, FastHistogram(buckets))
        self.parse_seconds: FastHistogram
        self.serialize_seconds: FastHistogram
        self.queue_seconds: FastHistogram
        self.encode_seconds: FastHistogram
        self.search_seconds: FastHistogram
        self.batch_size: FastHistogram
        self.inference_count = FastCounter()
        self.execution_count = FastCounter()
        self.queue_depth = Gauge("ssi_queue_depth", "requests waiting in the batch queue (read when scraped)",
                                 registry=r)
        self.avg_batch_size = Gauge("ssi_average_batch_size", "inference count / execution count", registry=r)
        self.model_info = Gauge("ssi_model_info", "loaded model (value 1)", ["name", "version", "backend"], registry=r)
        self.model_loaded_at = Gauge("ssi_model_loaded_timestamp_seconds", "when the model was loaded", registry=r)
        self.reloads = Counter("ssi_reloads", "model reloads by result", ["result"], registry=r)
        self.evals = Counter("ssi_eval_runs", "/eval runs by result", ["result"], registry=r)
        self.eval_seconds = Histogram("ssi_eval_seconds", "/eval duration", buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
                                      registry=r)
        # (endpoint, method, status) -> (requests, errors or None, latency of the endpoint)
        self._request_children: dict[tuple[str, str, int], tuple[FastCounter, FastCounter | None, FastHistogram]] = {}
        self._latency_by_endpoint: dict[str, FastHistogram] = {}
        self._errors_by_key: dict[tuple[str, int], FastCounter] = {}
        r.register(HotPathCollector(self))
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ... (Linux)
        GCCollector(registry=r)

    def set_average_batch_size(self, fn: Callable[[], float]) -> None:
        self.avg_batch_size.set_function(fn)

    def set_queue_depth(self, fn: Callable[[], float]) -> None:
        """The queue depth, read when scraped (nothing to update per request)."""
        self.queue_depth.set_function(fn)

    def set_model(self, name: str, version: str, backend: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, backend=backend).set(1)
        self.model_loaded_at.set(time.time())

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (endpoint, method, status)
        children = self._request_children.get(key)
        if children is None:  # once per key
            latency = self._latency_by_endpoint.get(endpoint)
            if latency is None:
                latency = self._latency_by_endpoint[endpoint] = FastHistogram(LATENCY_BUCKETS)
            error = None
            if status >= 400 and status != CLIENT_CLOSED:  # one error counter per (endpoint, status), any method
                error = self._errors_by_key.get((endpoint, status))
                if error is None:
                    error = self._errors_by_key[(endpoint, status)] = FastCounter()
            children = self._request_children[key] = (FastCounter(), error, latency)
        total, error, latency = children
        total.value += 1
        if error is not None:
            error.value += 1
        latency.observe(seconds)

    def observe_queue_waits(self, waits: list[float]) -> None:
        """One batch's queue waits: each bucket and the sum updated once per batch, not once per request."""
        self.queue_seconds.observe_many(waits)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def sample(self, name: str, labels: dict[str, Any] | None = None) -> float | None:
        """One sample's value (for tests and /model)."""
        return self.registry.get_sample_value(name, labels or {})
