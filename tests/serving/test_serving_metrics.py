"""The hot-path metrics (serving/metrics.py: plain counters exported by a custom collector) are exposed exactly as
prometheus_client's own Counter and Histogram expose the same values (names, types, labels, buckets, sums)."""
from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from serving.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, ServingMetrics


def _samples(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix) and "_created" not in line]


def test_hot_path_metrics_are_exposed_as_prometheus_client_would() -> None:
    ours = ServingMetrics()
    ref = CollectorRegistry()
    requests = Counter("ssi_requests", "d", ["endpoint", "method", "status"], registry=ref)
    errors = Counter("ssi_request_errors", "d", ["endpoint", "status"], registry=ref)
    latency = Histogram("ssi_request_seconds", "d", ["endpoint"], buckets=LATENCY_BUCKETS, registry=ref)
    queue = Histogram("ssi_queue_seconds", "d", buckets=LATENCY_BUCKETS, registry=ref)
    sizes = Histogram("ssi_batch_size", "d", buckets=BATCH_BUCKETS, registry=ref)
    inferences = Counter("ssi_inference_count", "d", registry=ref)
    rng = random.Random(0)
    for _ in range(500):
        endpoint = rng.choice(["/recommend", "/recommend/batch", "other"])
        method, status = rng.choice(["POST", "GET"]), rng.choice([200, 200, 422, 499, 503])
        seconds = rng.choice([0.0001, 0.00025, 1.0, 20.0, rng.random() * 0.01])  # bounds themselves, beyond the last
        ours.observe_request(endpoint, method, status, seconds)
        requests.labels(endpoint=endpoint, method=method, status=str(status)).inc()
        if status >= 400 and status != 499:
            errors.labels(endpoint=endpoint, status=str(status)).inc()
        latency.labels(endpoint=endpoint).observe(seconds)
        waits = [rng.random() * 0.002 for _ in range(rng.randint(1, 4))]
        ours.observe_queue_waits(waits)
        for w in waits:
            queue.observe(w)
        ours.batch_size.observe(len(waits))
        sizes.observe(len(waits))
        ours.inference_count.inc(len(waits))
        inferences.inc(len(waits))
    got, want = ours.render().decode(), generate_latest(ref).decode()
    for prefix in ("ssi_requests_total", "ssi_request_errors_total", "ssi_request_seconds_bucket",
                   "ssi_request_seconds_count", "ssi_queue_seconds_bucket", "ssi_queue_seconds_count",
                   "ssi_batch_size_bucket", "ssi_batch_size_sum", "ssi_inference_count_total"):
        assert sorted(_samples(got, prefix)) == sorted(_samples(want, prefix)), prefix
    for name in ("ssi_request_seconds_sum", "ssi_queue_seconds_sum"):  # sums: the same up to float rounding
        g = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in _samples(got, name)}
        w = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in _samples(want, name)}
        assert g.keys() == w.keys() and all(abs(g[k] - w[k]) <= 1e-9 * max(1.0, abs(w[k])) for k in g), name
    assert "# TYPE ssi_request_seconds histogram" in got and "# TYPE ssi_requests_total counter" in got
    assert ours.sample("ssi_inference_count_total") == sum(
        s.value for s in inferences.collect()[0].samples if s.name.endswith("_total"))
