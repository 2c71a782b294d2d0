"""Where a server spends its time under load: py-spy samples, grouped into the stages of a request.

    python -m loadtest.profile --artifact artifacts/serving-bench/hgn/<version> --users 16 --seconds 20
    python -m loadtest.profile --artifact ... --server floor          # the HTTP floor under the same traffic
    python -m loadtest.profile --artifact ... --users 20 --req-rate 200 --loadgen-cpus 0 --server-cpus 1
                                                                      # the bench's moderate step (fixed rate)

Starts the server (``ours`` = ``python -m serving``, or the ``floor``), warms it, runs closed-loop locust
users against it (pinned to ``--loadgen-cpus`` with ``taskset`` when given; ``--req-rate``: a fixed total request
rate shared by the users, as the bench's moderate step; ``--server-cpus`` pins the server) while ``py-spy record`` samples
the server's threads (``--nonblocking``: the server is never paused; idle threads are not sampled), then
sorts every sampled stack into one stage by its innermost frame that a rule recognises (``STAGES``) and
prints a flame-graph-level table: share of the server's samples and estimated microseconds per request
(samples / rate / requests; under CPU contention a runnable thread waiting for a core is sampled too, so
read the microseconds as an upper bound and the shares as the breakdown). Writes the raw collapsed stacks
(``py-spy --format raw``, loadable by any flame-graph viewer), the table (``profile.md``) and
``profile.json`` to ``--out``. Needs py-spy (the ``dev`` extra) and permission to ptrace the server
(root, or ``kernel.yama.ptrace_scope`` 0).

Beside the samples, the server's threads are read from ``/proc`` before and after the load (Linux; ``thread_usage``):
CPU per request by thread (a thread pool that spins while idle, ONNX Runtime's or OpenMP's, shows up there as
CPU on threads other than the event loop's), user and system time, voluntary context switches (the event loop's
wake-ups) and minor page faults per request (``usage_rows``, the second table).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.bench import PY, ROOT, ManagedServer, ServerSpec, exit_on_sigterm, measure, resolve_artifact
from loadtest.traffic import TrafficConfig
from protocol.artifact import MANIFEST, read_manifest
from protocol.data import resolve_data_dir

# (stage, rules): a rule is (path fragment, function name or "" for any); the innermost frame of a stack
# that matches a rule names its stage. Order matters only between rules that match the same frame.
STAGES: list[tuple[str, list[tuple[str, str]]]] = [
    ("encode (ONNX Runtime)", [("onnxruntime/", ""), ("serving/backends.py", "encode")]),
    ("search / scoring (ONNX Runtime top-k, FAISS, numpy top-k)", [("faiss/", ""), ("serving/scoring.py", ""),
                                               ("serving/backends.py", "search"), ("serving/backends.py", "score"),
                                               ("serving/backends.py", "exact_topk"),
                                               ("serving/engine.py", "rank_candidates"),
                                               ("serving/engine.py", "_top_unseen")]),
    ("metrics (prometheus_client)", [("prometheus_client/", "")]),
    ("response: model validation + JSON", [("fastapi/routing.py", "serialize_response"),
                                           ("fastapi/routing.py", "_prepare_response_content"),
                                           ("fastapi/encoders.py", ""), ("starlette/responses.py", ""),
                                           ("fastapi/responses.py", ""), ("orjson", ""),
                                           ("serving/engine.py", "to_response"), ("serving/engine.py", "encode_"),
                                           ("serving/responses.py", "")]),
    ("request: JSON + validation", [("fastapi/routing.py", "_extract_body"), ("fastapi/routing.py", "_get_body"),
                                    ("fastapi/dependencies/utils.py", "request_body_to_args"),
                                    ("fastapi/_compat", ""), ("pydantic/", ""), ("json/", ""),
                                    ("serving/schemas.py", ""), ("serving/fastpath.py", "parse_json")]),
    ("prepare (ids, limits, padding)", [("serving/engine.py", "prepare"), ("serving/engine.py", "map_ids"),
                                        ("serving/engine.py", "_"), ("protocol/split.py", ""),
                                        ("serving/engine.py", "popularity_ranking")]),
    ("batching + execution glue", [("serving/batching.py", ""), ("serving/engine.py", "")]),
    ("service + route handler", [("serving/service.py", ""), ("serving/routes/", ""), ("serving/fastpath.py", ""),
                                 ("serving/app.py", "__call__")]),
    ("dependencies + routing (FastAPI/Starlette)", [("fastapi/dependencies/", ""), ("fastapi/routing.py", ""),
                                                    ("starlette/routing.py", ""), ("starlette/", ""),
                                                    ("fastapi/", "")]),
    ("middleware (body, metrics)", [("serving/middleware.py", "")]),
    ("HTTP protocol (uvicorn, httptools)", [("uvicorn/protocols/", ""), ("httptools", ""),
                                            ("serving/server.py", "")]),
    ("event loop + asyncio", [("asyncio/", ""), ("uvloop", ""), ("uvicorn/", "")]),
]
OTHER = "other"
SEARCH = STAGES[1][0]


def classify(stack: str) -> str:
    """The stage of one collapsed stack (``frame;frame;...``, root first; a frame is ``func (path:line)``). ONNX
    Runtime runs both the encoder and, on the ``ort`` scoring path, the top-k: its frames under
    ``serving/scoring.py`` are search."""
    frames = stack.split(";")
    for frame in reversed(frames):
        func, _, where = frame.partition(" (")
        func = func.strip()
        for stage, rules in STAGES:
            for fragment, name in rules:
                if fragment in where and (not name or func == name or (name.endswith("_") and func.startswith(name))
                                          or (name == "_" and func.startswith("_"))):
                    if fragment == "onnxruntime/" and "serving/scoring.py" in stack:
                        return SEARCH
                    return stage
    return OTHER


def read_collapsed(path: Path) -> Counter[str]:
    """py-spy's raw output: ``stack count`` per line."""
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[stack] += int(n)
    return counts


def breakdown(counts: Counter[str], rate: int, requests: int) -> list[dict[str, Any]]:
    """Samples per stage -> rows with share and microseconds per request, largest first."""
    by: Counter[str] = Counter()
    for stack, n in counts.items():
        by[classify(stack)] += n
    total = sum(by.values()) or 1
    rows = [{"stage": s, "samples": n, "share": n / total,
             "us_per_request": 1e6 * n / rate / requests if requests else math.nan} for s, n in by.most_common()]
    rows.append({"stage": "total (server threads, non-idle)", "samples": total, "share": 1.0,
                 "us_per_request": 1e6 * total / rate / requests if requests else math.nan})
    return rows


@dataclass(frozen=True)
class ThreadUsage:
    """One thread's counters, read from ``/proc/<pid>/task/<tid>/{stat,status}``."""

    name: str
    user_s: float
    system_s: float
    minor_faults: int
    voluntary_switches: int
    involuntary_switches: int


def parse_stat(text: str, ticks: float) -> tuple[str, float, float, int]:
    """A ``/proc/.../stat`` line -> (comm, user seconds, system seconds, minor faults). ``comm`` may hold spaces and
    parentheses: it runs from the first ``(`` to the last ``)``."""
    name = text[text.index("(") + 1:text.rindex(")")]
    f = text[text.rindex(")") + 2:].split()  # f[0] is field 3 (state): field n is f[n - 3]
    return name, int(f[11]) / ticks, int(f[12]) / ticks, int(f[7])


def parse_switches(text: str) -> tuple[int, int]:
    """``voluntary_ctxt_switches`` and ``nonvoluntary_ctxt_switches`` of a ``/proc/.../status`` file (0 if absent)."""
    vals = {}
    for line in text.splitlines():
        key, _, v = line.partition(":")
        if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            vals[key] = int(v.strip() or 0)
    return vals.get("voluntary_ctxt_switches", 0), vals.get("nonvoluntary_ctxt_switches", 0)


def thread_usage(pid: int, proc: Path = Path("/proc")) -> dict[str, ThreadUsage]:
    """Every live thread of ``pid`` (tid -> counters); empty where ``/proc`` is not there (not Linux)."""
    ticks = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    out: dict[str, ThreadUsage] = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            name, user, system, faults = parse_stat((task / "stat").read_text(), ticks)
            vol, invol = parse_switches((task / "status").read_text())
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
        out[task.name] = ThreadUsage(name, user, system, faults, vol, invol)
    return out


def usage_rows(before: dict[str, ThreadUsage], after: dict[str, ThreadUsage], requests: int) -> list[dict[str, Any]]:
    """Per request, between two ``thread_usage`` readings: one row per thread that used CPU (threads that ended in
    between are not seen), largest first, then the process's total."""
    per = max(requests, 1)
    rows = []
    zero = ThreadUsage("", 0.0, 0.0, 0, 0, 0)
    for tid, a in after.items():
        b = before.get(tid, zero)
        row = {"thread": f"{a.name} ({tid})", "cpu_us": 1e6 * (a.user_s + a.system_s - b.user_s - b.system_s) / per,
               "user_us": 1e6 * (a.user_s - b.user_s) / per, "system_us": 1e6 * (a.system_s - b.system_s) / per,
               "minor_faults": (a.minor_faults - b.minor_faults) / per,
               "voluntary_switches": (a.voluntary_switches - b.voluntary_switches) / per,
               "involuntary_switches": (a.involuntary_switches - b.involuntary_switches) / per}
        rows.append(row)
    busy = sorted((r for r in rows if r["cpu_us"] > 0), key=lambda r: -r["cpu_us"])
    total = {"thread": f"all {len(after)} threads", **{k: sum(r[k] for r in rows) for k in rows[0] if k != "thread"}} \
        if rows else {"thread": "no threads seen"}
    return [*busy, total]


def render_usage(rows: list[dict[str, Any]]) -> str:
    head = ("| thread | CPU per request (us) | user / system (us) | voluntary / involuntary switches per request | "
            "minor faults per request |")
    lines = [head, "|---|---|---|---|---|"]
    for r in rows:
        if "cpu_us" not in r:
            lines.append(f"| {r['thread']} | | | | |")
            continue
        lines.append(f"| {r['thread']} | {r['cpu_us']:.0f} | {r['user_us']:.0f} / {r['system_us']:.0f} | "
                     f"{r['voluntary_switches']:.2f} / {r['involuntary_switches']:.2f} | {r['minor_faults']:.2f} |")
    return "\n".join(lines) + "\n"


def render(rows: list[dict[str, Any]], title: str) -> str:
    lines = [title, "", "| stage | share of samples | us per request |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {100 * r['share']:.1f} % | {r['us_per_request']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, help="artifact folder (or a root with 'latest')")
    p.add_argument("--server", choices=("ours", "floor"), default="ours")
    p.add_argument("--users", type=int, default=16, help="locust users (closed loop, unless --req-rate)")
    p.add_argument("--req-rate", type=float, default=0.0,
                   help="fixed total requests per second shared by the users (locust constant_throughput, as the "
                        "bench's moderate step: --users 20 --req-rate 200); 0: closed loop")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of load (and of sampling)")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--loadgen-cpus", default="", help="taskset CPU list for locust (e.g. 0); empty: not pinned")
    p.add_argument("--server-cpus", default="", help="taskset CPU list for the server (e.g. 1); empty: not pinned")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the server (e.g. SSI_SCORING=faiss); repeatable")
    p.add_argument("--out", type=Path, default=None, help="output folder (default artifacts/profile/<time>)")
    p.add_argument("--from-raw", type=Path, default=None, metavar="FILE",
                   help="no server: the table of collapsed stacks already recorded (with --requests and --rate)")
    p.add_argument("--requests", type=int, default=0, help="with --from-raw: requests answered while sampling")
    args = p.parse_args(argv)
    if args.from_raw is not None:
        print(render(breakdown(read_collapsed(args.from_raw), args.rate, args.requests), f"`{args.from_raw}`"))
        return 0
    if args.artifact is None:
        p.error("--artifact is required (unless --from-raw)")
    if args.req_rate < 0:
        p.error("--req-rate must be >= 0")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("error: py-spy not found (pip install py-spy; it is in the dev extra)", file=sys.stderr)
        return 2
    artifact = resolve_artifact(args.artifact.resolve())
    manifest = read_manifest(artifact / MANIFEST)
    out = args.out or ROOT / "artifacts" / "profile" / time.strftime("%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    data_dir = resolve_data_dir().resolve()
    os.environ["SSI_DATA_DIR"] = str(data_dir)
    traffic = TrafficConfig(dataset=manifest["dataset"]["name"], data_dir=str(data_dir))
    env = {"SSI_ARTIFACT_PATH": str(artifact), "SSI_LOG_LEVEL": "warning",
           **dict(e.split("=", 1) for e in args.env)}
    num_items = str(manifest["items"]["count"])
    spec = (ServerSpec("ours", "ours", [PY, "-m", "serving"], env, port_arg=None) if args.server == "ours" else
            ServerSpec("floor", "floor", [PY, "-m", "loadtest.baselines.floor", "--mode", "serving", "--num-items",
                                          num_items], env))
    raw = out / f"{args.server}.collapsed.txt"
    exit_on_sigterm()
    with ManagedServer(spec, out, cpus=args.server_cpus) as srv:
        measure(srv, 4, 3, traffic, out / "warmup", loadgen_cpus=args.loadgen_cpus)
        spy_proc = subprocess.Popen([spy, "record", "--pid", str(srv.pid), "--rate", str(args.rate), "--duration",
                                     str(round(args.seconds)), "--format", "raw", "--nonblocking", "--output",
                                     str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threads_before = thread_usage(srv.pid)
        step = measure(srv, args.users, args.seconds, traffic, out / "load", rate=args.req_rate,
                       loadgen_cpus=args.loadgen_cpus)
        try:
            _, err = spy_proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy_proc.kill()
            _, err = spy_proc.communicate()
        threads = usage_rows(threads_before, thread_usage(srv.pid), step.requests)
    if not raw.is_file():
        print(f"error: py-spy wrote nothing: {err.decode(errors='replace')[-1000:]}", file=sys.stderr)
        return 1
    rows = breakdown(read_collapsed(raw), args.rate, step.requests)
    load = f"{args.users} users at {args.req_rate:g} req/s in all" if args.req_rate else f"{args.users} users"
    title = (f"py-spy profile of `{args.server}` ({manifest['model']['name']}, {num_items} items), {load} "
             f"for {args.seconds:.0f} s: {step.rps:.0f} req/s, p50 {step.p50_ms:.0f} / p99 {step.p99_ms:.0f} ms, "
             f"server CPU {step.server_cpu:.2f} cores ({1e6 * step.server_cpu / step.rps:.0f} us per request), "
             f"{step.failures} failures")
    md = render(rows, title) + "\nThe server's threads over the load (/proc; a request is one locust request):\n\n" + \
        render_usage(threads)
    (out / "profile.md").write_text(md)
    (out / "profile.json").write_text(json.dumps({"step": step.__dict__, "rows": rows, "threads": threads, "env": env},
                                                 indent=2))
    print(md)
    print(f"raw stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
