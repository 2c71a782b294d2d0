"""Prometheus metrics (Triton-style) in a registry of their own, one per app.

Requests and errors by endpoint and status, request latency, the stages of a /recommend request
(parse -> queue -> encode -> search -> serialise), executed batch sizes, queue depth, inference count vs execution count (and their ratio, the
average executed batch size), the loaded model version, reloads and /eval runs, and the usual
``process_*`` (CPU seconds, resident memory, open files) and ``python_gc_*`` families.
"""
from __future__ import annotations

import bisect
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
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
CLIENT_CLOSED = 499  # nginx's code for a request whose client left before the answer
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe(v)`` for every value, with one update per bucket touched and one of the sum.

    Uses the histogram's bucket bounds and values (``_upper_bounds``, ``_buckets``, ``_sum``: stable in
    prometheus_client for years); falls back to plain ``observe`` calls when they are not there."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(values) < 2:
        for v in values:
            histogram.observe(v)
        return
    counts: dict[int, int] = {}
    for v in values:
        i = bisect.bisect_left(bounds, v)  # the first bound >= v, as observe() picks it
        if i < len(bounds):
            counts[i] = counts.get(i, 0) + 1
    total.inc(sum(values))
    for i, n in counts.items():
        buckets[i].inc(n)


class ServingMetrics:
    """All metrics of one server instance. ``render()`` gives the Prometheus text format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ssi_requests", "HTTP requests by endpoint and status; status 499: the client "
                                "closed the connection before an answer (nothing sent, not a server error)",
                                ["endpoint", "method", "status"], registry=r)
        self.errors = Counter("ssi_request_errors", "HTTP responses with status >= 400 (499, client closed, is not "
                              "a response and is not counted here)", ["endpoint", "status"], registry=r)
        self.slow_clients = Counter("ssi_slow_client_timeouts", "connections closed because the request headers or "
                                    "body did not arrive within header_timeout_s / body_timeout_s", ["stage"],
                                    registry=r)
        self.request_seconds = Histogram("ssi_request_seconds", "HTTP request latency", ["endpoint"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.parse_seconds = Histogram("ssi_parse_seconds", "request arrival to the /recommend handler: body read, "
                                       "JSON decoding, validation, routing", buckets=LATENCY_BUCKETS, registry=r)
        self.serialize_seconds = Histogram("ssi_serialize_seconds", "/recommend handler return to the response "
                                           "start: response validation and JSON encoding",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("ssi_queue_seconds", "time a request waited in the batch queue",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.encode_seconds = Histogram("ssi_encode_seconds", "encoder time per executed batch",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.search_seconds = Histogram("ssi_search_seconds", "search/scoring time per executed batch",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("ssi_batch_size", "executed batch sizes", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("ssi_queue_depth", "requests waiting in the batch queue", registry=r)
        self.inference_count = Counter("ssi_inference_count", "requests executed by the worker", registry=r)
        self.execution_count = Counter("ssi_execution_count", "batches executed by the worker", registry=r)
        self.avg_batch_size = Gauge("ssi_average_batch_size", "inference count / execution count", registry=r)
        self.model_info = Gauge("ssi_model_info", "loaded model (value 1)", ["name", "version", "backend"], registry=r)
        self.model_loaded_at = Gauge("ssi_model_loaded_timestamp_seconds", "when the model was loaded", registry=r)
        self.reloads = Counter("ssi_reloads", "model reloads by result", ["result"], registry=r)
        self.evals = Counter("ssi_eval_runs", "/eval runs by result", ["result"], registry=r)
        self.eval_seconds = Histogram("ssi_eval_seconds", "/eval duration", buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
                                      registry=r)
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ... (Linux)
        GCCollector(registry=r)

    def set_average_batch_size(self, fn: Callable[[], float]) -> None:
        self.avg_batch_size.set_function(fn)

    def set_model(self, name: str, version: str, backend: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, backend=backend).set(1)
        self.model_loaded_at.set(time.time())

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (endpoint, method, status)
        children = self._request_children.get(key)
        if children is None:  # labels() looks the child up under a lock: once per key, not per request
            error = (self.errors.labels(endpoint=endpoint, status=str(status))
                     if status >= 400 and status != CLIENT_CLOSED else None)
            children = self._request_children[key] = (
                self.requests.labels(endpoint=endpoint, method=method, status=str(status)), error,
                self.request_seconds.labels(endpoint=endpoint))
        total, error, latency = children
        total.inc()
        if error is not None:
            error.inc()
        latency.observe(seconds)

    def observe_queue_waits(self, waits: list[float]) -> None:
        """One batch's queue waits: each bucket and the sum updated once per batch, not once per request."""
        observe_many(self.queue_seconds, waits)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def sample(self, name: str, labels: dict[str, Any] | None = None) -> float | None:
        """One sample's value (for tests and /model)."""
        return self.registry.get_sample_value(name, labels or {})
