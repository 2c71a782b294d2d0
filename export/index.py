"""The search index that travels in the artifact: chosen for the catalogue size and a recall target, built with
FAISS's index factory, measured against exact search, written with ``faiss.write_index``.

``choose_index(items, queries, config)`` decides:

- ``--index flat``, or ``auto`` on a catalogue of at most ``exact_max_items`` rows (262,144: the largest size
  measured where both exact paths met a 10 ms single-query p99 on one thread, matmul 9.7 ms and ``IndexFlatIP``
  3.5 ms; at 524,288 matmul took 12.3 ms; ``loadtest/README.md``, "Catalogue scale"): exact search, no index
  file (the server's exact path: matmul or ``IndexFlatIP``); recall 1 by definition.
- ``auto`` above it: each candidate (``IVF<4 sqrt N>,Flat``, ``IVF<16 sqrt N>,Flat``, ``HNSW32,Flat``; from 1M
  rows the IVF quantizer is an HNSW graph) is built, its knob (``nprobe`` / ``efSearch``) swept upwards on the
  tuning half of the queries until recall@10 against exact reaches ``recall_target``, and its recall measured
  on the other half (held out). The cheapest candidate that reaches the target on the held-out half wins
  (median single-query search time at the chosen knob; ties: the smaller file). When none does, exact search.
- a factory string (``--index IVF64,Flat``, ``HNSW32``, ...): that index, its knob tuned the same way; its
  measured recall is recorded whether or not it reaches the target (``target_met``).

Queries: real encoded test histories (each user's ``s[:-1]`` through the exported ONNX encoder), at most
``queries`` users drawn with ``protocol.ann.query_rows``; with ``query_source="items"`` (or no dataset),
vectors drawn from a Gaussian fitted to the item table instead. The manifest says which.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from protocol import ann
from protocol.artifact import INDEX_FILE

EXACT_MAX_ITEMS = 262_144  # auto: exact search up to this many items (see the module docstring)


class IndexSettingError(ValueError):
    """A bad index setting (the message names it)."""


@dataclass(frozen=True)
class IndexConfig:
    """The export's index settings (``python -m export --help``: ``--index``, ``--recall-target``, ...)."""

    index: str = "auto"  # auto | flat | a FAISS factory string (IVF<n>,Flat, IVF<n>,PQ<m>, HNSW<m>)
    recall_target: float = 0.95
    exact_max_items: int = EXACT_MAX_ITEMS
    queries: int = 1000
    query_source: Literal["real", "items"] = "real"
    train_per_list: int = ann.TRAIN_PER_LIST
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.recall_target <= 1.0:
            raise IndexSettingError(f"recall_target must lie in (0, 1], got {self.recall_target}")
        if self.exact_max_items < 0:
            raise IndexSettingError(f"exact_max_items must be >= 0, got {self.exact_max_items}")
        if self.queries < 2:
            raise IndexSettingError(f"index queries must be >= 2, got {self.queries}")
        if self.index not in ("auto", "flat"):
            try:
                ann.kind_of(self.index)
            except ValueError as e:
                raise IndexSettingError(f"--index: {e}") from None


DEFAULT_INDEX = IndexConfig()


def item_queries(items: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` query vectors drawn from a Gaussian fitted to the item table (mean, per-dimension std), the bias
    column set to 1 (a query's bias slot, as every student's ``encode`` writes it)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, items.shape[1])) * items.std(axis=0) + items.mean(axis=0)
    x[:, -1] = 1.0
    return np.ascontiguousarray(x, dtype=np.float32)


def candidates(n: int, d: int) -> list[str]:
    """IVF at 4 and 16 sqrt(N) lists (those with at least 39 rows per list to train on: FAISS's minimum) and HNSW32."""
    ivf = [f for f in (ann.ivf_factory(n, d), ann.ivf_factory(n, d, per_sqrt=16.0)) if 39 * ann.nlist_of(f) <= n]
    return [*dict.fromkeys(ivf), "HNSW32,Flat"]


def _median_ms(index: Any, queries: np.ndarray, k: int) -> float:
    lat = ann.single_query_ms(index, queries, k, max_queries=200, max_seconds=5.0, min_queries=20)
    return float(np.median(lat))


def _try(factory: str, items: np.ndarray, tune_q: np.ndarray, tune_want: np.ndarray, held_q: np.ndarray,
         held_want: np.ndarray, config: IndexConfig, k: int) -> tuple[Any, dict[str, Any]]:
    built = ann.build(factory, items, config.train_per_list, config.seed)
    value, tuned_recall, steps = ann.tune(built.index, built.knob, ann.knob_values(built.kind, factory), tune_q,
                                          tune_want, config.recall_target, k)
    ann.set_knob(built.index, built.knob, value)
    _, got = built.index.search(held_q, k)
    recall = ann.recall_at_k(got, held_want, k)
    row = {"factory": factory, "kind": built.kind, "params": {built.knob: value} if built.knob else {},
           "recall_at_10": round(recall, 5), "tuning_recall_at_10": round(tuned_recall, 5),
           "target_met": recall >= config.recall_target, "median_search_ms": round(_median_ms(built.index, held_q, k), 4),
           "build_s": round(built.build_s, 3), "train_rows": built.train_rows,
           "bytes": ann.serialized_bytes(built.index), "sweep": steps}
    return built.index, row


def choose_index(items: np.ndarray, queries: np.ndarray, query_source: str,
                 config: IndexConfig = DEFAULT_INDEX, k: int = 10) -> tuple[Any | None, dict[str, Any]]:
    """(the FAISS index to write, or None for exact search; the manifest's ``index`` entry)."""
    import faiss

    n, d = items.shape
    k = min(k, n)
    entry: dict[str, Any] = {"metric": "inner_product", "recall_target": config.recall_target, "setting": config.index,
                             "exact_max_items": config.exact_max_items, "query_source": query_source,
                             "faiss": faiss.__version__, "ntotal": int(n), "dim": int(d)}
    exact = {"kind": "flat", "factory": "Flat", "file": None, "params": {}, "recall_at_10": 1.0, "target_met": True,
             "queries": len(queries), "tuned_on": 0, "build_s": 0.0}
    if config.index == "flat":
        return None, {**entry, **exact, "chosen_because": "index=flat (setting): exact search"}
    if config.index == "auto" and n <= config.exact_max_items:
        return None, {**entry, **exact, "chosen_because": f"index=auto: {n} items <= exact_max_items "
                      f"{config.exact_max_items}, exact search meets the latency budget"}
    tune_q, held_q = queries[0::2], queries[1::2]
    want = ann.exact_ids(items, queries, k)
    tune_want, held_want = want[0::2], want[1::2]
    factories = [config.index] if config.index != "auto" else candidates(n, d)
    tried: list[dict[str, Any]] = []
    best: tuple[Any, dict[str, Any]] | None = None
    for factory in factories:
        index, row = _try(factory, items, tune_q, tune_want, held_q, held_want, config, k)
        tried.append(row)
        if config.index != "auto" or (row["target_met"] and (best is None or (row["median_search_ms"], row["bytes"])
                                                             < (best[1]["median_search_ms"], best[1]["bytes"]))):
            best = (index, row)
    summary = [{key: r[key] for key in ("factory", "params", "recall_at_10", "target_met", "median_search_ms",
                                        "build_s", "bytes")} for r in tried]
    if best is None:
        return None, {**entry, **exact, "candidates": summary,
                      "chosen_because": f"index=auto: no candidate reached recall@10 {config.recall_target} on the "
                      "held-out queries; exact search"}
    index, row = best
    why = (f"index={config.index} (setting)" if config.index != "auto" else
           f"index=auto: {n} items > exact_max_items {config.exact_max_items}; the fastest candidate reaching "
           f"recall@10 {config.recall_target} on the held-out queries")
    return index, {**entry, "kind": row["kind"], "factory": row["factory"], "file": INDEX_FILE,
                   "params": row["params"], "recall_at_10": row["recall_at_10"], "target_met": row["target_met"],
                   "queries": len(held_q), "tuned_on": len(tune_q),
                   "tuning_recall_at_10": row["tuning_recall_at_10"], "median_search_ms": row["median_search_ms"],
                   "build_s": row["build_s"], "train_rows": row["train_rows"], "bytes": row["bytes"],
                   "sweep": row["sweep"], "candidates": summary, "chosen_because": why}


def write_index(index: Any, folder: Path) -> Path:
    """``faiss.write_index`` into ``folder/index.faiss``."""
    import faiss

    path = folder / INDEX_FILE
    faiss.write_index(index, str(path))
    return path

