"""What each model costs to serve: encode latency, top-10 search cost and sizes, side by side in one run.

    python -m export.latency RUN_DIR [RUN_DIR ...] --out latency.json [--md latency.md] [--repeats 20] [--threads 1]

For each finished run folder (the first is the reference, e.g. the distilled student):

- its artifact is built by the project's own export path (``export.artifact.build_artifact``: the same
  ONNX graph, item table and ``max_len`` that ``python -m export`` writes and the server runs) into a
  temporary folder that is deleted afterwards;
- the encoder runs in process in ONNX Runtime on the CPU execution provider with the server's session
  options (``intra_op_num_threads = --threads``, one inter-op thread, sequential, all graph optimisations);
- inputs are real histories: the test inputs of the run's dataset (every user's sequence without its last
  item), the most recent ``max_len`` items left-padded to exactly ``max_len`` columns, as the server's
  ``pad_left(history, artifact.max_len)`` builds them; models that embed users get the anonymous user 0;
- encode latency is timed for one request (batch 1) and for batch 32, and the exact top-10 search over
  the item table (one numpy matmul + ``argpartition``, then the 10 sorted) for the same two batch sizes,
  reported separately;
- the models are interleaved in rounds (A, B, C, A, B, C, ...) so that machine noise hits all of them
  alike; after one untimed warm-up round, a round times ``--repeats`` calls per measure and keeps their
  median; the reported figure is the median over ``--rounds`` rounds, and each model's ratio to the
  reference is the headline (numpy's BLAS is set to ``--threads`` threads too, where it is OpenBLAS);
- sizes: parameters (sum of ``numel`` over the torch model), ``encoder.onnx`` and ``items.npy`` in bytes,
  and the artifact size (encoder + item table).

The JSON holds one row per run (machine-readable), the settings and the machine; ``--md`` writes the same
as a markdown table. Errors (a missing or unfinished run folder, a failed export) are one line, exit code 2.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from export.artifact import build_artifact, load_model, load_run_dataset, read_run
from export.onnx_export import EXPORTERS, ExportError
from protocol import DataError, SequenceDataset, eval_examples, onnx_runtime, pad_left
from protocol.artifact import ENCODER_FILE, ITEMS_FILE, MANIFEST

SCHEMA = "ssi-latency/1"
BATCHES = (1, 32)
K = 10
DEFAULT_ROUNDS = 7
DEFAULT_REPEATS = 20
SEED = 0
MEASURES = tuple(f"{what}_b{b}" for what in ("encode", "search") for b in BATCHES)


# ------------------------------------------------------------------------------------------ set-up


def blas_threads(n: int) -> int | None:
    """Best effort: set OpenBLAS's thread count (numpy's matmul in the search timing) to ``n``.

    Returns the count in force afterwards, or None when no OpenBLAS is loaded or it has no such entry."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            libs = {p for p in (ln.split()[-1] for ln in f if len(ln.split()) >= 6) if "openblas" in Path(p).name}
    except OSError:
        return None
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                set_f = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                get_f = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if set_f is not None and get_f is not None:
                    set_f(ctypes.c_int(n))
                    get_f.restype = ctypes.c_int
                    return int(get_f())
    return None


def encoder_session(path: Path, threads: int) -> Any:
    """ONNX Runtime on the CPU execution provider with the options the server uses (protocol.onnx_runtime)."""
    return onnx_runtime.session(path, threads)


def real_histories(ds: SequenceDataset, max_len: int, seed: int = SEED) -> np.ndarray:
    """(U', max_len) int64: test inputs with at least one item, users shuffled, padded as the server pads."""
    inputs, _ = eval_examples(ds, "test")
    rows = [s for s in inputs if len(s)]
    if not rows:
        raise ExportError(f"{ds.path}: no user has a test history")
    order = np.random.default_rng(seed).permutation(len(rows))
    return pad_left([rows[i] for i in order], max_len)


def top_k(queries: np.ndarray, items: np.ndarray, k: int = K) -> np.ndarray:
    """Exact top-k item ids (internal, 0-based) by inner product: one matmul, argpartition, sort the k."""
    scores = queries @ items.T
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def run_label(run_dir: Path) -> str:
    """``<row>/seed42`` for run_all's ``<out>/<dataset>/<row>/seed<k>`` folders, else the folder name."""
    run_dir = Path(os.path.abspath(run_dir))
    if run_dir.name.startswith("seed") and run_dir.parent.name:
        return f"{run_dir.parent.name}/{run_dir.name}"
    return run_dir.name


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """``run_label`` of each folder; labels that two folders share (one row, two datasets) get the parent
    folder in front (``toys/hgn_ce/seed42``), and any that still collide ``#2``, ``#3``."""
    short = [run_label(p) for p in run_dirs]
    labels = [f"{Path(os.path.abspath(p)).parent.parent.name}/{lab}" if short.count(lab) > 1 and "/" in lab else lab
              for p, lab in zip(run_dirs, short, strict=True)]
    return _unique(labels)


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}#{seen[lab]}")
    return out


@dataclass
class Subject:
    """One run ready to time: its ONNX session, inputs per call and the queries for the search timing."""

    label: str
    row: dict[str, Any]  # the facts reported (sizes, config); latencies are added at the end
    session: Any
    items: np.ndarray
    feeds: dict[int, list[dict[str, np.ndarray]]]  # batch size -> one feed per call (rounds x repeats)
    queries: dict[int, list[np.ndarray]]  # batch size -> the encoder's output for the same calls
    samples: dict[str, list[list[float]]] = field(default_factory=dict)  # measure -> per round, seconds

    def calls(self, measure: str, rnd: int, repeats: int) -> tuple[Callable[[Any], Any], list[Any]]:
        what, batch = measure.split("_b")
        b = int(batch)
        sl = slice(rnd * repeats, (rnd + 1) * repeats)
        if what == "encode":
            out_name = self.session.get_outputs()[0].name
            return (lambda feed: self.session.run([out_name], feed)), self.feeds[b][sl]
        return (lambda q: top_k(q, self.items)), self.queries[b][sl]


def _metric(metrics: dict[str, Any], split: str, protocol: str, name: str = "ndcg@10") -> float | None:
    value = ((metrics.get(split) or {}).get(protocol) or {}).get(name)
    return float(value) if isinstance(value, int | float) else None


def prepare(
    run_dir: Path,
    label: str,
    workdir: Path,
    *,
    data: str | None,
    threads: int,
    rounds: int,
    repeats: int,
    exporters: tuple[str, ...],
) -> Subject:
    """Export the run's artifact into ``workdir`` and build its session, inputs and reported sizes."""
    info = read_run(run_dir)
    model = load_model(run_dir)
    params = int(sum(p.numel() for p in model.parameters()))
    art = build_artifact(run_dir, workdir, model=model, data=data, exporters=exporters, update_latest=False)
    manifest = json.loads((art / MANIFEST).read_text(encoding="utf-8"))
    enc = manifest["encoder"]
    ds = load_run_dataset(info, data)
    hist = real_histories(ds, int(enc["max_len"]))
    session = encoder_session(art / ENCODER_FILE, threads)
    items = np.ascontiguousarray(np.load(art / ITEMS_FILE), dtype=np.float32)
    uses_user = bool(enc["uses_user"])
    feeds: dict[int, list[dict[str, np.ndarray]]] = {}
    queries: dict[int, list[np.ndarray]] = {}
    n_calls = rounds * repeats
    for b in BATCHES:
        feeds[b] = []
        for j in range(n_calls):
            rows = np.arange(j * b, (j + 1) * b) % len(hist)
            feed = {"history": np.ascontiguousarray(hist[rows])}
            if uses_user:
                feed["user"] = np.zeros(b, dtype=np.int64)  # the anonymous user
            feeds[b].append(feed)
        out_name = session.get_outputs()[0].name
        queries[b] = [np.ascontiguousarray(session.run([out_name], f)[0], dtype=np.float32) for f in feeds[b]]
    onnx_bytes, items_bytes = (art / ENCODER_FILE).stat().st_size, (art / ITEMS_FILE).stat().st_size
    metrics = info.get("metrics") or {}
    row: dict[str, Any] = {
        "label": label,
        "run_dir": str(run_dir),
        "model": manifest["model"]["name"],
        "teacher_variant": info.get("teacher_variant"),
        "teacher_backbone": info.get("teacher_backbone"),
        "dataset": ds.name,
        "exporter": enc.get("exporter"),
        "max_len": int(enc["max_len"]),
        "fixed_length": bool(enc["fixed_length"]),
        "uses_user": uses_user,
        "dim": int(enc["dim"]),
        "items_count": int(items.shape[0]),
        "params": params,
        "onnx_bytes": onnx_bytes,
        "items_bytes": items_bytes,
        "artifact_bytes": onnx_bytes + items_bytes,
        "valid_sampled_ndcg@10": _metric(metrics, "valid", "sampled"),
        "test_sampled_ndcg@10": _metric(metrics, "test", "sampled"),
        "test_full_ndcg@10": _metric(metrics, "test", "full"),
    }
    return Subject(label, row, session, items, feeds, queries)


# ------------------------------------------------------------------------------------------ timing


def _time(fn: Callable[[Any], Any], args: list[Any]) -> list[float]:
    out = []
    for a in args:
        t0 = time.perf_counter()
        fn(a)
        out.append(time.perf_counter() - t0)
    return out


def measure(subjects: list[Subject], rounds: int, repeats: int, progress: bool = True) -> None:
    """One untimed warm-up round, then ``rounds`` timed rounds of (A, B, C, ...), ``repeats`` calls per measure."""
    for s in subjects:
        for m in MEASURES:
            _time(*s.calls(m, 0, repeats))
            s.samples[m] = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for rnd in range(rounds):
            for s in subjects:
                for m in MEASURES:
                    s.samples[m].append(_time(*s.calls(m, rnd, repeats)))
            if progress:
                print(f"  round {rnd + 1}/{rounds} done", file=sys.stderr, flush=True)
    finally:
        if gc_was:
            gc.enable()


def summarise(subjects: list[Subject]) -> list[dict[str, Any]]:
    """Rows with, per measure, the median over rounds of each round's median (ms), its p90 over every
    call, the per-round medians, and the ratio to the first subject's median."""
    rows = []
    for s in subjects:
        row = dict(s.row)
        for m in MEASURES:
            per_round = [float(np.median(r)) * 1e3 for r in s.samples[m]]
            row[f"{m}_ms"] = float(np.median(per_round))
            row[f"{m}_p90_ms"] = float(np.percentile(np.concatenate(s.samples[m]), 90)) * 1e3
            row[f"{m}_rounds_ms"] = [round(v, 6) for v in per_round]
        rows.append(row)
    ref = rows[0]
    for row in rows:
        for m in MEASURES:
            row[f"{m}_ratio"] = row[f"{m}_ms"] / ref[f"{m}_ms"] if ref[f"{m}_ms"] > 0 else None
        for size in ("params", "artifact_bytes"):
            row[f"{size}_ratio"] = row[size] / ref[size] if ref[size] else None
    return rows


# ------------------------------------------------------------------------------------------ report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"host": platform.node(), "platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "usable_cpus": usable, "python": platform.python_version()}


def packages() -> dict[str, str]:
    out = {}
    for name in ("onnxruntime", "numpy", "torch", "onnx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _cell(row: dict[str, Any], m: str) -> str:
    ratio = row[f"{m}_ratio"]
    return f"{ratio:.2f}× ({row[f'{m}_ms']:.3f} ms)" if ratio is not None else f"- ({row[f'{m}_ms']:.3f} ms)"


def _ndcg(row: dict[str, Any]) -> str:
    vals = [row["test_sampled_ndcg@10"], row["test_full_ndcg@10"]]
    return " / ".join("-" if v is None else f"{v:.4f}" for v in vals)


def markdown(report: dict[str, Any]) -> str:
    st, mc = report["settings"], report["machine"]
    load = report["load_average"]
    lines = [
        (f"Serving cost, ratio to `{report['reference']}` (median ms in brackets). In process, ONNX Runtime "
         f"{report['packages'].get('onnxruntime', '?')} CPU EP, {st['threads']} intra-op thread(s); "
         f"{st['rounds']} interleaved rounds x {st['repeats']} calls per measure, median of round medians; "
         f"top-{st['k']} = numpy matmul + argpartition over the item table "
         f"(BLAS threads: {st['blas_threads'] if st['blas_threads'] is not None else 'unknown'}). "
         f"Machine: {mc['cpu']}, {mc['usable_cpus']} usable CPUs, load average "
         f"{load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end."),
        "",
        ("| model | dataset | L | params | artifact (onnx + items) | test N@10 sampled / full "
         "| encode, 1 request | encode, batch 32 | top-10, 1 request | top-10, batch 32 |"),
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['label']} ({r['model']}) | {r['dataset']} | {r['max_len']} | {_count(r['params'])} "
            f"| {_size(r['artifact_bytes'])} ({_size(r['onnx_bytes'])} + {_size(r['items_bytes'])}) "
            f"| {_ndcg(r)} | " + " | ".join(_cell(r, m) for m in MEASURES) + " |"
        )
    return "\n".join(lines) + "\n"


def latency_report(
    run_dirs: Sequence[str | os.PathLike],
    *,
    data: str | None = None,
    threads: int = 1,
    rounds: int = DEFAULT_ROUNDS,
    repeats: int = DEFAULT_REPEATS,
    exporters: tuple[str, ...] = EXPORTERS,
    progress: bool = True,
) -> dict[str, Any]:
    """Export, time and size every run (the first is the reference); returns the report as a dict."""
    run_dirs = [Path(p) for p in run_dirs]
    for p in run_dirs:  # fail fast, before any slow export
        read_run(p)
    labels = run_labels(run_dirs)
    blas = blas_threads(threads)
    subjects = []
    with tempfile.TemporaryDirectory(prefix="ssi-latency-") as tmp:
        for i, (p, label) in enumerate(zip(run_dirs, labels, strict=True)):
            if progress:
                print(f"exporting {label} ({p})", file=sys.stderr, flush=True)
            subjects.append(prepare(p, label, Path(tmp) / str(i), data=data, threads=threads, rounds=rounds,
                                    repeats=repeats, exporters=exporters))
        load_start = os.getloadavg()
        started = datetime.now(timezone.utc)
        measure(subjects, rounds, repeats, progress)
        load_end = os.getloadavg()
    return {
        "schema": SCHEMA,
        "created_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reference": labels[0],
        "settings": {"threads": threads, "blas_threads": blas, "rounds": rounds, "repeats": repeats,
                     "warmup_rounds": 1, "batch_sizes": list(BATCHES), "k": K,
                     "execution_provider": "CPUExecutionProvider", "anonymous_user": 0,
                     "histories": "test inputs, most recent max_len items, left-padded to max_len columns",
                     "statistic": "median over rounds of each round's median call time"},
        "machine": machine(),
        "load_average": {"start": list(load_start), "end": list(load_end)},
        "packages": packages(),
        "rows": summarise(subjects),
    }


# ------------------------------------------------------------------------------------------ CLI


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.latency",
        description="What each model costs to serve: in-process ONNX Runtime encode latency (1 request, "
        "batch 32), exact top-10 search cost, parameters and artifact size, each as a ratio to the first run.",
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="finished training runs; the first is the reference (ratio 1.0)")
    p.add_argument("--out", type=Path, required=True, help="JSON report to write")
    p.add_argument("--md", type=Path, default=None, help="also write the table as markdown here")
    p.add_argument("--repeats", type=_positive, default=DEFAULT_REPEATS,
                   help=f"calls per measure per round (default {DEFAULT_REPEATS})")
    p.add_argument("--rounds", type=_positive, default=DEFAULT_ROUNDS,
                   help=f"interleaved rounds over all runs (default {DEFAULT_ROUNDS})")
    p.add_argument("--threads", type=_positive, default=1,
                   help="ONNX Runtime intra-op threads, and numpy BLAS threads for the search (default 1)")
    p.add_argument("--data", default=None, help="data folder or .txt file (default: $SSI_DATA_DIR, else ./data)")
    p.add_argument("--exporter", choices=EXPORTERS, action="append",
                   help=f"exporter(s) to try, in order (default: {', '.join(EXPORTERS)})")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = p.parse_args(argv)
    try:
        report = latency_report(a.run_dirs, data=a.data, threads=a.threads, rounds=a.rounds, repeats=a.repeats,
                                exporters=tuple(a.exporter or EXPORTERS), progress=not a.quiet)
    except (ExportError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = markdown(report)
    try:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if a.md is not None:
            a.md.parent.mkdir(parents=True, exist_ok=True)
            a.md.write_text(table, encoding="utf-8")
    except OSError as e:
        print(f"error: cannot write the report ({e})", file=sys.stderr)
        return 2
    print(table, end="")
    print(f"wrote {a.out}" + (f" and {a.md}" if a.md is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
