"""Where a server spends its time under load: py-spy samples, grouped into the stages of a request.

    python -m loadtest.profile --artifact artifacts/serving-bench/hgn/<version> --users 16 --seconds 20
    python -m loadtest.profile --artifact ... --server floor          # the HTTP floor under the same traffic

Starts the server (``ours`` = ``python -m serving``, or the ``floor``), warms it, runs closed-loop locust
users against it (pinned to ``--loadgen-cpus`` with ``taskset`` when given) while ``py-spy record`` samples
the server's threads (``--nonblocking``: the server is never paused; idle threads are not sampled), then
sorts every sampled stack into one stage by its innermost frame that a rule recognises (``STAGES``) and
prints a flame-graph-level table: share of the server's samples and estimated microseconds per request
(samples / rate / requests; under CPU contention a runnable thread waiting for a core is sampled too, so
read the microseconds as an upper bound and the shares as the breakdown). Writes the raw collapsed stacks
(``py-spy --format raw``, loadable by any flame-graph viewer), the table (``profile.md``) and
``profile.json`` to ``--out``. Needs py-spy (the ``dev`` extra) and permission to ptrace the server
(root, or ``kernel.yama.ptrace_scope`` 0).
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
    p.add_argument("--users", type=int, default=16, help="closed-loop locust users")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of load (and of sampling)")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--loadgen-cpus", default="", help="taskset CPU list for locust (e.g. 0); empty: not pinned")
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
    with ManagedServer(spec, out) as srv:
        measure(srv, 4, 3, traffic, out / "warmup", loadgen_cpus=args.loadgen_cpus)
        spy_proc = subprocess.Popen([spy, "record", "--pid", str(srv.pid), "--rate", str(args.rate), "--duration",
                                     str(round(args.seconds)), "--format", "raw", "--nonblocking", "--output",
                                     str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        step = measure(srv, args.users, args.seconds, traffic, out / "load", loadgen_cpus=args.loadgen_cpus)
        try:
            _, err = spy_proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy_proc.kill()
            _, err = spy_proc.communicate()
    if not raw.is_file():
        print(f"error: py-spy wrote nothing: {err.decode(errors='replace')[-1000:]}", file=sys.stderr)
        return 1
    rows = breakdown(read_collapsed(raw), args.rate, step.requests)
    title = (f"py-spy profile of `{args.server}` ({manifest['model']['name']}, {num_items} items), {args.users} users "
             f"for {args.seconds:.0f} s: {step.rps:.0f} req/s, p50 {step.p50_ms:.0f} / p99 {step.p99_ms:.0f} ms, "
             f"server CPU {step.server_cpu:.2f} cores ({1e6 * step.server_cpu / step.rps:.0f} us per request), "
             f"{step.failures} failures")
    md = render(rows, title)
    (out / "profile.md").write_text(md)
    (out / "profile.json").write_text(json.dumps({"step": step.__dict__, "rows": rows, "env": env}, indent=2))
    print(md)
    print(f"raw stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
