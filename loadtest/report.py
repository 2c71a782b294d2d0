"""Parsing and summarising: locust CSV, Prometheus text, server CPU/RSS sampling, RSS slope.

Everything here is pure or bounded (HTTP to loopback only, short timeouts), so it is unit-testable
without a server.
"""
from __future__ import annotations

import csv
import ipaddress
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# ------------------------------------------------------------------------------------- loopback

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback_url(url: str) -> bool:
    """True when ``url`` is http(s) and its host is a loopback address (127.0.0.0/8, ::1, localhost)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(url: str) -> str:
    """Return ``url`` without a trailing slash, or raise ValueError when it is not a loopback http URL."""
    if not is_loopback_url(url):
        raise ValueError(
            f"refusing to load {url!r}: only http://127.0.0.1 / localhost / [::1] targets are allowed"
        )
    return url.rstrip("/")


# -------------------------------------------------------------------------------------- locust CSV

@dataclass
class LocustStats:
    """One row of locust's ``*_stats.csv`` (times in ms)."""

    name: str
    requests: int
    failures: int
    rps: float
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _num(row: dict[str, str], key: str) -> float:
    v = row.get(key, "")
    if v in ("", "N/A", None):
        return math.nan
    return float(v)


def read_locust_stats(csv_prefix: str | Path) -> dict[str, LocustStats]:
    """Parse ``<prefix>_stats.csv`` into ``{name: LocustStats}``; the total is under ``"Aggregated"``."""
    path = Path(f"{csv_prefix}_stats.csv")
    out: dict[str, LocustStats] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            name = row.get("Name", "")
            if row.get("Type") and name != "Aggregated":
                name = f"{row['Type']} {name}"
            out[name] = LocustStats(
                name=name,
                requests=int(_num(row, "Request Count") or 0),
                failures=int(_num(row, "Failure Count") or 0),
                rps=_num(row, "Requests/s"),
                avg_ms=_num(row, "Average Response Time"),
                p50_ms=_num(row, "50%"),
                p95_ms=_num(row, "95%"),
                p99_ms=_num(row, "99%"),
                p999_ms=_num(row, "99.9%"),
                max_ms=_num(row, "Max Response Time"),
            )
    if "Aggregated" not in out:
        raise ValueError(f"{path}: no Aggregated row")
    return out


def read_locust_failures(csv_prefix: str | Path, limit: int = 5) -> list[tuple[str, str, int]]:
    """The most frequent failures from ``<prefix>_failures.csv``: (name, error, occurrences)."""
    path = Path(f"{csv_prefix}_failures.csv")
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append((row.get("Name", ""), row.get("Error", ""), int(row.get("Occurrences", 0) or 0)))
    rows.sort(key=lambda r: -r[2])
    return rows[:limit]


# -------------------------------------------------------------------------------------- Prometheus

Sample = tuple[str, tuple[tuple[str, str], ...]]


def parse_prometheus(text: str) -> dict[Sample, float]:
    """``{(sample_name, sorted label pairs): value}`` for every sample of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[Sample, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def metric_value(samples: dict[Sample, float], name: str, **labels: str) -> float | None:
    """Sum of the samples called ``name`` whose labels include ``labels`` (None when there is none)."""
    found = [v for (n, lab), v in samples.items() if n == name and all((k, x) in lab for k, x in labels.items())]
    return sum(found) if found else None


@dataclass
class Histogram:
    """A Prometheus histogram (cumulative buckets), possibly a difference of two scrapes."""

    name: str
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), sorted, ends with +Inf
    count: float
    sum: float

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """Estimate a quantile by linear interpolation inside the bucket (as Prometheus does)."""
        if not self.count:
            return math.nan
        rank = q * self.count
        prev_b, prev_c = 0.0, 0.0
        for b, c in self.buckets:
            if c >= rank:
                if math.isinf(b):
                    return prev_b
                if c == prev_c:
                    return b
                return prev_b + (b - prev_b) * (rank - prev_c) / (c - prev_c)
            prev_b, prev_c = b, c
        return prev_b

    def minus(self, before: Histogram | None) -> Histogram:
        """This histogram minus an earlier scrape of it (the observations in between)."""
        if before is None:
            return self
        prev = dict(before.buckets)
        return Histogram(
            self.name, [(b, c - prev.get(b, 0.0)) for b, c in self.buckets],
            self.count - before.count, self.sum - before.sum,
        )


def histograms(samples: dict[Sample, float], **labels: str) -> dict[str, Histogram]:
    """Every histogram in ``samples`` (summed over labels other than ``labels``), by base name."""
    acc: dict[str, dict] = {}
    for (n, lab), v in samples.items():
        if not all((k, x) in lab for k, x in labels.items()):
            continue
        if n.endswith("_bucket"):
            le = dict(lab).get("le")
            if le is None:
                continue
            h = acc.setdefault(n[: -len("_bucket")], {"b": {}, "count": 0.0, "sum": 0.0})
            bound = math.inf if le in ("+Inf", "inf") else float(le)
            h["b"][bound] = h["b"].get(bound, 0.0) + v
    for (n, lab), v in samples.items():
        if not all((k, x) in lab for k, x in labels.items()):
            continue
        for suffix in ("_count", "_sum"):
            if n.endswith(suffix) and n[: -len(suffix)] in acc:
                acc[n[: -len(suffix)]][suffix[1:]] += v
    return {
        name: Histogram(name, sorted(h["b"].items()), h["count"], h["sum"]) for name, h in acc.items()
    }


def fetch_text(url: str, timeout: float = 2.0) -> str | None:
    """GET ``url`` (loopback only) and return the body, or None on any error."""
    if not is_loopback_url(url):
        raise ValueError(f"refusing non-loopback URL {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_ready(base_url: str, timeout_s: float = 60.0, path: str = "/health/ready",
               proc_alive=None) -> bool:
    """Poll ``base_url + path`` until it answers 200; False after ``timeout_s`` or when ``proc_alive()`` is False."""
    url = require_loopback(base_url) + path
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc_alive is not None and not proc_alive():
            return False
        try:
            with urllib.request.urlopen(url, timeout=2.0) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.2)
    return False


# ------------------------------------------------------------------------------- server resources

def find_listening_pids(port: int) -> list[int]:
    """PIDs with a TCP socket listening on ``port`` (needs the right to see them; empty when unknown)."""
    try:
        import psutil

        conns = psutil.net_connections(kind="tcp")
    except Exception:  # noqa: BLE001 - AccessDenied, missing psutil, ...
        return []
    return sorted({c.pid for c in conns if c.pid and c.status == "LISTEN" and c.laddr and c.laddr.port == port})


def process_tree(pids: Iterable[int]) -> list:
    """The psutil processes for ``pids`` and their descendants (for multi-worker servers), deduplicated."""
    import psutil

    seen: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
        except psutil.Error:
            continue
        for q in [p, *p.children(recursive=True)]:
            seen.setdefault(q.pid, q)
    return list(seen.values())


@dataclass
class ResourceSample:
    t: float  # seconds since the sampler started
    rss_bytes: float
    cpu_seconds: float


def read_resources(pids: list[int] | None, metrics_url: str | None) -> ResourceSample | None:
    """Server RSS (sum over the process tree) and CPU seconds, from /proc (psutil) or ``/metrics``."""
    if pids:
        try:
            import psutil

            rss, cpu = 0.0, 0.0
            for p in process_tree(pids):
                try:
                    with p.oneshot():
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        cpu += t.user + t.system
                except psutil.Error:
                    continue
            if rss > 0:
                return ResourceSample(0.0, rss, cpu)
        except ImportError:  # pragma: no cover - psutil comes with locust
            pass
    if metrics_url:
        text = fetch_text(metrics_url)
        if text:
            try:
                s = parse_prometheus(text)
            except Exception:  # noqa: BLE001 - a malformed exposition is "no data"
                return None
            rss = metric_value(s, "process_resident_memory_bytes")
            cpu = metric_value(s, "process_cpu_seconds_total")
            if rss is not None and cpu is not None:
                return ResourceSample(0.0, rss, cpu)
    return None


@dataclass
class ResourceSampler:
    """Samples server RSS and CPU every ``interval`` seconds in a background thread."""

    pids: list[int] | None
    metrics_url: str | None
    interval: float = 1.0
    samples: list[ResourceSample] = field(default_factory=list)
    source: str = "none"

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="resource-sampler")
        self.source = "/proc (psutil)" if self.pids else ("/metrics" if self.metrics_url else "none")

    def _loop(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            s = read_resources(self.pids, self.metrics_url)
            if s is not None:
                s.t = time.monotonic() - t0
                self.samples.append(s)
            self._stop.wait(self.interval)

    def start(self) -> ResourceSampler:
        self._thread.start()
        return self

    def stop(self) -> list[ResourceSample]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.samples


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 when undefined)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def rss_slope_mib_per_hour(samples: list[ResourceSample], skip_fraction: float = 0.2) -> float:
    """RSS trend in MiB per hour, fitted after dropping the first ``skip_fraction`` of the run (warm-up)."""
    if len(samples) < 2:
        return 0.0
    t_end = samples[-1].t
    kept = [s for s in samples if s.t >= skip_fraction * t_end] or samples
    return slope([s.t for s in kept], [s.rss_bytes for s in kept]) * 3600 / 2**20


@dataclass
class ResourceSummary:
    source: str
    cpu_cores: float  # mean CPU use in cores over the run
    rss_start_mib: float
    rss_end_mib: float
    rss_peak_mib: float
    rss_slope_mib_per_hour: float


def summarise_resources(samples: list[ResourceSample], source: str, skip_fraction: float = 0.2) -> ResourceSummary | None:
    """CPU (cores) and RSS figures from sampler output; None when fewer than 2 samples."""
    if len(samples) < 2:
        return None
    dt = samples[-1].t - samples[0].t
    cpu = (samples[-1].cpu_seconds - samples[0].cpu_seconds) / dt if dt > 0 else math.nan
    return ResourceSummary(
        source=source, cpu_cores=cpu,
        rss_start_mib=samples[0].rss_bytes / 2**20, rss_end_mib=samples[-1].rss_bytes / 2**20,
        rss_peak_mib=max(s.rss_bytes for s in samples) / 2**20,
        rss_slope_mib_per_hour=rss_slope_mib_per_hour(samples, skip_fraction),
    )


# ---------------------------------------------------------------------------------------- summary

def _ms(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f} ms"


def format_summary(
    url: str,
    duration_s: float,
    users: int,
    stats: dict[str, LocustStats],
    resources: ResourceSummary | None,
    failures: list[tuple[str, str, int]] | None = None,
    extra: dict[str, str] | None = None,
    verdict: str | None = None,
) -> str:
    """The one-screen summary printed at the end of a run."""
    agg = stats["Aggregated"]
    lines = [
        f"Load test against {url}: {duration_s:.0f} s, {users} users",
        (f"  requests {agg.requests}   failures {agg.failures} ({100 * agg.failure_ratio:.2f} %)   "
        f"throughput {agg.rps:.1f} req/s"),
        (f"  latency  p50 {_ms(agg.p50_ms)}  p95 {_ms(agg.p95_ms)}  p99 {_ms(agg.p99_ms)}  "
        f"p99.9 {_ms(agg.p999_ms)}  max {_ms(agg.max_ms)}"),
    ]
    for name, s in sorted(stats.items()):
        if name == "Aggregated":
            continue
        lines.append(
            f"    {name:<32} {s.requests:>8} req  {s.failures:>5} fail  p50 {_ms(s.p50_ms):>7}  p99 {_ms(s.p99_ms):>7}"
        )
    if resources is not None:
        lines.append(
            f"  server ({resources.source}): CPU {resources.cpu_cores:.2f} cores   RSS {resources.rss_start_mib:.0f} -> "
            f"{resources.rss_end_mib:.0f} MiB (peak {resources.rss_peak_mib:.0f})   "
            f"RSS slope {resources.rss_slope_mib_per_hour:+.1f} MiB/h"
        )
    else:
        lines.append("  server CPU/RSS: not available (no /metrics process_* metrics and no local PID)")
    for k, v in (extra or {}).items():
        lines.append(f"  {k}: {v}")
    for name, err, n in failures or []:
        lines.append(f"  failure x{n}: {name}: {err[:120]}")
    if verdict:
        lines.append(verdict)
    return "\n".join(lines)
