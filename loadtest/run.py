"""Bounded headless locust run against a loopback server, with a one-screen summary; soak mode.

Examples::

    # 2 minutes, 50 closed-loop users, against `make run`'s server
    python -m loadtest.run --url http://127.0.0.1:8000 --duration 120 --users 50
    # soak: 10 minutes at a fixed 100 req/s; pass = zero failures and flat RSS
    python -m loadtest.run --url http://127.0.0.1:8000 --soak

It starts nothing it does not stop: the only process it starts is locust (killed at the time limit plus a
margin). Only loopback targets are accepted. Writes into ``--out``: locust's CSV files (``locust_*.csv``),
its HTML report (``report.html``), ``summary.txt`` and ``summary.json``, and ``resources.csv`` (server RSS
and CPU over time, from /proc when the server's PID can be found, else from its ``/metrics``).
Exit status: 0 on success, 1 on failures (or a failed soak), 2 on bad arguments or an unreachable server.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, ValidationError

from loadtest.report import (
    LocustStats,
    ResourceSampler,
    fetch_text,
    find_listening_pids,
    format_summary,
    read_locust_failures,
    read_locust_stats,
    require_loopback,
    summarise_resources,
    wait_ready,
)
from loadtest.settings import LoadtestSettings, add_flags, describe_error, from_args
from loadtest.traffic import TrafficConfig

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MAX_DURATION_S = 3600
MAX_USERS = 1000
MAX_RATE = 20000.0
SOAK_DURATION_S = 600
SOAK_RATE = 100.0
SOAK_USERS = 20


def pin_command(cmd: list[str], cpus: str) -> list[str]:
    """``cmd`` run under ``taskset -c cpus`` (Linux); ValueError when taskset is missing or the list is bad."""
    taskset = shutil.which("taskset")
    if taskset is None:
        raise ValueError("taskset is not installed (util-linux): cannot pin the load generator")
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    wanted: set[int] = set()
    for part in cpus.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"bad CPU list {cpus!r} (e.g. 0 or 0,1 or 0-1)")
        wanted |= set(range(int(lo), int(hi or lo) + 1))
    if not wanted <= allowed:
        raise ValueError(f"CPU list {cpus!r} names cores this process may not use ({sorted(allowed)})")
    return [taskset, "-c", cpus, *cmd]


def run_locust(
    url: str,
    users: int,
    duration_s: float,
    traffic: TrafficConfig,
    csv_prefix: Path,
    html: Path | None = None,
    spawn_rate: float | None = None,
    quiet: bool = True,
    cpus: str = "",
) -> dict[str, LocustStats]:
    """Run locust headless (bounded by ``duration_s`` + a margin) and return its parsed stats.

    ``traffic`` travels to the locust process through ``SSI_LOADTEST_*`` environment variables. ``cpus``
    (a ``taskset`` CPU list such as ``0``) pins locust to those cores; empty: not pinned.
    """
    url = require_loopback(url)
    if not 1 <= users <= MAX_USERS:
        raise ValueError(f"users must be in 1..{MAX_USERS}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration must be in (0, {MAX_DURATION_S}] s")
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(spawn_rate or users), "-t", f"{round(duration_s)}s",
        "--host", url, "--csv", str(csv_prefix), "--stop-timeout", "5", "--loglevel", "WARNING",
        "--exit-code-on-error", "0",
    ]
    if cpus:
        cmd = pin_command(cmd, cpus)
    if quiet:
        cmd.append("--only-summary")
    if html is not None:
        cmd += ["--html", str(html)]
    env = {**os.environ, **traffic.to_env()}
    # Locust itself should not fight the server for threads.
    env.setdefault("OMP_NUM_THREADS", "1")
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.PIPE if quiet else None,
                          timeout=duration_s + 90, check=False, cwd=Path(__file__).resolve().parent.parent)
    try:
        return read_locust_stats(csv_prefix)
    except (OSError, ValueError) as e:
        err = (proc.stderr or b"").decode(errors="replace")[-1500:] if quiet else ""
        raise RuntimeError(f"locust exited {proc.returncode} without usable stats ({e}); {err}") from None


def server_dataset(url: str) -> tuple[str | None, int | None]:
    """(dataset name, item count) of the model the server answers with, from ``GET /model`` (None: unknown)."""
    text = fetch_text(url + "/model", timeout=5)
    try:
        model = json.loads(text or "null")["model"]
        return model["dataset"]["name"], int(model["items"]["count"])
    except (TypeError, KeyError, ValueError):
        return None, None


class RunSettings(LoadtestSettings):
    """``python -m loadtest.run``: every field is ``SSI_LOADTEST_<FIELD>`` and a ``--kebab-case`` flag; the
    traffic fields (``loadtest.traffic.TrafficConfig``) come beside them."""

    url: str = Field("http://127.0.0.1:8000", description="server base URL (loopback only)")
    duration: float | None = Field(None, gt=0, le=MAX_DURATION_S,
                                   description=f"seconds (none: 60; soak {SOAK_DURATION_S})")
    users: int | None = Field(None, ge=1, le=MAX_USERS, description=f"simulated users (none: 20; soak {SOAK_USERS})")
    spawn_rate: float | None = Field(None, gt=0, description="users started per second (none: all at once)")
    rate: float | None = Field(None, ge=0, le=MAX_RATE, description="fixed total request rate in req/s "
                               f"(none: closed loop, as fast as possible; soak {SOAK_RATE:.0f})")
    soak: bool = Field(False, description="soak mode: 10 minutes at a fixed rate; pass = zero failures and flat RSS")
    rss_slope_limit: float = Field(
        16.0, gt=0, description="soak: largest RSS slope (MiB/hour, fitted after the first 20% of the run) that "
        "counts as flat")
    out: Path | None = Field(None, description="output folder (none: artifacts/loadtest/<time>)")
    server_pid: int | None = Field(
        None, description="server PID for /proc CPU/RSS (none: found from the listening port, else /metrics)")
    sample_interval: float | None = Field(None, gt=0, description="resource sampling period in s (none: 1; soak 5)")
    wait_ready: float = Field(30.0, ge=0, description="seconds to wait for the readiness path before starting")
    ready_path: str = Field("/health/ready", description="readiness path polled before the run")
    verbose: bool = Field(False, description="show locust's own output")
    dataset: str | None = Field(
        None, description="dataset whose test histories make the requests (none: the one the server's model was "
        f"trained on, from GET /model; else {TrafficConfig.model_fields['dataset'].default})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.run",
        description="Bounded headless locust run against a loopback recommender server, with a summary "
                    "(RPS, p50/p95/p99/p99.9, failures, server CPU and RSS). Soak mode: fixed rate, "
                    "pass = zero failures and flat RSS. Every flag can also be set as SSI_LOADTEST_<FLAG>.",
    )
    add_flags(p, RunSettings)
    # --dataset is RunSettings'; the request rate per user follows from --rate and --users.
    add_flags(p.add_argument_group("traffic (loadtest.traffic.TrafficConfig)"), TrafficConfig,
              exclude=("dataset", "rate_per_user"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = from_args(RunSettings, args)
        url = require_loopback(settings.url)
        duration = settings.duration if settings.duration is not None else (SOAK_DURATION_S if settings.soak else 60.0)
        users = settings.users if settings.users is not None else (SOAK_USERS if settings.soak else 20)
        rate = settings.rate if settings.rate is not None else (SOAK_RATE if settings.soak else 0.0)
        traffic = from_args(TrafficConfig, args, rate_per_user=rate / users if rate > 0 else 0.0)
    except ValidationError as e:
        print(f"error: invalid settings: {describe_error(e)}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    interval = settings.sample_interval or (5.0 if settings.soak else 1.0)
    if not wait_ready(url, settings.wait_ready, settings.ready_path):
        print(f"error: {url}{settings.ready_path} did not answer 200 within {settings.wait_ready:.0f} s",
              file=sys.stderr)
        return 2
    served_name, served_items = server_dataset(url)
    dataset = settings.dataset or served_name
    if dataset:  # else TrafficConfig's own (SSI_LOADTEST_DATASET, else lastfm)
        traffic = traffic.replace(dataset=dataset)
    out = settings.out or Path("artifacts/loadtest") / time.strftime("%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if served_items is not None:
        try:
            from protocol import load_dataset

            n = load_dataset(traffic.dataset, traffic.data_dir).num_items
        except Exception as e:  # noqa: BLE001 - reported, and locust will fail the same way
            print(f"error: cannot load dataset {traffic.dataset!r}: {e}", file=sys.stderr)
            return 2
        if n != served_items:
            print(f"warning: the server's model has {served_items} items but dataset {traffic.dataset!r} has {n}; "
                  "answers will be checked against the dataset's ids", file=sys.stderr)
    port = urlsplit(url).port or (443 if url.startswith("https") else 80)
    pids = [settings.server_pid] if settings.server_pid else find_listening_pids(port)
    sampler = ResourceSampler(pids or None, url + "/metrics", interval=interval).start()
    t0 = time.monotonic()
    try:
        stats = run_locust(url, users, duration, traffic, out / "locust", html=out / "report.html",
                           spawn_rate=settings.spawn_rate, quiet=not settings.verbose)
    except (subprocess.TimeoutExpired, FileNotFoundError, ValueError, RuntimeError) as e:
        sampler.stop()
        print(f"error: locust run failed: {e}", file=sys.stderr)
        return 2
    finally:
        samples = sampler.stop()
    wall = time.monotonic() - t0
    with open(out / "resources.csv", "w") as fh:
        fh.write("t_s,rss_bytes,cpu_seconds\n")
        fh.writelines(f"{s.t:.2f},{s.rss_bytes:.0f},{s.cpu_seconds:.3f}\n" for s in samples)
    res = summarise_resources(samples, sampler.source)
    agg = stats["Aggregated"]
    extra: dict[str, str] = {"mode": "soak" if settings.soak else ("fixed rate" if rate else "closed loop")}
    if rate:
        extra["target rate"] = f"{rate:.0f} req/s (achieved {agg.rps:.1f})"
    extra["traffic"] = (f"{traffic.dataset}/{traffic.split}, k={traffic.k}, anonymous {traffic.anonymous_share:.0%}, "
                        f"exclude_seen {traffic.exclude_seen_share:.0%}, candidates {traffic.candidates_share:.0%}, "
                        f"batch {traffic.batch_share:.0%} x{traffic.batch_size}")
    ok = agg.failures == 0 and agg.requests > 0
    verdict = None
    if settings.soak:
        flat = res is not None and abs(res.rss_slope_mib_per_hour) <= settings.rss_slope_limit
        ok = ok and flat
        slope_txt = f"{res.rss_slope_mib_per_hour:+.1f}" if res else "n/a"
        verdict = (f"SOAK {'PASS' if ok else 'FAIL'}: failures {agg.failures} (need 0), RSS slope {slope_txt} MiB/h "
                   f"(need |slope| <= {settings.rss_slope_limit})")
    extra["wall time"] = f"{wall:.0f} s (locust start and stop included)"
    text = format_summary(url, duration, users, stats, res, read_locust_failures(out / "locust"), extra, verdict)
    (out / "summary.txt").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps({
        "url": url, "duration_s": wall, "users": users, "rate": rate, "soak": settings.soak, "pass": ok,
        "stats": {k: asdict(v) for k, v in stats.items()},
        "resources": asdict(res) if res else None, "traffic": traffic.model_dump(),
    }, indent=2, default=str))
    print(text)
    print(f"  files: {out}/ (report.html, locust_stats.csv, summary.txt, resources.csv)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
