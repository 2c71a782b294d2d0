"""The serving benchmark: HTTP floor vs naive torch server vs ours, same machine, same traffic, one run.

    python -m loadtest.bench                                   # builds an untrained model + artifact if needed
    python -m loadtest.bench --artifact artifacts/serving --run-dir artifacts/runs-smoke/lastfm/ssi_hgn/seed42

Servers (each started and stopped by this script, on a free loopback port, one at a time but for the paired rounds):

1. ``floor``: the real app and request schema with ``/recommend`` answering a fixed ranking without
   touching the model (``loadtest.baselines.floor --mode serving``);
2. ``naive``: FastAPI + the eager torch model + full scoring + argsort per request, no batching
   (``loadtest.baselines.naive``);
3. ``ours``: ``python -m serving`` (CPU path: ONNX Runtime + FAISS + dynamic batching).

For each: the highest throughput whose p99 stays <= ``--p99-limit-ms`` (closed-loop locust users stepped
up: 2, 4, 8, ...), and p50/p99 at a fixed moderate rate. Then the moderate step again on the floor and ours in
alternating rounds with both servers up (``--paired-rounds``: their CPU per request paired in time, a shared
host's slow spells weighing on both alike), the ratios ours/floor and ours/naive, the
single-request latency breakdown from our server's own Prometheus histograms, and the levers (uvicorn
workers, HTTP parser, event loop, JSON encoding, batching knobs, ORT/FAISS threads, response size), each
measured at one fixed user count. Prints a markdown table and writes it (with the raw figures as JSON) to
``--results`` (default ``loadtest/results/``); locust's files and server logs go to ``--work-dir``.

The load generator shares the machine's cores with the server: every figure includes that contention.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict
from typing_extensions import Self

from loadtest.report import (
    Histogram,
    ResourceSampler,
    fetch_text,
    histograms,
    metric_value,
    parse_prometheus,
    read_resources,
    wait_ready,
)
from loadtest.run import pin_command, run_locust
from loadtest.settings import LoadtestSettings, add_flags, describe_error, from_args
from loadtest.traffic import TrafficConfig, build_pool
from protocol.artifact import MANIFEST, ArtifactError, read_manifest, resolve_latest
from protocol.data import resolve_data_dir

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


# ------------------------------------------------------------------------------------ servers

def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerSpec:
    """How to start one server under test."""

    name: str
    label: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port_arg: str | None = "--port"  # None: the port goes in SSI_PORT


def exit_on_sigterm() -> None:
    """SIGTERM (``timeout``, ``kill``) raises SystemExit like Ctrl-C raises KeyboardInterrupt, so that the
    ``with ManagedServer`` blocks stop the servers started here instead of leaving them running."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class ManagedServer:
    """A server process started here and always stopped here (its own process group, SIGTERM then SIGKILL)."""

    def __init__(self, spec: ServerSpec, log_dir: Path, ready_timeout: float = 180.0, cpus: str = "") -> None:
        self.spec = spec
        self.cpus = cpus  # taskset CPU list for the server ('' = not pinned)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{spec.name}.log"
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.startup_s = math.nan

    def __enter__(self) -> Self:
        cmd = list(self.spec.cmd)
        env = {**os.environ, **self.spec.env, "SSI_HOST": "127.0.0.1", "SSI_PORT": str(self.port)}
        if self.spec.port_arg:
            cmd += [self.spec.port_arg, str(self.port)]
        if self.cpus:
            cmd = pin_command(cmd, self.cpus)  # taskset execs the server: the same pid
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self._log = log
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if not wait_ready(self.url, self.ready_timeout, proc_alive=lambda: self.proc.poll() is None):
            self.__exit__(None, None, None)
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"server {self.spec.name} did not become ready ({' '.join(cmd)}):\n{tail}")
        self.startup_s = time.monotonic() - t0
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)  # our own group only (start_new_session)
                p.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()


# ---------------------------------------------------------------------------------- measuring

@dataclass
class Step:
    """One locust run against one server."""

    users: int
    rate: float  # target total req/s (0 = closed loop)
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    requests: int
    failures: int
    server_cpu: float  # cores used by the server process tree
    machine_cpu: float  # whole-machine busy share, 0..1 (server + load generator + neighbours)
    loadgen_cpu: float = math.nan  # cores used by the load generator (locust) while the load ran

    def ok(self, p99_limit: float) -> bool:
        return self.failures == 0 and self.requests > 0 and self.p99_ms <= p99_limit


class LoadgenSampler:
    """The load generator's CPU (cores) while it runs, and the server's over the same window: locust is a child
    process of this one, found by its command line; both are sampled every ``interval`` seconds and the rates are
    taken over the last ``window`` seconds before locust ended (its start-up, imports and request pool, when the
    server idles, is left out of both)."""

    def __init__(self, window: float, server_pid: int | None = None, interval: float = 0.5) -> None:
        import threading

        self.window, self.interval, self.server_pid = window, interval, server_pid
        self.samples: list[tuple[float, float, float]] = []  # (monotonic time, locust CPU s, server CPU s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="loadgen-sampler")

    @staticmethod
    def _locust() -> Any:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                if any("locust" in part for part in child.cmdline()):
                    return child
            except psutil.Error:
                continue
        return None

    def _loop(self) -> None:
        import psutil

        proc = None
        while not self._stop.is_set():
            try:
                proc = proc if proc is not None and proc.is_running() else self._locust()
                if proc is not None:
                    t = proc.cpu_times()
                    server = read_resources([self.server_pid], None) if self.server_pid else None
                    self.samples.append((time.monotonic(), t.user + t.system + t.children_user + t.children_system,
                                         server.cpu_seconds if server is not None else math.nan))
            except psutil.Error:
                proc = None
            self._stop.wait(self.interval)

    def start(self) -> LoadgenSampler:
        self._thread.start()
        return self

    def stop(self) -> tuple[float, float]:
        """Cores used by the load generator and by the server over locust's last ``window`` seconds (nan when
        locust was not seen)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if len(self.samples) < 2:
            return math.nan, math.nan
        t_end, lg_end, srv_end = self.samples[-1]
        t0, lg0, srv0 = next((x for x in self.samples if x[0] >= t_end - self.window), self.samples[0])
        if t_end <= t0:
            return math.nan, math.nan
        return (lg_end - lg0) / (t_end - t0), (srv_end - srv0) / (t_end - t0)


def measure(server: ManagedServer, users: int, seconds: float, traffic: TrafficConfig, prefix: Path,
            rate: float = 0.0, loadgen_cpus: str = "") -> Step:
    """One bounded locust run (closed loop, or a fixed total ``rate``) with server and machine CPU; locust
    pinned to ``loadgen_cpus`` (taskset) when given."""
    import psutil

    t = traffic.replace(rate_per_user=rate / users if rate > 0 else 0.0)
    sampler = ResourceSampler([server.pid], None, interval=0.5).start()
    loadgen = LoadgenSampler(window=0.75 * seconds, server_pid=server.pid).start()
    psutil.cpu_percent(interval=None)
    stats = run_locust(server.url, users, seconds, t, prefix, cpus=loadgen_cpus)
    machine = psutil.cpu_percent(interval=None) / 100.0
    samples = sampler.stop()
    loadgen_cpu, cpu = loadgen.stop()  # both over the load itself, without locust's start-up
    if math.isnan(cpu) and len(samples) >= 2 and samples[-1].t > samples[0].t:  # locust not seen: the whole run
        cpu = (samples[-1].cpu_seconds - samples[0].cpu_seconds) / (samples[-1].t - samples[0].t)
    a = stats["Aggregated"]
    return Step(users, rate, a.rps, a.p50_ms, a.p95_ms, a.p99_ms, a.p999_ms, a.requests, a.failures, cpu, machine,
                loadgen_cpu)


def step_users(server: ManagedServer, traffic: TrafficConfig, users: list[int], seconds: float,
               p99_limit: float, prefix: Path, log: Any, loadgen_cpus: str = "") -> tuple[list[Step], Step | None]:
    """Step the closed-loop user count up; stop after two steps in a row over the p99 limit."""
    steps: list[Step] = []
    over = 0
    for u in users:
        s = measure(server, u, seconds, traffic, prefix.with_name(f"{prefix.name}-u{u}"), loadgen_cpus=loadgen_cpus)
        steps.append(s)
        log(f"    users {u:>3}: {s.rps:7.0f} req/s  p50 {s.p50_ms:4.0f} ms  p99 {s.p99_ms:4.0f} ms  "
            f"fail {s.failures}  server CPU {s.server_cpu:.2f}  load generator CPU {s.loadgen_cpu:.2f}  "
            f"machine {s.machine_cpu:.0%}")
        over = 0 if s.ok(p99_limit) else over + 1
        if over >= 2:
            break
    passing = [s for s in steps if s.ok(p99_limit)]
    return steps, max(passing, key=lambda s: s.rps) if passing else None


# ------------------------------------------------------------------------ latency breakdown

STAGES = [  # (label, candidate histogram names)
    ("parse", ("ssi_parse_seconds",)),
    ("queue", ("ssi_queue_seconds",)),
    ("encode (fuse_topk: encoder + top-k, one ONNX Runtime call)", ("ssi_encode_seconds",)),
    ("search (fuse_topk: the answers from its output)", ("ssi_search_seconds",)),
    ("serialise", ("ssi_serialize_seconds", "ssi_serialise_seconds")),
]


def _scrape(url: str) -> dict:
    text = fetch_text(url + "/metrics", timeout=5)
    return parse_prometheus(text) if text else {}


def _delta(after: dict, before: dict, name: str, **labels: str) -> Histogram | None:
    h = histograms(after, **labels).get(name)
    return h.minus(histograms(before, **labels).get(name)) if h is not None else None


def latency_breakdown(server: ManagedServer, traffic: TrafficConfig, n: int,
                      endpoint: str = "/recommend") -> dict[str, Any]:
    """Sequential single requests (so every executed batch has size 1) over one keep-alive connection;
    per-stage times are the differences of the server's Prometheus histograms before and after.

    Stages the server has no histogram for are reported together as the rest of the server's own
    ``/recommend`` time (``ssi_request_seconds``)."""
    plain = traffic.replace(cold_share=0.0, candidates_share=0.0, batch_share=0.0, unknown_share=0.0,
                            pool_size=max(n, 50))
    pool, _ = build_pool(plain)
    before = _scrape(server.url)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    rtts: list[float] = []
    failures = 0
    try:
        for req in pool[:n]:
            t0 = time.perf_counter()
            conn.request("POST", req.path, body=req.body, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            rtts.append(time.perf_counter() - t0)
            failures += resp.status != 200
    finally:
        conn.close()
    after = _scrape(server.url)
    rtts.sort()
    out: dict[str, Any] = {
        "requests": n, "failures": failures, "stages": {},
        "client_rtt_p50_us": 1e6 * rtts[len(rtts) // 2] if rtts else math.nan,
        "client_rtt_p99_us": 1e6 * rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))] if rtts else math.nan,
    }
    for label, names in STAGES:
        for name in names:
            h = _delta(after, before, name)
            if h is not None and h.count:
                out["stages"][label] = {"mean_us": 1e6 * h.mean, "p50_us": 1e6 * h.quantile(0.5), "count": h.count}
                break
    tot = _delta(after, before, "ssi_request_seconds", endpoint=endpoint)
    if tot is not None and tot.count:
        out["server_total"] = {"mean_us": 1e6 * tot.mean, "p50_us": 1e6 * tot.quantile(0.5), "count": tot.count}
        parts = sum(v["mean_us"] for v in out["stages"].values())
        out["rest"] = {"mean_us": out["server_total"]["mean_us"] - parts,
                       "covers": [label for label, _ in STAGES if label not in out["stages"]]}
    return out


def load_note(load: float, cpus: int) -> str:
    """How to read the machine's load average beside the figures."""
    if load > cpus:
        return "above the core count: other processes shared the machine and every figure is low"
    return "at or below the core count, the bench's own server and load generator included"


def batching_between(before: dict, after: dict) -> dict[str, Any] | None:
    """What a load did to our server's batches, from two scrapes of its Prometheus histograms: executed batches,
    requests per batch, the share of batches of one, and the model call(s) (``ssi_encode_seconds``: with
    ``fuse_topk`` the one ONNX Runtime call of encoder + top-k) per executed batch and per request. None when the
    server has no batch histogram (the floor, the naive server)."""
    sizes = _delta(after, before, "ssi_batch_size")
    if sizes is None or not sizes.count:
        return None
    single = next((c for b, c in sizes.buckets if b == 1.0), math.nan)  # cumulative: the batches of one
    out: dict[str, Any] = {"batches": sizes.count, "requests": sizes.sum, "mean_batch": sizes.sum / sizes.count,
                           "share_of_batches_of_one": single / sizes.count}
    enc = _delta(after, before, "ssi_encode_seconds")
    if enc is not None and enc.count:
        out["model_call_us_per_batch"] = 1e6 * enc.sum / enc.count
        out["model_call_us_per_request"] = 1e6 * enc.sum / sizes.sum
    return out


# ---------------------------------------------------------------------------------- artifact

def resolve_artifact(path: Path) -> Path:
    """An artifact folder, or a root holding ``latest`` -> the folder it names (``protocol.artifact``)."""
    try:
        return resolve_latest(path)
    except ArtifactError as e:
        raise SystemExit(f"error: {e}") from None


def build_quick_artifact(work: Path, dataset: str, model: str, how: str, log: Any) -> tuple[Path, Path]:
    """A run + artifact for the benchmark, reused when already built in ``work``.

    ``how="smoke"``: train with ``training/run_all.py --preset smoke`` (minutes to tens of minutes on a busy
    2-core machine); ``how="untrained"``: the model's ``cpu``-preset sizes with initial weights
    (``loadtest.baselines.untrained_run``, seconds). Serving cost depends on sizes, not on weight values.
    Then ``python -m export <run-dir>``.
    """
    runs, serving_root = work / f"runs-{how}", work / f"serving-{how}"
    run_dir = runs / dataset / model / "seed0"
    if not (run_dir / "metrics.json").is_file():
        if how == "smoke":
            cmd = [PY, "training/run_all.py", "--preset", "smoke", "--datasets", dataset, "--models", model,
                   "--seeds", "0", "--out", str(runs), "--no-export"]
        else:
            cmd = [PY, "-m", "loadtest.baselines.untrained_run", "--dataset", dataset, "--model", model,
                   "--out", str(runs)]
        log(f"  building a {how} model: {' '.join(cmd)}")
        r = subprocess.run(cmd, check=False, cwd=ROOT, timeout=3600, capture_output=True, text=True)
        if r.returncode != 0 or not (run_dir / "metrics.json").is_file():
            raise SystemExit(f"error: building the {how} model failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    try:
        return resolve_artifact(serving_root), run_dir
    except SystemExit:
        pass
    cmd = [PY, "-m", "export", str(run_dir), "--out", str(serving_root)]
    log(f"  exporting: {' '.join(cmd)}")
    r = subprocess.run(cmd, check=False, cwd=ROOT, timeout=900, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: export failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return resolve_artifact(serving_root), run_dir


# -------------------------------------------------------------------------------------- report

def _f(v: float, fmt: str = "{:.0f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def cpu_per_request_us(step: dict[str, Any] | None) -> float:
    """Server CPU time per answered request (us): less sensitive to a noisy neighbour than latency."""
    if not step or not step.get("rps") or not step.get("requests"):
        return math.nan
    return 1e6 * step["server_cpu"] / step["rps"]


def compute_ratios(servers: list[dict[str, Any]]) -> dict[str, float]:
    """ours/floor and ours/naive: max throughput at the p99 limit, peak throughput, CPU efficiency."""
    by = {s["name"]: s for s in servers if not s.get("error")}
    out: dict[str, float] = {}

    def peak(s: dict[str, Any]) -> float:
        return max((x["rps"] for x in s["steps"] if not x["failures"]), default=math.nan)

    ours = by.get("ours")
    if ours is None:
        return out
    for other in ("floor", "naive", "floor-fastapi"):
        o = by.get(other)
        if o is None:
            continue
        if ours.get("best") and o.get("best"):  # (floor-fastapi has no steps: CPU only)
            out[f"ours_over_{other}"] = ours["best"]["rps"] / o["best"]["rps"]
        if ours["steps"] and o["steps"]:
            out[f"peak_ours_over_{other}"] = peak(ours) / peak(o)
        mine, theirs = cpu_per_request_us(ours.get("moderate")), cpu_per_request_us(o.get("moderate"))
        if not (math.isnan(mine) or math.isnan(theirs)) and mine > 0:
            out[f"cpu_ours_vs_{other}"] = theirs / mine
    return out


def paired_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The paired rounds' floor / ours CPU ratios -> their median, min and max (nan-free rounds only)."""
    ratios = sorted(r["ratio"] for r in rounds if not math.isnan(r.get("ratio", math.nan)))
    if not ratios:
        return {"rounds": rounds, "median": math.nan, "min": math.nan, "max": math.nan}
    mid = len(ratios) // 2
    median = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
    return {"rounds": rounds, "median": median, "min": ratios[0], "max": ratios[-1]}


def run_paired_cpu(floor: ServerSpec, ours: ServerSpec, rounds: int, args: BenchSettings, traffic: TrafficConfig,
                   raw: Path, log: Any, loadgen_cpus: str = "") -> dict[str, Any]:
    """Server CPU per request at the moderate rate, floor and ours in alternating rounds (floor first in even
    rounds, ours first in odd ones) with both servers up on the same core(s), so that a slow spell of a shared
    host weighs on both alike: the one-shot figures of the main table are minutes apart. Each round gives
    floor / ours; the summary is their median, min and max (``ratios.cpu_ours_vs_floor_paired`` = the median)."""
    pin = args.server_pinned_cpus()
    out: list[dict[str, Any]] = []
    log(f"paired CPU rounds: floor and ours alternating, {rounds} rounds of {args.moderate_seconds:.0f} s at "
        f"{args.moderate_rate:.0f} req/s each")
    logs = raw / "paired"  # the servers' logs beside, not over, those of the main steps
    with ManagedServer(floor, logs, cpus=pin) as f_srv, ManagedServer(ours, logs, cpus=pin) as o_srv:
        for srv in (f_srv, o_srv):
            measure(srv, 4, 3, traffic, raw / f"paired-{srv.spec.name}-warmup", loadgen_cpus=loadgen_cpus)
        for r in range(rounds):
            order = [f_srv, o_srv] if r % 2 == 0 else [o_srv, f_srv]
            us: dict[str, float] = {}
            for srv in order:
                m = measure(srv, args.moderate_users, args.moderate_seconds, traffic,
                            raw / f"paired-{srv.spec.name}-{r}", rate=args.moderate_rate, loadgen_cpus=loadgen_cpus)
                us[srv.spec.name] = cpu_per_request_us(asdict(m)) if not m.failures else math.nan
            f_us, o_us = us[f_srv.spec.name], us[o_srv.spec.name]
            ratio = f_us / o_us if o_us > 0 else math.nan  # a failed step's nan carries through
            out.append({"round": r, "order": [s.spec.name for s in order], "floor_us": f_us, "ours_us": o_us,
                        "ratio": ratio})
            log(f"  round {r}: floor {f_us:.0f} us, ours {o_us:.0f} us per request, floor / ours {ratio:.2f}")
    return paired_summary(out)


TARGETS = {  # issue 27, for one bench run on the 2-core machine (Beauty artifact)
    "ours_over_floor": 0.8, "ours_over_naive": 4.0, "single_request_us": 500.0, "idle_queue_us": 100.0,
    "cpu_ours_vs_floor": 0.67,
}
BUSY = 0.85  # a process using this share of the cores it can have is held by them


def cpu_list_size(cpus: str) -> int:
    """How many CPUs a taskset list names (``"0"`` -> 1, ``"0-2,5"`` -> 4); 0 for an empty list."""
    n = 0
    for part in cpus.split(","):
        lo, _, hi = part.strip().partition("-")
        if lo.isdigit():
            n += int(hi or lo) - int(lo) + 1
    return n


def limit_of(step: dict[str, Any] | None, cpus: int, pinned: str) -> dict[str, Any] | None:
    """What held a step's throughput: ``load generator`` (locust, one process, so at most one core, used to
    ``BUSY`` while the server had CPU left), ``server`` (its cores used to ``BUSY``), ``both``, or ``neither`` (the
    latency limit, batching waits or a neighbour). The server's cores: those the pinned load generator leaves,
    else all of them."""
    if not step:
        return None
    lg, srv = step.get("loadgen_cpu", math.nan), step.get("server_cpu", math.nan)
    lg_cap = 1.0
    srv_cap = float(max(1, cpus - cpu_list_size(pinned)) if pinned else cpus)
    lg_busy = lg is not None and not math.isnan(lg) and lg >= BUSY * lg_cap
    srv_busy = srv is not None and not math.isnan(srv) and srv >= BUSY * srv_cap
    by = {(True, False): "load generator", (False, True): "server", (True, True): "both"}.get((lg_busy, srv_busy),
                                                                                          "neither")
    return {"by": by, "loadgen_cpu": lg, "loadgen_capacity": lg_cap, "server_cpu": srv, "server_capacity": srv_cap}


def limit_text(lim: dict[str, Any] | None) -> str:
    if not lim:
        return "-"
    return (f"{lim['by']} (locust {_f(lim['loadgen_cpu'], '{:.2f}')} of {lim['loadgen_capacity']:g} core, server "
            f"{_f(lim['server_cpu'], '{:.2f}')} of {lim['server_capacity']:g})")


def evaluate_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target (``TARGETS``, issue 27) with its measured value and whether this run met it (None: not
    measured)."""
    r = res.get("ratios", {})
    bd = res.get("breakdown") or {}
    total = (bd.get("server_total") or {}).get("mean_us")
    queue = ((bd.get("stages") or {}).get("queue") or {}).get("mean_us")
    t = TARGETS
    rows = [
        ("ours / floor, max req/s at the p99 limit", f">= {t['ours_over_floor']:g}", r.get("ours_over_floor"),
         lambda v: v >= t["ours_over_floor"], "{:.2f}"),
        ("ours / naive, max req/s at the p99 limit", f">= {t['ours_over_naive']:g}", r.get("ours_over_naive"),
         lambda v: v >= t["ours_over_naive"], "{:.2f}"),
        ("single request, server total (mean, batch 1)", f"<= {t['single_request_us']:g} us", total,
         lambda v: v <= t["single_request_us"], "{:.0f} us"),
        ("single request, queue wait (mean, idle server)", f"near 0 (<= {t['idle_queue_us']:g} us)", queue,
         lambda v: v <= t["idle_queue_us"], "{:.0f} us"),
        ("server CPU per request, floor / ours at the moderate rate (ratios.cpu_ours_vs_floor)",
         f">= {t['cpu_ours_vs_floor']:g}", r.get("cpu_ours_vs_floor"), lambda v: v >= t["cpu_ours_vs_floor"],
         "{:.2f}"),
        ("the same, median of the paired rounds (ratios.cpu_ours_vs_floor_paired)", f">= {t['cpu_ours_vs_floor']:g}",
         r.get("cpu_ours_vs_floor_paired"), lambda v: v >= t["cpu_ours_vs_floor"], "{:.2f}"),
    ]
    out = []
    for name, target, value, ok, fmt in rows:
        bad = value is None or (isinstance(value, float) and math.isnan(value))
        out.append({"target": name, "goal": target, "value": None if bad else value,
                    "text": "n/a" if bad else fmt.format(value), "met": None if bad else bool(ok(value))})
    return out


def paired_markdown(paired: dict[str, Any] | None, c: dict[str, Any]) -> list[str]:
    """The paired rounds' table (``run_paired_cpu``), or nothing when they did not run."""
    if not paired:
        return []
    if paired.get("error"):
        return ["", f"Paired CPU rounds (floor and ours alternating): error: {paired['error'][:120]}"]
    lines = ["", (f"Server CPU per request at {c['moderate_rate']:.0f} req/s, floor and ours in alternating rounds "
                  f"(both servers up on the same core; the one-shot figures above are minutes apart):"), "",
             "| round | order | floor (us) | ours (us) | floor / ours |", "|---|---|---|---|---|"]
    for r in paired["rounds"]:
        lines.append(f"| {r['round']} | {' then '.join(r['order'])} | {_f(r['floor_us'])} | {_f(r['ours_us'])} | "
                     f"{_f(r['ratio'], '{:.2f}')} |")
    lines.append(f"| median (min - max) | | | | {_f(paired['median'], '{:.2f}')} ({_f(paired['min'], '{:.2f}')} - "
                 f"{_f(paired['max'], '{:.2f}')}); target >= {TARGETS['cpu_ours_vs_floor']:g} |")
    return lines


def render_markdown(res: dict[str, Any]) -> str:
    """The benchmark's markdown report."""
    c = res["config"]
    lines = [
        f"# Serving benchmark ({res['started']})",
        "",
        (f"Machine: {c['cpus']} CPU cores shared by the server and the load generator (locust, 1 process); "
        f"artifact `{c['artifact_name']}` ({c['model']}, {c['num_items']} items, dim {c['dim']}), "
        f"traffic from `{c['dataset']}` test histories (k={c['k']}, anonymous {c['anonymous_share']:.0%}, "
        f"exclude_seen {c['exclude_seen_share']:.0%}, candidates {c['candidates_share']:.0%}, "
        f"batch {c['batch_share']:.0%} x{c['batch_size']}, cold {c['cold_share']:.0%}); every answer checked. "
        f"Steps of {c['step_seconds']:.0f} s; p99 limit {c['p99_limit_ms']:.0f} ms; "
        f"moderate load {c['moderate_rate']:.0f} req/s for {c['moderate_seconds']:.0f} s; load generator "
        + (f"pinned to CPU {c['loadgen_cpus']} (taskset)" if c.get("loadgen_cpus") else "not pinned")
        + (f", servers to CPU {c['server_cpus']}." if c.get("server_cpus") else ".")),
        "",
        (f"| server | max req/s at p99 <= {c['p99_limit_ms']:.0f} ms | users | p50 / p99 there (ms) | "
         f"peak req/s (any p99) | p50 / p99 at {c['moderate_rate']:.0f} req/s (ms) | server CPU per request at "
         f"{c['moderate_rate']:.0f} req/s (us) | failures | limited by, at the max (CPU used of what it can have) |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in res["servers"]:
        b, m = s.get("best"), s.get("moderate")
        if s.get("error"):
            lines.append(f"| {s['label']} | error: {s['error'][:80]} | | | | | | | |")
            continue
        fails = sum(x["failures"] for x in s["steps"]) + (m["failures"] if m else 0)
        peak = max((x["rps"] for x in s["steps"] if not x["failures"]), default=math.nan)
        lines.append(
            f"| {s['label']} | {_f(b['rps']) if b else ('none' if s['steps'] else '-')} | {b['users'] if b else '-'} | "
            f"{_f(b['p50_ms']) if b else '-'} / {_f(b['p99_ms']) if b else '-'} | {_f(peak)} | "
            f"{_f(m['p50_ms']) if m else '-'} / {_f(m['p99_ms']) if m else '-'} | "
            f"{_f(cpu_per_request_us(m)) if m else '-'} | {fails} | {limit_text(s.get('limit'))} |")
    r = res.get("ratios", {})
    lines += ["", "| ratio | ours / floor | ours / naive |", "|---|---|---|",
              (f"| max throughput at the p99 limit (targets: >= {TARGETS['ours_over_floor']:g}, >= "
               f"{TARGETS['ours_over_naive']:g}) | {_f(r.get('ours_over_floor'), '{:.2f}')} | "
              f"{_f(r.get('ours_over_naive'), '{:.2f}')} |"),
              (f"| peak throughput, any p99 | {_f(r.get('peak_ours_over_floor'), '{:.2f}')} | "
              f"{_f(r.get('peak_ours_over_naive'), '{:.2f}')} |"),
              (f"| server CPU efficiency (its CPU per request / ours) | {_f(r.get('cpu_ours_vs_floor'), '{:.2f}')} | "
              f"{_f(r.get('cpu_ours_vs_naive'), '{:.2f}')} |")]
    if r.get("cpu_ours_vs_floor-fastapi"):
        lines.append(f"| server CPU efficiency against the FastAPI-route floor (its CPU per request / ours) | "
                     f"{_f(r['cpu_ours_vs_floor-fastapi'], '{:.2f}')} | |")
    lines += paired_markdown(res.get("paired_cpu"), c)
    bd = res.get("breakdown")
    if bd:
        lines += ["", (f"Single-request latency breakdown (ours, {bd['requests']} sequential requests, batch size 1, "
                      "from the server's Prometheus histograms; p50 interpolated within buckets):"), "",
                  "| stage | mean (us) | p50 (us) |", "|---|---|---|"]
        for label, v in bd["stages"].items():
            lines.append(f"| {label} | {_f(v['mean_us'])} | {_f(v['p50_us'])} |")
        if "rest" in bd:
            cov = " + ".join(bd["rest"]["covers"] + ["routing/validation"]) if bd["rest"]["covers"] else "routing"
            lines.append(f"| rest of the server time ({cov}) | {_f(bd['rest']['mean_us'])} | |")
        if "server_total" in bd:
            lines.append(f"| server total (/recommend, middleware to response) | {_f(bd['server_total']['mean_us'])} | "
                         f"{_f(bd['server_total']['p50_us'])} |")
        lines.append(f"| client round trip (loopback, keep-alive) | | {_f(bd['client_rtt_p50_us'])} (p99 "
                     f"{_f(bd['client_rtt_p99_us'])}) |")
    sc = res.get("scaling")
    if sc:
        lines += ["", (f"Scaling with cores (ours, `python -m loadtest.baselines.ours --workers N`: N uvicorn worker "
                       f"processes, each with its own model; load generator pinned to CPU {sc.get('loadgen_cpus') or '-'}; "
                       f"max throughput at p99 <= {c['p99_limit_ms']:.0f} ms over the user steps):"), "",
                  ("| server processes | max req/s at the p99 limit | users | p50 / p99 there (ms) | server CPU there "
                   "(cores) | peak req/s (any p99) | vs 1 process | limited by there |"), "|---|---|---|---|---|---|---|---|"]
        for x in sc["rows"]:
            b = x.get("best")
            if x.get("error") or not b:
                lines.append(f"| {x['workers']} | {x.get('error', 'no step under the limit')[:60]} | | | | | | |")
                continue
            lines.append(f"| {x['workers']} | {_f(b['rps'])} | {b['users']} | {_f(b['p50_ms'])} / {_f(b['p99_ms'])} | "
                         f"{_f(b['server_cpu'], '{:.2f}')} | {_f(x.get('peak'))} | "
                         f"{_f(x.get('relative'), '{:.2f}x')} | {limit_text(x.get('limit'))} |")
    tg = res.get("targets")
    if tg:
        lines += ["", "Targets (issue 27, one run):", "", "| target | goal | this run | met |", "|---|---|---|---|"]
        for t in tg:
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['target']} | {t['goal']} | {t['text']} | {met} |")
    lev = res.get("levers")
    if lev:
        lines += ["", (f"Levers (each at {lev['users']} closed-loop users for {c['lever_seconds']:.0f} s; "
                      "relative to the default measured in the same series):"), "",
                  ("| lever | setting | req/s | p50 / p99 (ms) | server CPU | server CPU per request (us) | mean executed "
                   "batch | vs default |"), "|---|---|---|---|---|---|---|---|"]
        for x in lev["rows"]:
            if x.get("error"):
                lines.append(f"| {x['lever']} | {x['setting']} | {x['error'][:60]} | | | | | |")
                continue
            lines.append(f"| {x['lever']} | {x['setting']} | {_f(x['rps'])} | {_f(x['p50_ms'])} / {_f(x['p99_ms'])} | "
                         f"{_f(x['server_cpu'], '{:.2f}')} | {_f(cpu_per_request_us(x))} | "
                         f"{_f(x.get('mean_batch'), '{:.1f}')} | {_f(x.get('relative'), '{:.2f}x')} |")
    sweep = res.get("sweep")
    if sweep:
        lines += ["", (f"Batch-size sweep (ours, device {sweep['device']}; max throughput at p99 <= "
                       f"{c['p99_limit_ms']:.0f} ms over the user steps; max_batch_size 1 = no dynamic batching):"), "",
                  ("| batching mode | max_batch_size | max req/s at the p99 limit | users | p50 / p99 there (ms) | "
                   "mean executed batch |"), "|---|---|---|---|---|---|"]
        for x in sweep["rows"]:
            b = x.get("best")
            if x.get("error") or not b:
                lines.append(f"| {x['mode']} | {x['max_batch_size']} | {x.get('error', 'no step under the limit')[:60]} | | | |")
                continue
            lines.append(f"| {x['mode']} | {x['max_batch_size']} | {_f(b['rps'])} | {b['users']} | "
                         f"{_f(b['p50_ms'])} / {_f(b['p99_ms'])} | {_f(x.get('mean_batch'), '{:.1f}')} |")
    if res.get("notes"):
        lines += ["", *[f"- {n}" for n in res["notes"]]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- main

class BenchSettings(LoadtestSettings):
    """``python -m loadtest.bench``: every field is ``SSI_BENCH_<FIELD>`` and a ``--kebab-case`` flag; the
    traffic fields (``loadtest.traffic.TrafficConfig``, ``SSI_LOADTEST_*``) come beside them."""

    model_config = SettingsConfigDict(env_prefix="SSI_BENCH_")

    artifact: Path | None = Field(
        None, description="artifact folder (or a root with 'latest'); none: build one in --work-dir (see --build)")
    run_dir: Path | None = Field(
        None, description="training run the artifact came from (naive server); none: the manifest's source")
    dataset: str | None = Field(None, description="traffic dataset (none: the artifact's)")
    build: Literal["untrained", "smoke"] = Field(
        "untrained", description="without --artifact: 'untrained' = cpu-preset sizes, initial weights (seconds); "
        "'smoke' = training/run_all.py --preset smoke (slow); either is exported and reused")
    build_model: str = Field("hgn", description="model to build when no --artifact is given")
    build_dataset: str = Field("lastfm", description="dataset to build on when no --artifact is given")
    work_dir: Path = Field(Path("artifacts/bench"), description="built model, locust files and server logs")
    results: Path = Field(Path("loadtest/results"), description="where the markdown/JSON go")
    servers: str = Field("floor,floor-fastapi,naive,ours",
                         description="comma list of floor, floor-fastapi (moderate load only), naive, ours")
    users: str = Field("2,4,8,16,32,64", description="closed-loop user steps (comma list)")
    step_seconds: float = Field(8.0, gt=0, description="seconds per step")
    p99_limit_ms: float = Field(50.0, gt=0, description="p99 limit for the max throughput")
    moderate_rate: float = Field(200.0, gt=0, description="fixed total req/s of the moderate load")
    moderate_users: int = Field(20, ge=1, description="users sharing the moderate rate")
    moderate_seconds: float = Field(12.0, gt=0, description="seconds of moderate load")
    breakdown_requests: int = Field(300, ge=1, description="sequential requests for the latency breakdown")
    paired_rounds: int = Field(
        3, ge=0, description="rounds of the moderate step on the floor and ours alternating, both servers up "
        "(ratios.cpu_ours_vs_floor_paired: the median of floor / ours CPU per request); 0 = skip")
    levers: bool = Field(True, description="measure the levers (--no-levers skips them)")
    lever_seconds: float = Field(8.0, gt=0, description="seconds per lever")
    lever_users: int = Field(16, ge=1,
                             description="closed-loop users for the levers (enough concurrency for batching to matter)")
    time_budget: float = Field(
        560.0, gt=0, description="seconds; levers still pending past this are skipped (the whole run stays < 10 min)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="our server's SSI_DEVICE (cuda: the ORT CUDA EP + FAISS GPU path, with --p99-limit-ms 10)")
    batch_sweep: str = Field(
        "", description="comma list of max_batch_size values (e.g. 1,8,32,128): our server stepped through the "
        "user counts once per value, in thread mode (the GPU mode), plus the loop mode on CPU; 1 = no dynamic batching")
    loadgen_cpus: str = Field(
        "auto", description="taskset CPU list for the load generator (locust), e.g. 0; auto = CPU 0 when the machine "
        "has 2 or more, so that it cannot take more than one core; empty = not pinned")
    server_cpus: str = Field(
        "auto", description="taskset CPU list for every server started here; auto = the CPUs the load generator is "
        "not pinned to (when it is), so that neither takes the other's core; empty = not pinned")
    scaling: str = Field(
        "1,2", description="comma list of server process counts for the scaling table (our app under uvicorn "
        "--workers N, stepped through the user counts); empty = skip")

    @staticmethod
    def numbers(text: str) -> list[int]:
        """``"2,4,8"`` -> ``[2, 4, 8]``."""
        return [int(x) for x in text.split(",") if x.strip()]

    def pinned_cpus(self) -> str:
        """The CPU list locust is pinned to ('' = not pinned)."""
        if self.loadgen_cpus != "auto":
            return self.loadgen_cpus.strip()
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        return str(allowed[0]) if len(allowed) >= 2 else ""

    def server_pinned_cpus(self) -> str:
        """The CPU list the servers are pinned to ('' = not pinned): ``auto`` = the allowed CPUs the load
        generator is not pinned to, when it is pinned (so that each gets its own cores)."""
        if self.server_cpus != "auto":
            return self.server_cpus.strip()
        pin = self.pinned_cpus()
        if not pin or not hasattr(os, "sched_getaffinity"):
            return ""
        taken = set()
        for part in pin.split(","):
            lo, _, hi = part.strip().partition("-")
            if lo.isdigit():
                taken |= set(range(int(lo), int(hi or lo) + 1))
        rest = sorted(set(os.sched_getaffinity(0)) - taken)
        return ",".join(map(str, rest))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, BenchSettings)
    add_flags(p.add_argument_group("traffic (loadtest.traffic.TrafficConfig)"), TrafficConfig,
              exclude=("dataset", "rate_per_user"))
    return p


def main(argv: list[str] | None = None) -> int:
    parsed = build_parser().parse_args(argv)
    exit_on_sigterm()
    try:
        args = from_args(BenchSettings, parsed)
        traffic = from_args(TrafficConfig, parsed)
    except ValidationError as e:
        print(f"error: invalid settings: {describe_error(e)}", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    work = args.work_dir if args.work_dir.is_absolute() else ROOT / args.work_dir
    raw = work / stamp
    raw.mkdir(parents=True, exist_ok=True)
    # One data folder for the traffic, the model builds and the servers started here.
    data_dir = resolve_data_dir(traffic.data_dir).resolve()
    os.environ["SSI_DATA_DIR"] = str(data_dir)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", flush=True)

    notes: list[str] = []
    load_start = os.getloadavg()
    if args.artifact is None:
        artifact, run_dir = build_quick_artifact(work, args.build_dataset, args.build_model, args.build, log)
    else:
        artifact = resolve_artifact(args.artifact.resolve())
        run_dir = args.run_dir
    manifest = read_manifest(artifact / MANIFEST)
    if run_dir is None:
        src = (manifest.get("source") or {}).get("run_dir")
        run_dir = Path(src) if src and Path(src).is_dir() else None
    dataset = args.dataset or manifest["dataset"]["name"]
    num_items = int(manifest["items"]["count"])
    traffic = traffic.replace(dataset=dataset, data_dir=str(data_dir))
    build_pool(traffic.replace(pool_size=10))  # fail early on a missing dataset
    log(f"artifact {artifact} ({manifest['model']['name']}, {num_items} items), run dir {run_dir}, traffic {dataset}")

    base_env = {"SSI_ARTIFACT_PATH": str(artifact), "SSI_LOG_LEVEL": "warning", "SSI_DEVICE": args.device}
    specs = {
        "floor": ServerSpec("floor", "HTTP floor (same app, fixed answer)",
                            [PY, "-m", "loadtest.baselines.floor", "--mode", "serving", "--num-items", str(num_items)],
                            base_env),
        "floor-fastapi": ServerSpec("floor-fastapi", "HTTP floor through FastAPI's routes (the floor before the fast "
                                    "path; moderate load only)",
                                    [PY, "-m", "loadtest.baselines.floor", "--mode", "fastapi", "--num-items",
                                     str(num_items)], base_env),
        "naive": ServerSpec("naive", "naive (FastAPI + torch eager + argsort)",
                            [PY, "-m", "loadtest.baselines.naive", "--run-dir", str(run_dir)], {}),
        "ours": ServerSpec("ours", f"ours (python -m serving, device {args.device})", [PY, "-m", "serving"], base_env,
                           port_arg=None),
    }
    users = args.numbers(args.users)
    pin = args.pinned_cpus()
    server_pin = args.server_pinned_cpus()
    results: dict[str, Any] = {"started": started, "servers": [], "notes": notes}
    results["config"] = {
        "cpus": os.cpu_count(), "artifact": str(artifact), "artifact_name": f"{manifest['model']['name']}/"
        f"{manifest['model'].get('version', '?')}", "model": manifest["model"]["name"], "num_items": num_items,
        "dim": manifest["items"].get("dim"), "dataset": dataset, "step_seconds": args.step_seconds,
        "p99_limit_ms": args.p99_limit_ms, "moderate_rate": args.moderate_rate,
        "moderate_seconds": args.moderate_seconds, "lever_seconds": args.lever_seconds, "users": users,
        "loadgen_cpus": pin, "server_cpus": server_pin,
        **{k: getattr(traffic, k) for k in ("k", "anonymous_share", "exclude_seen_share", "candidates_share",
                                             "batch_share", "batch_size", "cold_share")},
    }
    for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
        spec = specs[name]
        entry: dict[str, Any] = {"name": name, "label": spec.label, "steps": []}
        results["servers"].append(entry)
        if name == "naive" and run_dir is None:
            entry["error"] = "no --run-dir (and the manifest names none): naive server skipped"
            log(entry["error"])
            continue
        log(f"{name}: starting {' '.join(spec.cmd)}")
        try:
            with ManagedServer(spec, raw, cpus=server_pin) as srv:
                entry["startup_s"] = srv.startup_s
                log(f"  ready in {srv.startup_s:.1f} s on {srv.url}; warm-up")
                measure(srv, 4, 3, traffic, raw / f"{name}-warmup", loadgen_cpus=pin)
                if name != "floor-fastapi":  # that one is a CPU reference: its moderate step is enough
                    steps, b = step_users(srv, traffic, users, args.step_seconds, args.p99_limit_ms,
                                          raw / f"{name}-step", log, pin)
                    entry["steps"] = [asdict(s) for s in steps]
                    entry["best"] = asdict(b) if b else None
                before = _scrape(srv.url) if name == "ours" else {}
                m = measure(srv, args.moderate_users, args.moderate_seconds, traffic, raw / f"{name}-moderate",
                            rate=args.moderate_rate, loadgen_cpus=pin)
                entry["moderate"] = asdict(m)
                log(f"  moderate {args.moderate_rate:.0f} req/s: achieved {m.rps:.0f}, p50 {m.p50_ms:.0f} ms, "
                    f"p99 {m.p99_ms:.0f} ms, failures {m.failures}")
                if name == "ours":
                    entry["moderate_batching"] = batching_between(before, _scrape(srv.url))
                    results["breakdown"] = latency_breakdown(srv, traffic, args.breakdown_requests)
        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
            entry["error"] = error_line(e)
            log(f"  {name} failed: {e}")
    results["ratios"] = compute_ratios(results["servers"])
    up = {e["name"] for e in results["servers"] if not e.get("error")}
    if args.paired_rounds and {"floor", "ours"} <= up:
        try:
            results["paired_cpu"] = paired = run_paired_cpu(specs["floor"], specs["ours"], args.paired_rounds, args,
                                                            traffic, raw, log, pin)
            results["ratios"]["cpu_ours_vs_floor_paired"] = paired["median"]
        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
            results["paired_cpu"] = {"error": error_line(e)}
            log(f"  paired rounds failed: {e}")

    processes = args.numbers(args.scaling)
    if processes:
        results["scaling"] = run_scaling(specs["ours"], processes, traffic, users, args, raw, log, pin)

    sweep = args.numbers(args.batch_sweep)
    if sweep:
        results["sweep"] = run_batch_sweep(specs["ours"], sweep, args.device, traffic, users, args, raw, log, pin)

    if args.levers and "ours" in specs:
        lever_users = args.lever_users
        results["levers"] = run_levers(specs, artifact, num_items, traffic, lever_users, args, raw, log,
                                       deadline=t_start + args.time_budget, loadgen_cpus=pin)

    results["load_generator"] = load_generator_limits(results, pin, notes)
    results["targets"] = evaluate_targets(results)
    load_end = os.getloadavg()
    notes.append(f"1-minute load average at start {load_start[0]:.1f}, at end {load_end[0]:.1f} on {os.cpu_count()} "
                 f"cores ({load_note(max(load_start[0], load_end[0]), os.cpu_count() or 1)})")
    mb = next((e.get("moderate_batching") for e in results["servers"] if e["name"] == "ours"), None)
    if mb:
        call = (f"; the model call (encoder + top-k) took {mb['model_call_us_per_batch']:.0f} us of wall time per "
                f"executed batch, {mb['model_call_us_per_request']:.0f} us per request"
                if "model_call_us_per_request" in mb else "")
        notes.append(f"ours at the moderate rate ({args.moderate_rate:.0f} req/s from {args.moderate_users} users): "
                     f"{mb['batches']:.0f} executed batches of {mb['mean_batch']:.1f} requests on average, "
                     f"{mb['share_of_batches_of_one']:.0%} of them of one request{call} (the server's histograms)")
    bd = results.get("breakdown") or {}
    if bd.get("rest", {}).get("covers"):
        notes.append("the server has no histogram for " + " / ".join(bd["rest"]["covers"]) + ": those stages are "
                     "inside 'rest of the server time' (server total minus the stages it measures)")
    md = render_markdown(results)
    out_dir = args.results if args.results.is_absolute() else ROOT / args.results
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench-{stamp}.md").write_text(md)
    (out_dir / f"bench-{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    (out_dir / "latest.md").write_text(md)
    print()
    print(md)
    log(f"done; results in {out_dir}/bench-{stamp}.md, raw locust files and server logs in {raw}")
    return 0


def load_generator_limits(results: dict[str, Any], pin: str, notes: list[str]) -> dict[str, Any]:
    """Which of load generator and server held each server's max throughput (``limit_of``; written into each
    server entry as ``limit``, at its best step under the p99 limit, and ``limit_peak``), with a note for every
    max the load generator held: that figure is the load generator's, a lower bound of the server's."""
    cpus = os.cpu_count() or 1
    held: dict[str, bool] = {}
    for entry in results["servers"]:
        if entry.get("error") or not entry.get("steps"):
            continue
        entry["limit"] = limit_of(entry.get("best"), cpus, pin)
        ok = [x for x in entry["steps"] if not x["failures"]]
        entry["limit_peak"] = limit_of(max(ok, key=lambda x: x["rps"]) if ok else None, cpus, pin)
        lim = entry["limit"] or entry["limit_peak"]
        held[entry["name"]] = bool(lim and lim["by"] in ("load generator", "both"))
        if held[entry["name"]]:
            notes.append(f"{entry['name']}: the load generator (locust, 1 process) was the limit at its max: it used "
                         f"{lim['loadgen_cpu']:.2f} of its {lim['loadgen_capacity']:g} core while the server used "
                         f"{lim['server_cpu']:.2f} of {lim['server_capacity']:g}; that max is the load generator's, "
                         "a lower bound of the server's" + (" (so ours / floor is an upper bound)"
                                                            if entry["name"] == "floor" else ""))
    for entry in results.get("scaling", {}).get("rows", []):
        if entry.get("best"):
            entry["limit"] = limit_of(entry["best"], cpus, pin)
    return {"process": "locust, 1 process (at most 1 core)", "pinned_cpus": pin, "busy_share": BUSY,
            "limited_by_load_generator": held}


def server_batching(url: str) -> str:
    """A running server's batching settings as text, from its ``GET /model`` (what it really uses)."""
    try:
        b = json.loads(fetch_text(url + "/model", timeout=5) or "null")["batching"]
        idle = "" if "idle_dispatch" not in b else f", idle_dispatch {'on' if b['idle_dispatch'] else 'off'}"
        return (f"batching_mode {b['mode']}, max_batch_size {b['max_batch_size']}, "
                f"max_queue_delay {b['max_queue_delay_ms']} ms{idle}")
    except (TypeError, KeyError, ValueError):
        return "default settings"


def error_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, else its type name (an empty message is fine)."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def run_batch_sweep(ours: ServerSpec, sizes: list[int], device: str, traffic: TrafficConfig, users: list[int],
                    args: BenchSettings, raw: Path, log: Any, loadgen_cpus: str = "") -> dict[str, Any]:
    """Our server once per (batching mode, max_batch_size): max throughput at the p99 limit."""
    modes = ["thread"] if device == "cuda" else ["thread", "loop"]
    rows: list[dict[str, Any]] = []
    log(f"batch-size sweep: {sizes} x {modes}")
    for mode in modes:
        for size in sizes:
            row: dict[str, Any] = {"mode": mode, "max_batch_size": size}
            rows.append(row)
            env = {**ours.env, "SSI_BATCHING_MODE": mode, "SSI_MAX_BATCH_SIZE": str(size)}
            spec = ServerSpec(f"sweep-{mode}-b{size}", "", ours.cmd, env, None)
            try:
                with ManagedServer(spec, raw, cpus=args.server_pinned_cpus()) as srv:
                    measure(srv, 4, 2, traffic, raw / f"{spec.name}-warmup", loadgen_cpus=loadgen_cpus)
                    steps, best = step_users(srv, traffic, users, args.step_seconds, args.p99_limit_ms,
                                             raw / spec.name, log, loadgen_cpus)
                    metrics = _scrape(srv.url)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
                row["error"] = error_line(e)
                log(f"  {mode} / {size}: failed: {row['error']}")
                continue
            row["steps"] = [asdict(x) for x in steps]
            row["best"] = asdict(best) if best else None
            row["mean_batch"] = metric_value(metrics, "ssi_average_batch_size")
            log(f"  {mode} / max_batch_size {size}: best {best.rps if best else math.nan:.0f} req/s")
    return {"device": device, "rows": rows}


def run_scaling(ours: ServerSpec, processes: list[int], traffic: TrafficConfig, users: list[int],
                args: BenchSettings, raw: Path, log: Any, loadgen_cpus: str) -> dict[str, Any]:
    """Our app under ``uvicorn --workers N`` for each N: max throughput at the p99 limit, the load generator
    pinned, so that the table shows how the server scales with the cores it can use."""
    rows: list[dict[str, Any]] = []
    log(f"scaling: {processes} server processes, load generator on CPU {loadgen_cpus or '(not pinned)'}")
    launcher = [PY, "-m", "loadtest.baselines.ours"]
    base: float | None = None
    for n in processes:
        row: dict[str, Any] = {"workers": n}
        rows.append(row)
        spec = ServerSpec(f"scaling-w{n}", "", launcher + ["--workers", str(n)], ours.env)
        try:
            with ManagedServer(spec, raw, cpus=args.server_pinned_cpus()) as srv:
                measure(srv, 4, 3, traffic, raw / f"{spec.name}-warmup", loadgen_cpus=loadgen_cpus)
                steps, best = step_users(srv, traffic, users, args.step_seconds, args.p99_limit_ms, raw / spec.name,
                                         log, loadgen_cpus)
        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
            row["error"] = error_line(e)
            log(f"  {n} processes: failed: {row['error']}")
            continue
        row["steps"] = [asdict(x) for x in steps]
        row["best"] = asdict(best) if best else None
        row["peak"] = max((x.rps for x in steps if not x.failures), default=math.nan)
        if best is not None:
            base = base if base is not None else best.rps
            row["relative"] = best.rps / base if base else math.nan
        log(f"  {n} processes: best {best.rps if best else math.nan:.0f} req/s")
    return {"loadgen_cpus": loadgen_cpus, "rows": rows}


def run_levers(specs: dict[str, ServerSpec], artifact: Path, num_items: int, traffic: TrafficConfig, users: int,
               args: BenchSettings, raw: Path, log: Any, deadline: float, loadgen_cpus: str = "") -> dict[str, Any]:
    """Each lever: one server variant at a fixed user count; relative to the default of the same series."""
    base_env = dict(specs["ours"].env)

    def serving_with(name: str, variable: str, value: str) -> ServerSpec:
        """``python -m serving`` with one ``SSI_*`` setting changed."""
        return ServerSpec(f"lever-{name}", "", [PY, "-m", "serving"], {**base_env, variable: value}, None)

    # (lever, setting, spec, traffic, reference key): reference key groups a row with its default. Server
    # processes are the scaling table; the HTTP parser / event loop / JSON levers of earlier runs are in
    # loadtest/README.md.
    variants: list[tuple[str, str, ServerSpec, TrafficConfig, str]] = [
        ("default", "python -m serving (1 process, uvicorn's default parser/loop)", specs["ours"], traffic, "ours"),
        ("scoring", ("matmul: numpy matmul + blocked top-k per batch (default auto = ort: matmul + TopK in ONNX "
         "Runtime here)"), serving_with("matmul", "SSI_SCORING", "matmul"), traffic, "ours"),
        ("scoring", "faiss: IndexFlatIP per query", serving_with("faiss", "SSI_SCORING", "faiss"), traffic, "ours"),
        ("HTTP", "coalesce_writes off (the response head and body in two writes)",
         serving_with("twowrites", "SSI_COALESCE_WRITES", "false"), traffic, "ours"),
        ("batching", "idle_dispatch off (every batch waits for max_queue_delay or a full batch)",
         serving_with("noidle", "SSI_IDLE_DISPATCH", "false"), traffic, "ours"),
        ("batching", ("max_queue_delay 1 ms (under load a batch waits up to 1 ms to fill; default 0: what arrived "
         "in one loop turn)"), serving_with("delay1", "SSI_MAX_QUEUE_DELAY_MS", "1"), traffic, "ours"),
        ("batching", "preferred_batch_sizes [8, 16]",
         serving_with("preferred", "SSI_PREFERRED_BATCH_SIZES", "[8, 16]"), traffic, "ours"),
        ("batching", "max_batch_size 1 (no batching)",
         serving_with("batch1", "SSI_MAX_BATCH_SIZE", "1"), traffic, "ours"),
        ("batching mode", "thread (batches on a worker thread, the GPU mode)",
         serving_with("thread", "SSI_BATCHING_MODE", "thread"), traffic, "ours"),
        ("response size", f"k = 100 (default k = {traffic.k})", specs["ours"], traffic.replace(k=100), "ours"),
    ]
    rows: list[dict[str, Any]] = []
    refs: dict[str, float] = {}
    log(f"levers at {users} users")
    for lever, label, spec, t, ref in variants:
        row: dict[str, Any] = {"lever": lever, "setting": label}
        rows.append(row)
        if time.monotonic() > deadline:
            row["error"] = "skipped (time budget)"
            continue
        try:
            with ManagedServer(spec, raw, cpus=args.server_pinned_cpus()) as srv:
                if lever == "default":  # name the defaults the server really runs with
                    row["setting"] = label = f"{label[:-1]}, {server_batching(srv.url)})"
                measure(srv, 4, 2, t, raw / f"{spec.name}-lever-warmup", loadgen_cpus=loadgen_cpus)
                s = measure(srv, users, args.lever_seconds, t, raw / f"{spec.name}-lever-{len(rows)}",
                            loadgen_cpus=loadgen_cpus)
                row["mean_batch"] = metric_value(_scrape(srv.url), "ssi_average_batch_size")
        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
            row["error"] = error_line(e)
            log(f"  {lever} / {label}: failed: {row['error']}")
            continue
        row.update(asdict(s))
        if ref not in refs:
            refs[ref] = s.rps
        row["relative"] = s.rps / refs[ref] if refs[ref] else math.nan
        log(f"  {lever} / {label}: {s.rps:.0f} req/s, p50 {s.p50_ms:.0f} ms, p99 {s.p99_ms:.0f} ms, "
            f"fail {s.failures}, server CPU {s.server_cpu:.2f}")
    return {"users": users, "rows": rows}


if __name__ == "__main__":
    sys.exit(main())
