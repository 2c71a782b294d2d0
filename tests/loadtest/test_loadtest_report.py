"""Summary and parsing logic: loopback guard, locust CSV, Prometheus histograms, RSS slope, summary text."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from loadtest.report import (
    ResourceSample,
    format_summary,
    histograms,
    is_loopback_url,
    metric_value,
    parse_prometheus,
    read_locust_failures,
    read_locust_stats,
    require_loopback,
    rss_slope_mib_per_hour,
    slope,
    summarise_resources,
)

HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
          "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
          "99.99%,100%\n")


@pytest.mark.parametrize("url, ok", [
    ("http://127.0.0.1:8000", True), ("http://127.0.0.2:9", True), ("http://localhost:8000/", True),
    ("http://[::1]:8000", True), ("https://127.0.0.1", True),
    ("http://10.0.0.1:8000", False), ("http://example.com", False), ("http://0.0.0.0:8000", False),
    ("ftp://127.0.0.1", False), ("127.0.0.1:8000", False), ("http://127.0.0.1.example.com", False),
])
def test_loopback_guard(url: str, ok: bool) -> None:
    assert is_loopback_url(url) is ok
    if ok:
        assert not require_loopback(url).endswith("/")
    else:
        with pytest.raises(ValueError, match="only http://127.0.0.1"):
            require_loopback(url)


def test_read_locust_stats(tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    Path(f"{prefix}_stats.csv").write_text(
        HEADER
        + "POST,/recommend,100,2,5,6.5,1,90,300,50.5,1.0,5,6,7,8,10,12,20,30,80,90,90\n"
        + ",Aggregated,120,3,5,6.0,1,95,310,60.0,1.5,5,6,7,8,10,13,21,31,85,95,95\n")
    Path(f"{prefix}_failures.csv").write_text(
        "Method,Name,Error,Occurrences\nPOST,/recommend,HTTP 500,2\nPOST,/recommend/batch,bad shape,1\n")
    stats = read_locust_stats(prefix)
    agg = stats["Aggregated"]
    assert (agg.requests, agg.failures, agg.rps, agg.p50_ms, agg.p95_ms, agg.p99_ms, agg.p999_ms, agg.max_ms) == (
        120, 3, 60.0, 5.0, 13.0, 31.0, 85.0, 95.0)
    assert agg.failure_ratio == pytest.approx(0.025)
    assert stats["POST /recommend"].requests == 100
    assert read_locust_failures(prefix)[0] == ("/recommend", "HTTP 500", 2)


def test_read_locust_stats_na_and_missing(tmp_path: Path) -> None:
    prefix = tmp_path / "empty"
    Path(f"{prefix}_stats.csv").write_text(HEADER + ",Aggregated,0,0,0,0.0,0,0,0,0.0,0.0" + ",N/A" * 11 + "\n")
    agg = read_locust_stats(prefix)["Aggregated"]
    assert agg.requests == 0 and math.isnan(agg.p99_ms)
    Path(f"{prefix}_stats.csv").write_text(HEADER)
    with pytest.raises(ValueError, match="Aggregated"):
        read_locust_stats(prefix)
    assert read_locust_failures(tmp_path / "nothing") == []


PROM = """# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.048576e+08
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# TYPE ssi_queue_seconds histogram
ssi_queue_seconds_bucket{le="0.001"} 10.0
ssi_queue_seconds_bucket{le="0.01"} 30.0
ssi_queue_seconds_bucket{le="+Inf"} 40.0
ssi_queue_seconds_count 40.0
ssi_queue_seconds_sum 0.2
# TYPE ssi_request_seconds histogram
ssi_request_seconds_bucket{endpoint="/recommend",le="0.001"} 5.0
ssi_request_seconds_bucket{endpoint="/recommend",le="+Inf"} 10.0
ssi_request_seconds_count{endpoint="/recommend"} 10.0
ssi_request_seconds_sum{endpoint="/recommend"} 0.02
ssi_request_seconds_bucket{endpoint="/metrics",le="0.001"} 1.0
ssi_request_seconds_bucket{endpoint="/metrics",le="+Inf"} 1.0
ssi_request_seconds_count{endpoint="/metrics"} 1.0
ssi_request_seconds_sum{endpoint="/metrics"} 0.0005
"""


def test_prometheus_parsing_and_histograms() -> None:
    s = parse_prometheus(PROM)
    assert metric_value(s, "process_resident_memory_bytes") == 104857600
    assert metric_value(s, "process_cpu_seconds_total") == 12.5
    assert metric_value(s, "nope") is None
    h = histograms(s)["ssi_queue_seconds"]
    assert h.count == 40 and h.mean == pytest.approx(0.005)
    assert h.quantile(0.25) == pytest.approx(0.001)  # rank 10 ends the first bucket
    assert h.quantile(0.5) == pytest.approx(0.001 + 0.009 * 10 / 20)
    assert h.quantile(0.99) == pytest.approx(0.01)  # in +Inf: the last finite bound
    rec = histograms(s, endpoint="/recommend")["ssi_request_seconds"]
    assert rec.count == 10 and rec.mean == pytest.approx(0.002)
    assert histograms(s)["ssi_request_seconds"].count == 11  # summed over endpoints
    before = histograms(parse_prometheus(PROM.replace("40.0", "20.0").replace("0.2", "0.1")))["ssi_queue_seconds"]
    d = h.minus(before)
    assert d.count == 20 and d.sum == pytest.approx(0.1)
    assert h.minus(None) is h


def test_slope_and_resource_summary() -> None:
    assert slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert slope([1], [1]) == 0.0 and slope([2, 2], [1, 5]) == 0.0
    mib = 2**20
    # 1 MiB per minute after a warm-up jump that the first 20% hides
    samples = [ResourceSample(t, (200 if t < 60 else 100) * mib + t / 60 * mib, t * 0.5) for t in range(0, 600, 5)]
    assert rss_slope_mib_per_hour(samples, skip_fraction=0.2) == pytest.approx(60.0, rel=1e-6)
    flat = [ResourceSample(t, 100 * mib, t * 0.25) for t in range(0, 600, 5)]
    res = summarise_resources(flat, "test")
    assert res.rss_slope_mib_per_hour == pytest.approx(0.0, abs=1e-9)
    assert res.cpu_cores == pytest.approx(0.25) and res.rss_peak_mib == pytest.approx(100)
    assert summarise_resources(flat[:1], "test") is None


def test_format_summary(tmp_path: Path) -> None:
    prefix = tmp_path / "l"
    Path(f"{prefix}_stats.csv").write_text(
        HEADER + ",Aggregated,120,0,5,6.0,1,95,310,60.0,0.0,5,6,7,8,10,13,21,31,85,95,95\n")
    stats = read_locust_stats(prefix)
    res = summarise_resources([ResourceSample(0, 2**27, 0), ResourceSample(10, 2**27, 5)], "/metrics")
    text = format_summary("http://127.0.0.1:8000", 10, 5, stats, res, [], {"mode": "closed loop"}, "SOAK PASS")
    for needle in ("120", "60.0 req/s", "p50 5 ms", "p95 13 ms", "p99 31 ms", "p99.9 85 ms", "CPU 0.50 cores",
                   "128 MiB", "MiB/h", "SOAK PASS"):
        assert needle in text
    assert len(text.splitlines()) <= 25  # one screen
    assert "not available" in format_summary("u", 1, 1, stats, None)
