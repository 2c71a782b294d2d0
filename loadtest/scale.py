"""The catalogue-scale benchmark: how build time, memory, recall and latency of each index grow with the catalogue.

    python -m loadtest.scale                                  # latest artifact under artifacts/serving, 1e4..1e7
    python -m loadtest.scale --artifact artifacts/serving --sizes 1e4,1e5 --kinds matmul,ivf

Item tables of each size (``--sizes``) at the artifact's width and distribution: the artifact's real item
vectors are the first rows, the rest are drawn from a Gaussian fitted to them (their mean and full covariance,
the bias column included), so a synthetic item scores like a real one. Queries are real encoded test histories:
the artifact's dataset, each user's test input (``s[:-1]``, its most recent ``max_len`` items) through the
artifact's ONNX encoder (onnxruntime), at most ``--queries`` of them.

Index kinds (``--kinds``), all by inner product (``METRIC_INNER_PRODUCT``), built with FAISS's index factory
(``protocol.ann``; no hand-rolled ANN): ``matmul`` (exact: numpy float32 matmul + argpartition, what the server
runs below ``matmul_max_items``), ``flat`` (FAISS ``IndexFlatIP``, exact), ``ivf`` (``IVF<4 sqrt N>,Flat``),
``ivfpq`` (``IVF<4 sqrt N>,PQ<d/3>``) and ``hnsw`` (``HNSW32``). IVF coarse quantizers are exact (``protocol.ann``
says why not an HNSW one); IVF lists are trained on ``--train-per-list`` rows per list (a sample); IVF-PQ takes a copy of IVF-Flat's trained coarse
quantizer at the same size (same lists), so its training is its PQ codebooks only. The main knob is swept: ``nprobe`` for IVF,
``efSearch`` for HNSW; every value is one cell.

Per cell: build seconds (train + add); memory = the index's serialized size (``faiss.serialize_index``, what
``faiss.write_index`` writes; for ``matmul`` the float32 table) and the process RSS growth while building
(``rss_delta_mb``); recall@10 against exact (``faiss.knn``) over every query; single-query latency p50/p99
(one ``search`` call per query, timed in process: no HTTP, no encoder; at most ``--cell-seconds`` per cell but
never fewer than 100 queries); batch-32 throughput (queries per second through 32-query calls). Top-10
without seen-item exclusion. A kind whose build time, extrapolated from the smaller sizes measured in the
same run, exceeds ``--max-build-s`` is not built at that size: its row holds ``skipped`` and the reason.

Threads (``faiss.omp_set_num_threads``): searches run on ``--threads`` (default 1: what the server gives FAISS by
default, ``ort_threads=1``, and what keeps a single query's p99 free of OpenMP barrier stalls on a shared
machine); builds (training, adding) on ``--build-threads`` (default 2: the whole machine here). numpy's BLAS (the
matmul path) runs on 1 thread, as in the server (``OPENBLAS_NUM_THREADS=1`` unless set, before numpy loads, as
``serving/__init__.py`` does), recorded as ``machine.blas_threads``. ``--time-budget-s`` bounds the run: a build whose
predicted time would end past it is skipped (a row with the reason). The JSON, markdown and plots are rewritten
after each size, so an interrupted run keeps the sizes it finished. Writes ``--results``/scale-<time>.json (one row per cell: items, index, params,
recall_at_10, p50_ms, p99_ms, build_s, memory_mb, ...), .md (the table) and -<size>.png (latency against
recall, one plot per size); ``--name`` changes the ``scale`` prefix.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # as the server (serving/__init__.py): numpy's BLAS on 1 thread, set before numpy loads
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from loadtest.settings import LoadtestSettings, add_flags, describe_error, from_args
from protocol import ann, onnx_runtime
from protocol.artifact import ArtifactError, open_artifact, resolve_latest
from protocol.data import DataError, load_dataset, resolve_data_dir
from protocol.split import eval_examples, pad_left

ROOT = Path(__file__).resolve().parents[1]
CPU_KINDS = ("matmul", "flat", "ivf", "ivfpq", "hnsw")
GPU_KINDS = ("gpu-flat", "gpu-ivf", "gpu-ivfpq")  # FAISS GPU indexes (loadtest/gpu_check.sh); not in the default
KINDS = CPU_KINDS + GPU_KINDS
BATCH = 32
LABELS = {"matmul": "exact matmul (numpy)", "flat": "exact IndexFlatIP", "ivf": "IVF-Flat", "ivfpq": "IVF-PQ",
          "hnsw": "HNSW32", "gpu-flat": "GPU exact GpuIndexFlatIP", "gpu-ivf": "GPU IVF-Flat", "gpu-ivfpq": "GPU IVF-PQ"}


class ScaleSettings(LoadtestSettings):
    """``python -m loadtest.scale``: every field is ``SSI_SCALE_<FIELD>`` and a ``--kebab-case`` flag."""

    model_config = SettingsConfigDict(env_prefix="SSI_SCALE_")

    artifact: Path | None = Field(
        None, description="artifact folder (or a root with 'latest'); none: the latest under artifacts/serving, "
        "else a quick one built the way loadtest.bench builds its default (untrained HGN on LastFM)")
    data_dir: Path | None = Field(None, description="data folder holding the artifact's dataset (none: the usual "
                                  "rule: $SSI_DATA_DIR, ./data, ../shared/data)")
    sizes: str = Field("1e4,1e5,1e6,1e7", description="catalogue sizes (comma list; 1e6 or 1000000)")
    kinds: str = Field(",".join(CPU_KINDS), description=f"index kinds (comma list of {', '.join(KINDS)}; the gpu-* "
                       "kinds are FAISS GPU indexes on GPU 0, built there, for loadtest/gpu_check.sh)")
    queries: int = Field(1000, ge=10, description="real test histories used as queries (recall and latency)")
    k: int = Field(10, ge=1, le=100, description="top-k of every search (recall@k)")
    threads: int = Field(1, ge=1, le=1024, description="FAISS threads while searching (faiss.omp_set_num_threads)")
    build_threads: int = Field(2, ge=1, le=1024, description="FAISS threads while training and adding")
    time_budget_s: float = Field(3600.0, gt=0, description="a build predicted to end past this many seconds from "
                                 "the start is skipped (a row with the reason)")
    train_per_list: int = Field(ann.TRAIN_PER_LIST, ge=1, description="IVF training rows per list")
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW graph degree")
    max_build_s: float = Field(900.0, gt=0, description="a kind whose build, extrapolated from the smaller sizes, "
                               "would take longer is skipped at that size (a row with the reason)")
    cell_seconds: float = Field(8.0, gt=0, description="single-query timing budget per cell (at least 100 queries)")
    batch_seconds: float = Field(4.0, gt=0, description="batch-32 throughput timing budget per cell")
    recall_target: float = Field(0.95, gt=0, le=1, description="recall@k a chosen index must reach")
    p99_budget_ms: float = Field(10.0, gt=0, description="single-query p99 a chosen index must meet")
    seed: int = Field(0, description="seed of the synthetic rows and samples")
    results: Path = Field(Path("loadtest/results"), description="where the JSON, markdown and plots go")
    name: str = Field("scale", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
                      description="file name prefix: <results>/<name>-<time>.json|md, -<size>.png")
    machine_note: str = Field("", description="free text recorded as the run's machine_load.note (e.g. what was "
                              "paused during the run)")

    def size_list(self) -> list[int]:
        return [int(float(x)) for x in self.sizes.split(",") if x.strip()]

    def kind_list(self) -> list[str]:
        kinds = [x.strip() for x in self.kinds.split(",") if x.strip()]
        bad = [x for x in kinds if x not in KINDS]
        if bad:
            raise ValueError(f"unknown index kinds {bad}; expected some of {', '.join(KINDS)}")
        return kinds


# ------------------------------------------------------------------------------------------ inputs


def find_artifact(path: Path | None, log: Any) -> Path:
    """``path`` (a folder or a root with 'latest'), else artifacts/serving's latest, else bench's quick artifact."""
    if path is not None:
        return resolve_latest(path)
    default = ROOT / "artifacts" / "serving"
    if default.is_dir():
        try:
            return resolve_latest(default)
        except ArtifactError:
            pass
    from loadtest.bench import build_quick_artifact  # locust and friends load only on this path

    artifact, _ = build_quick_artifact(ROOT / "artifacts" / "bench", "lastfm", "hgn", "untrained", log)
    return artifact


def encode_queries(artifact: Path, data_dir: Path | None, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                                          dict[str, Any]]:
    """(real item table (N0, d), queries (Q, d), facts): the artifact's ``items.npy`` and its dataset's test
    histories through its ONNX encoder (onnxruntime, CPU, 1 thread); users sampled when more than ``limit``."""
    opened = open_artifact(artifact)
    items = np.ascontiguousarray(np.load(opened.file("items"), allow_pickle=False), dtype=np.float32)
    ds_info = opened.manifest.get("dataset") or {}
    try:
        ds = load_dataset(ds_info["name"], resolve_data_dir(data_dir))
    except (DataError, KeyError, OSError) as e:
        raise SystemExit(f"error: the artifact's dataset {ds_info.get('name')!r} cannot be loaded ({e}); "
                         "pass --data-dir") from None
    histories, _ = eval_examples(ds, "test")
    rows = ann.query_rows(len(histories), limit, seed)
    hist = pad_left([histories[i] for i in rows], opened.max_len)
    session = onnx_runtime.session(opened.encoder_path, threads=1)
    feeds: dict[str, np.ndarray] = {"history": hist}
    if opened.uses_user:
        feeds["user"] = (rows + 1).astype(np.int64)  # model user ids: dataset row + 1 (0 = anonymous)
    queries = np.ascontiguousarray(session.run([opened.encoder["output_name"]], feeds)[0], dtype=np.float32)
    facts = {"artifact": str(artifact), "model": f"{opened.manifest['model']['name']}/{opened.manifest['model']['version']}",
             "dataset": ds.name, "dataset_matches_artifact": ds.sha256 == ds_info.get("sha256"),
             "real_items": int(items.shape[0]), "dim": int(items.shape[1]), "queries": len(queries),
             "query_source": f"test histories of {len(queries)} of {len(histories)} users through encoder.onnx"}
    return items, queries, facts


def synthetic_table(real: np.ndarray, n: int, seed: int, chunk: int = 1_000_000) -> np.ndarray:
    """(n, d) float32: ``real`` as the first rows, then rows drawn from N(mean, cov) of ``real`` (full covariance,
    float64 Cholesky with a tiny ridge), in chunks so that a 10^7-row table needs no float64 copy."""
    n0, d = real.shape
    if n <= n0:
        return np.ascontiguousarray(real[:n])
    x = real.astype(np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False) + 1e-6 * np.eye(d)
    chol = np.linalg.cholesky(cov)
    out = np.empty((n, d), dtype=np.float32)
    out[:n0] = real
    rng = np.random.default_rng(seed)
    for s in range(n0, n, chunk):
        e = min(n, s + chunk)
        z = rng.standard_normal((e - s, d), dtype=np.float32)
        out[s:e] = z @ chol.T.astype(np.float32) + mean.astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------ indexes


class MatmulIndex:
    """Exact top-k by a numpy float32 matmul and argpartition (the server's exact path, without its blocked
    top-k): a ``search(queries, k)`` with FAISS's signature, for the benchmark's timing loop."""

    def __init__(self, items: np.ndarray) -> None:
        self.items = items

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(q) > BATCH:  # the (B, N) score matrix of 1000 queries x 10^7 items would be 40 GB
            parts = [self.search(q[s:s + BATCH], k) for s in range(0, len(q), BATCH)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        s = q @ self.items.T
        part = np.argpartition(s, s.shape[1] - k, axis=1)[:, -k:]
        top = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # Linux without psutil
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Plan:
    kind: str
    factory: str  # "" for matmul
    knob: str | None
    values: tuple[int, ...]

    @property
    def cells(self) -> int:
        return max(1, len(self.values))


def plan_for(kind: str, n: int, d: int, hnsw_m: int) -> Plan:
    if kind == "matmul":
        return Plan(kind, "", None, ())
    if kind in ("flat", "gpu-flat"):
        return Plan(kind, "Flat", None, ())
    if kind.startswith("gpu-"):
        factory = ann.ivf_factory(n, d, pq=kind == "gpu-ivfpq")
        return Plan(kind, factory, "nprobe", tuple(v for v in ann.knob_values("ivf", factory) if v <= 2048))
    factory = {"ivf": lambda: ann.ivf_factory(n, d), "ivfpq": lambda: ann.ivf_factory(n, d, pq=True),
               "hnsw": lambda: f"HNSW{hnsw_m},Flat"}[kind]()
    k = ann.kind_of(factory)
    return Plan(kind, factory, ann.KNOBS[k], ann.knob_values(k, factory))


def build_gpu(factory: str, items: np.ndarray, cfg: ScaleSettings) -> tuple[Any, float, float, int]:
    """A FAISS GPU index on GPU 0 (``faiss.index_cpu_to_gpu`` of the factory's untrained index, then trained and
    filled on the GPU): (index, train_s, build_s, serialized bytes of its CPU copy)."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        raise RuntimeError("this faiss has no GPU support or sees no GPU (faiss-gpu and a CUDA GPU needed)")
    res = faiss.StandardGpuResources()
    cpu = faiss.index_factory(items.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index = faiss.index_cpu_to_gpu(res, 0, cpu)
    index.referenced_objects = [res]  # keep the resources alive with the index
    t0 = time.perf_counter()
    if not index.is_trained:
        want = ann.nlist_of(factory) * cfg.train_per_list
        rows = np.random.default_rng(cfg.seed).choice(len(items), size=min(want, len(items)), replace=False)
        index.train(items[np.sort(rows)])
    t1 = time.perf_counter()
    index.add(items)
    t2 = time.perf_counter()
    memory = ann.serialized_bytes(faiss.index_gpu_to_cpu(index))
    return index, t1 - t0, t2 - t0, memory


def set_knob(index: Any, kind: str, knob: str | None, value: int | None) -> None:
    if knob is None or value is None:
        return
    if kind.startswith("gpu-"):
        import faiss

        faiss.GpuParameterSpace().set_index_parameter(index, knob, int(value))
    else:
        ann.set_knob(index, knob, value)


def predicted_build_s(kind: str, n: int, measured: dict[str, list[tuple[int, float, float, bool]]]) -> float | None:
    """Build seconds at ``n`` rows from the largest size measured in this run (``(rows, train_s, add_s,
    train_grows)``). HNSW inserts grow as N log N. An IVF with ~sqrt(N) lists: k-means on a fixed number of rows
    per list costs rows x lists ~ N (``train_grows``; an IVF-PQ that took IVF-Flat's trained quantizer trains only
    its PQ codebooks, on a capped sample: constant); adding N rows by scanning the lists costs N x lists ~ N^1.5."""
    past = measured.get(kind) or []
    if not past:
        return None
    n0, train0, add0, grows = max(past)
    if kind == "hnsw":
        return (train0 + add0) * (n / n0) * (math.log(n) / math.log(n0))
    return train0 * (n / n0 if grows else 1.0) + add0 * (n / n0) ** 1.5


def time_batches(index: Any, q: np.ndarray, k: int, seconds: float) -> float:
    """Queries per second through ``BATCH``-query calls, over the queries in order (whole passes until a quarter
    of ``seconds`` is spent, stopping early once ``seconds`` are; fewer queries than a batch: one call of all)."""
    b = min(BATCH, len(q))
    done, start = 0, time.perf_counter()
    while True:
        for s in range(0, len(q) - b + 1, b):
            index.search(q[s:s + b], k)
            done += b
            if time.perf_counter() - start > seconds:
                return done / (time.perf_counter() - start)
        if time.perf_counter() - start > seconds / 4:
            return done / (time.perf_counter() - start)


def measure_cell(index: Any, queries: np.ndarray, want: np.ndarray, cfg: ScaleSettings) -> dict[str, Any]:
    _, got = index.search(queries, cfg.k)
    lat = ann.single_query_ms(index, queries, cfg.k, max_queries=len(queries), max_seconds=cfg.cell_seconds)
    return {"recall_at_10": round(ann.recall_at_k(got, want, cfg.k), 5),
            "p50_ms": round(float(np.percentile(lat, 50)), 4), "p99_ms": round(float(np.percentile(lat, 99)), 4),
            "mean_ms": round(float(lat.mean()), 4), "latency_queries": len(lat),
            "batch32_qps": round(time_batches(index, queries, cfg.k, cfg.batch_seconds), 1)}


def run_size(n: int, real: np.ndarray, queries: np.ndarray, cfg: ScaleSettings, measured: dict[str, list[Any]],
             bar: Any, log: Any, started: float) -> list[dict[str, Any]]:
    d = real.shape[1]
    t0 = time.perf_counter()
    items = synthetic_table(real, n, cfg.seed)
    log(f"{n:,} items: table {items.nbytes / 2**20:.0f} MiB drawn in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    want = ann.exact_ids(items, queries, cfg.k)
    log(f"{n:,} items: exact top-{cfg.k} of {len(queries)} queries (faiss.knn) in {time.perf_counter() - t0:.1f}s")
    import faiss

    rows: list[dict[str, Any]] = []
    quantizers: dict[int, Any] = {}  # IVF-Flat's trained coarse quantizer by list count, for IVF-PQ at this size
    for kind in cfg.kind_list():
        plan = plan_for(kind, n, d, cfg.hnsw_m)
        shared = None
        base = {"items": n, "dim": d, "index": kind, "label": LABELS[kind], "factory": plan.factory or "numpy matmul"}
        predicted = predicted_build_s(kind, n, measured)
        left = cfg.time_budget_s - (time.monotonic() - started)
        if predicted is not None and predicted > left:
            rows.append({**base, "params": {}, "skipped": True, "predicted_build_s": round(predicted, 1),
                         "reason": f"predicted build {predicted:.0f}s > the {left:.0f}s left of --time-budget-s "
                                   f"{cfg.time_budget_s:.0f}"})
            bar.update(plan.cells)
            log(f"{n:,} items: {kind} skipped ({rows[-1]['reason']})")
            continue
        if predicted is not None and predicted > cfg.max_build_s:
            past = ", ".join(f"{t + a:.0f}s (train {t:.0f}s) at {m:,}" for m, t, a, _ in sorted(measured[kind]))
            rows.append({**base, "params": {}, "skipped": True,
                         "reason": f"predicted build {predicted:.0f}s > --max-build-s {cfg.max_build_s:.0f}s "
                                   f"(extrapolated from {past} in this run)", "predicted_build_s": round(predicted, 1)})
            bar.update(plan.cells)
            log(f"{n:,} items: {kind} skipped ({rows[-1]['reason']})")
            continue
        bar.set_postfix_str(f"{n:,} {kind} build")
        gc.collect()
        rss0 = rss_mb()
        faiss.omp_set_num_threads(cfg.build_threads)
        if kind == "matmul":
            index: Any = MatmulIndex(items)
            build_s, train_s, memory = 0.0, 0.0, items.nbytes
        elif kind.startswith("gpu-"):
            try:
                index, train_s, build_s, memory = build_gpu(plan.factory, items, cfg)
            except Exception as e:  # noqa: BLE001 - no GPU, a CPU-only faiss, or a shape the GPU index refuses
                reason = " ".join(str(e).split())[:300]
                rows.append({**base, "params": {}, "skipped": True, "reason": f"GPU build failed: {reason}"})
                bar.update(plan.cells)
                log(f"{n:,} items: {kind} skipped ({rows[-1]['reason']})")
                continue
        else:
            shared = quantizers.get(ann.nlist_of(plan.factory)) if kind == "ivfpq" else None
            built = ann.build(plan.factory, items, cfg.train_per_list, cfg.seed, quantizer=shared)
            index, build_s, train_s = built.index, built.build_s, built.train_s
            memory = ann.serialized_bytes(index)
            if kind == "ivf":
                quantizers[ann.nlist_of(plan.factory)] = faiss.clone_index(ann.coarse_quantizer(index))
            if shared is not None:
                base["factory"] += " (IVF-Flat's trained quantizer)"
        rss_delta = rss_mb() - rss0
        faiss.omp_set_num_threads(cfg.threads)
        if kind != "matmul":
            measured.setdefault(kind, []).append((n, train_s, build_s - train_s, shared is None))
        log(f"{n:,} items: {kind} {plan.factory} built in {build_s:.1f}s (train {train_s:.1f}s), "
            f"{memory / 2**20:.1f} MiB")
        for value in plan.values or (None,):
            set_knob(index, kind, plan.knob, value)
            bar.set_postfix_str(f"{n:,} {kind} {plan.knob or ''}{'=' + str(value) if value else ''}")
            cell = measure_cell(index, queries, want, cfg)
            rows.append({**base, "params": {plan.knob: value} if plan.knob else {}, **cell,
                         "build_s": round(build_s, 2), "train_s": round(train_s, 2),
                         "memory_mb": round(memory / 2**20, 2), "rss_delta_mb": round(rss_delta, 1)})
            bar.update(1)
        del index
        gc.collect()
    del items
    gc.collect()
    return rows


# ------------------------------------------------------------------------------------------ report


def chosen(rows: list[dict[str, Any]], n: int, target: float, budget: float) -> dict[str, Any] | None:
    """At ``n`` items: the approximate-or-exact cell with recall >= target and p99 <= budget that has the
    smallest p99 (ties: less memory)."""
    ok = [r for r in rows if r["items"] == n and not r.get("skipped") and r["recall_at_10"] >= target
          and r["p99_ms"] <= budget]
    return min(ok, key=lambda r: (r["p99_ms"], r["memory_mb"])) if ok else None


def smallest(rows: list[dict[str, Any]], n: int, target: float, budget: float) -> dict[str, Any] | None:
    ok = [r for r in rows if r["items"] == n and not r.get("skipped") and r["recall_at_10"] >= target
          and r["p99_ms"] <= budget]
    return min(ok, key=lambda r: (r["memory_mb"], r["p99_ms"])) if ok else None


def _params(r: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items()) or "-"


def render_markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["settings"]
    out = [f"# Catalogue-scale benchmark ({res['started']} UTC{', ' + cfg['name'] if cfg['name'] != 'scale' else ''})", "",
           (f"Artifact `{res['inputs']['model']}` ({res['inputs']['dataset']}, {res['inputs']['real_items']:,} real items, "
           f"dim {res['inputs']['dim']} with the bias column); queries: {res['inputs']['query_source']}. Synthetic "
           "rows: N(mean, full covariance) of the real rows, the real rows first. Inner product everywhere."),
           (f"Machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, {m['platform']}; faiss {m['faiss']}, numpy "
           f"{m['numpy']}; FAISS searches on {cfg['threads']} thread(s), builds on {cfg['build_threads']} "
           f"(faiss.omp_set_num_threads), numpy BLAS on {m['blas_threads']}."),
           f"Machine load: 1-min load average {res['machine_load']['before'][0]:.2f} before, "
           f"{res['machine_load']['after'][0]:.2f} after. {res['machine_load']['note']}".rstrip(), "",
           ("Latency: one `search` call per query in process (no HTTP, no encoder), top-10, no seen-item exclusion; "
           "p99 over the `lat. q` queries timed. Memory: the index serialized (`faiss.serialize_index`, as "
           "`write_index` writes it; matmul: the float32 table); RSS delta: process growth while building. "
           f"Total wall time {res['wall_s'] / 60:.1f} min."), ""]
    out += ["## Chosen per size", "",
            (f"Fastest cell with recall@10 >= {cfg['recall_target']} and p99 <= {cfg['p99_budget_ms']} ms; and the one "
            "with the least memory among those."), "",
            ("| items | fastest | params | recall@10 | p50 ms | p99 ms | build s | memory MB | least memory | params "
            "| recall@10 | p99 ms | memory MB |"), "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in res["sizes"]:
        c = chosen(res["rows"], n, cfg["recall_target"], cfg["p99_budget_ms"])
        s = smallest(res["rows"], n, cfg["recall_target"], cfg["p99_budget_ms"])
        if c is None:
            out.append(f"| {n:,} | none meets both | | | | | | | | | | | |")
            continue
        out.append(f"| {n:,} | {c['label']} | {_params(c)} | {c['recall_at_10']:.4f} | {c['p50_ms']:.3f} | "
                   f"{c['p99_ms']:.3f} | {c['build_s']:.1f} | {c['memory_mb']:.1f} | {s['label']} | {_params(s)} | "
                   f"{s['recall_at_10']:.4f} | {s['p99_ms']:.3f} | {s['memory_mb']:.1f} |")
    out += ["", "## Every cell", "",
            ("| items | index | factory | params | recall@10 | p50 ms | p99 ms | lat. q | batch-32 q/s | build s "
            "| memory MB | RSS delta MB |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if r.get("skipped"):
            out.append(f"| {r['items']:,} | {r['label']} | {r['factory']} | skipped | | | | | | | | {r['reason']} |")
            continue
        out.append(f"| {r['items']:,} | {r['label']} | {r['factory']} | {_params(r)} | {r['recall_at_10']:.4f} | "
                   f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['latency_queries']} | {r['batch32_qps']:,.0f} | "
                   f"{r['build_s']:.1f} | {r['memory_mb']:.1f} | {r['rss_delta_mb']:.0f} |")
    if res.get("notes") or res.get("chosen"):
        out += ["", "## Notes", ""] + [f"- {x}" for x in res.get("notes", []) + res.get("chosen", [])]
    if res.get("plots"):
        out += ["", "Plots: " + ", ".join(f"[{Path(p).name}]({Path(p).name})" for p in res["plots"])]
    return "\n".join(out) + "\n"


def plot_size(rows: list[dict[str, Any]], n: int, path: Path, target: float, budget: float) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [r for r in rows if r["items"] == n and not r.get("skipped")]
    if not cells:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, kind in enumerate(dict.fromkeys(r["index"] for r in cells)):
        rs = [r for r in cells if r["index"] == kind]
        color = f"C{i}"
        x = [r["recall_at_10"] for r in rs]
        ax.plot(x, [r["p50_ms"] for r in rs], "o-", color=color, label=f"{rs[0]['label']} p50")
        ax.plot(x, [r["p99_ms"] for r in rs], "x--", color=color, alpha=0.6, label=f"{rs[0]['label']} p99")
        for r in rs:
            if r.get("params"):
                ax.annotate(str(next(iter(r["params"].values()))), (r["recall_at_10"], r["p50_ms"]), fontsize=6,
                            textcoords="offset points", xytext=(2, 2))
    ax.axvline(target, color="grey", lw=0.8, ls=":")
    ax.axhline(budget, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 against exact")
    ax.set_ylabel("single-query latency (ms, log)")
    ax.set_title(f"{n:,} items: latency against recall (labels: nprobe / efSearch)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def blas_threads() -> int:
    """numpy's BLAS thread count as its environment sets it (OpenBLAS: OPENBLAS_NUM_THREADS, then
    OMP_NUM_THREADS, else every core)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, ScaleSettings)
    return p


def run(cfg: ScaleSettings, log: Any = print, progress: bool = True) -> dict[str, Any]:
    """The whole benchmark; returns the result dict (also written to ``cfg.results``)."""
    import faiss
    from tqdm import tqdm

    t_start = time.monotonic()
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    sizes, kinds = cfg.size_list(), cfg.kind_list()
    load_before = os.getloadavg()
    faiss.omp_set_num_threads(cfg.threads)
    artifact = find_artifact(cfg.artifact, log)
    real, queries, inputs = encode_queries(artifact, cfg.data_dir, cfg.queries, cfg.seed)
    log(f"artifact {artifact}: {inputs['real_items']:,} x {inputs['dim']} items, {len(queries)} queries")
    d = real.shape[1]
    total = sum(plan_for(kind, n, d, cfg.hnsw_m).cells for n in sizes for kind in kinds)
    results = cfg.results if cfg.results.is_absolute() else ROOT / cfg.results
    results.mkdir(parents=True, exist_ok=True)
    base = results / f"{cfg.name}-{stamp}"
    import psutil

    res: dict[str, Any] = {
        "started": started, "sizes": sizes, "kinds": kinds, "settings": json.loads(cfg.model_dump_json()),
        "inputs": inputs,
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform(), "python": platform.python_version(), "faiss": faiss.__version__,
                    "numpy": np.__version__, "threads": cfg.threads, "build_threads": cfg.build_threads,
                    "blas_threads": blas_threads()},
        "machine_load": {"before": list(load_before), "after": None, "note": cfg.machine_note},
        "synthetic": "rows beyond the real ones drawn from N(mean, full covariance) of the real rows (float64 "
                     "Cholesky, 1e-6 ridge), real rows first",
        "memory": "memory_mb = serialized index size (faiss.serialize_index; matmul: the float32 table); "
                  "rss_delta_mb = process RSS growth during the build",
        "rows": [], "notes": [], "plots": [],
    }
    measured: dict[str, list[tuple[int, float, float, bool]]] = {}
    with tqdm(total=total, desc="cells", unit="cell", disable=not progress, dynamic_ncols=True) as bar:
        for n in sizes:
            need = 1.25 * n * d * 4 * (2 + ("hnsw" in kinds)) / 2**30
            free = psutil.virtual_memory().available / 2**30
            if need > free:
                note = (f"{n:,} items not run: about {need:.1f} GiB needed (table + largest index + graph), "
                        f"{free:.1f} GiB available")
                res["notes"].append(note)
                log(note)
                bar.update(sum(plan_for(kind, n, d, cfg.hnsw_m).cells for kind in kinds))
                continue
            res["rows"] += run_size(n, real, queries, cfg, measured, bar, log, t_start)
            write_outputs(res, base, cfg, t_start)  # partial results survive an interrupted run
    return write_outputs(res, base, cfg, t_start)


def write_outputs(res: dict[str, Any], base: Path, cfg: ScaleSettings, t_start: float) -> dict[str, Any]:
    """``base``.json, .md and -<size>.png from the rows so far; ``res["files"]`` names them."""
    res["wall_s"] = time.monotonic() - t_start
    res["machine_load"]["after"] = list(os.getloadavg())
    res["plots"] = []
    for n in res["sizes"]:
        p = plot_size(res["rows"], n, Path(f"{base}-{n}.png"), cfg.recall_target, cfg.p99_budget_ms)
        if p is not None:
            res["plots"].append(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p))
    res["chosen"] = []
    for n in res["sizes"]:
        c = chosen(res["rows"], n, cfg.recall_target, cfg.p99_budget_ms)
        if c is not None:
            res["chosen"].append(f"{n:,} items: {c['label']} {_params(c)} meets recall@10 >= {cfg.recall_target} "
                                 f"({c['recall_at_10']:.4f}) at p99 {c['p99_ms']:.2f} ms")
    base.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    base.with_suffix(".md").write_text(render_markdown(res))
    res["files"] = [str(base.with_suffix(".json")), str(base.with_suffix(".md")), *res["plots"]]
    return res


def main(argv: list[str] | None = None) -> int:
    parsed = build_parser().parse_args(argv)
    try:
        cfg = from_args(ScaleSettings, parsed)
        cfg.size_list()
        cfg.kind_list()
    except ValidationError as e:
        print(f"error: invalid settings: {describe_error(e)}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        res = run(cfg, log)
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(render_markdown(res))
    print("wrote " + ", ".join(res["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
