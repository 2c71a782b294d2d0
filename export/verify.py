"""Verify a serving artifact against the torch model it came from.

    python -m export.verify artifacts/serving/hgn/<version> [--data DIR] [--users 500]

1. Integrity: the schema checks of ``protocol.artifact`` that the server's reader runs too: schema
   version, required keys, checksums of every file, item counts and dims across manifest and ``items.npy``.
2. Consistency with the run: the weights are the ones exported (sha256), ``items.npy`` equals the model's
   ``item_vectors()`` (so the encoder and the index agree on the item count), ``popularity.npy`` equals the
   MostPop ranking of the training part, and the graph's inputs are still symbolic.
3. Encoder parity: ONNX Runtime vs ``model.encode`` on random and real histories, batch sizes
   (1, 2, 7, 64) x lengths (1, 3, max_len, longer than max_len -> the most recent max_len items):
   max |difference| < 1e-4.
4. Retrieval: top-20 through FAISS ``IndexFlatIP`` over ``items.npy`` with the ORT queries vs torch full
   scoring (``encode @ item_vectors().T``) on 500 real test histories: identical lists. A position where
   the two differ is accepted only as a near-tie, i.e. when the torch scores of the two items differ by
   less than the query difference can explain (Cauchy-Schwarz bound); such swaps are counted and shown.
5. Index: the approximate index the artifact carries (if any), read with ``faiss.read_index`` and searched with
   the manifest's knob on test histories export did not draw: recall@10 against exact no lower than the
   manifest's, up to sampling noise.

Exit status 0 when every check passes, 1 otherwise; errors are one line, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.artifact import load_model, load_run_dataset, read_run
from export.onnx_export import PARITY_TOL, ExportError, check_graph, ort_encode, ort_session, random_inputs
from protocol import SequenceDataset, eval_examples, pad_left
from protocol.artifact import (
    MANIFEST,
    ArtifactError,
    ArtifactFiles,
    check_counts,
    open_artifact,
    resolve_latest,
    sha256_file,
)
from training.mostpop import popularity_ranking

BATCHES = (1, 2, 7, 64)
TOP_K = 20
N_USERS = 500
ITEMS_TOL = 1e-6


@dataclass(frozen=True, eq=False)
class Artifact(ArtifactFiles):
    """An artifact that passed the schema checks, with its item table and popularity ranking loaded."""

    items: np.ndarray  # (N, D) float32, row i = item id i + 1
    popularity: np.ndarray  # item ids, most popular first

    @property
    def num_items(self) -> int:
        return int(self.items.shape[0])

    @property
    def dim(self) -> int:
        return int(self.items.shape[1])


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ArtifactError(f"{path}: not a readable .npy array ({e})") from None


def load_artifact(path: str | os.PathLike) -> Artifact:
    """``protocol.artifact.open_artifact`` (manifest, file names, checksums) + the arrays and their counts."""
    opened = open_artifact(path)
    items = _load_npy(opened.file("items"))
    if items.ndim != 2:
        raise ArtifactError(f"{opened.file('items')}: expected a 2-D (items, dim) array, found shape {items.shape}")
    check_counts(opened.path / MANIFEST, opened.manifest, items.shape)
    popularity = _load_npy(opened.file("popularity"))
    return Artifact(opened.path, opened.manifest, opened.files, items, popularity)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    """Outcome of ``verify_artifact``: one ``Check`` per step plus the measured figures."""

    artifact: Path
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def lines(self) -> list[str]:
        out = [f"artifact  {self.artifact}"]
        out += [f"{c.name:<9} {'ok  ' if c.ok else 'FAIL'} {c.detail}" for c in self.checks]
        out.append("OK" if self.ok else f"FAILED: {', '.join(c.name for c in self.checks if not c.ok)}")
        return out


# ------------------------------------------------------------------------------------------ inputs


def fit_length(history: np.ndarray, length: int) -> np.ndarray:
    """Left-padded (B, L) histories as (B, length): the most recent ``length`` columns, left-padded with 0."""
    if history.shape[1] >= length:
        return np.ascontiguousarray(history[:, history.shape[1] - length :])
    return np.pad(history, ((0, 0), (length - history.shape[1], 0)))


def encoder_input(artifact: Artifact, history: np.ndarray) -> np.ndarray:
    """What a client feeds the graph: exactly ``max_len`` columns for fixed-length encoders, else as is
    (the graph keeps the most recent ``max_len`` items itself)."""
    return fit_length(history, artifact.max_len) if artifact.fixed_length else history


@torch.no_grad()
def torch_queries(model: nn.Module, artifact: Artifact, history: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Reference queries: ``model.encode`` on the most recent ``max_len`` items (padded when fixed length)."""
    h = fit_length(history, artifact.max_len) if artifact.fixed_length else history[:, -artifact.max_len :]
    u = torch.from_numpy(users) if artifact.uses_user else None
    return model.encode(torch.from_numpy(np.ascontiguousarray(h)), u).float().numpy()


def _real_histories(
    test_inputs: list[np.ndarray], rows: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Test inputs of ``rows``, the most recent ``length`` items, left-padded; users are ``row + 1``."""
    return pad_left([test_inputs[r] for r in rows], length), rows.astype(np.int64) + 1


# ------------------------------------------------------------------------------------------ checks


def check_run(
    report: Report, artifact: Artifact, model: nn.Module | None, run_dir: str | os.PathLike | None = None
) -> nn.Module:
    """The torch model the artifact was exported from (``run_dir``, else the manifest's ``source.run_dir``),
    with the run's weights checked against the sha256 recorded at export time."""
    source = artifact.manifest.get("source") or {}
    run = Path(run_dir or source.get("run_dir") or "")
    if model is None:
        if not str(run) or str(run) == ".":
            raise ExportError(
                f"{artifact.path / 'manifest.json'}: no source.run_dir; pass the run with --run-dir"
            )
        read_run(run)
        model = load_model(run)
    weights = run / "model.safetensors"
    if source.get("weights_sha256") and str(run) != "." and weights.is_file():
        same = sha256_file(weights) == source["weights_sha256"]
        state = "matches the manifest" if same else "differs from the exported weights (sha256)"
        report.add("weights", same, f"{weights} {state}")
    return model.eval()


def check_items(report: Report, artifact: Artifact, model: nn.Module) -> bool:
    """Encoder and index agree: ``items.npy`` == ``item_vectors()``; manifest config item count too."""
    items_path = artifact.path / artifact.manifest["items"]["file"]
    with torch.no_grad():
        ref = model.item_vectors().float().numpy()
    cfg_items = (artifact.manifest["model"].get("config") or {}).get("num_items")
    if ref.shape != artifact.items.shape or (cfg_items is not None and cfg_items != artifact.num_items):
        report.add(
            "items",
            False,
            f"{items_path}: item-count mismatch between encoder and index: items.npy "
            f"{artifact.items.shape}, model item_vectors() {ref.shape}, model.config.num_items {cfg_items}",
        )
        return False
    diff = float(np.abs(ref - artifact.items).max())
    report.figures["items_max_abs_diff"] = diff
    report.add(
        "items",
        diff <= ITEMS_TOL,
        f"{items_path.name} vs item_vectors(): max |diff| {diff:.1e} "
        f"({artifact.num_items} items x {artifact.dim})",
    )
    return diff <= ITEMS_TOL


def check_popularity(report: Report, artifact: Artifact, ds: SequenceDataset) -> None:
    want = popularity_ranking(ds)
    same = np.array_equal(artifact.popularity, want)
    report.add(
        "popular",
        same,
        "popularity.npy "
        + ("equals" if same else "differs from")
        + " the MostPop ranking of the training part",
    )


def check_interface(report: Report, artifact: Artifact) -> None:
    """The graph's declared inputs are still symbolic (a re-export in one process can silently fix them)."""
    try:
        opset, _ = check_graph(
            artifact.encoder_path, artifact.max_len, artifact.fixed_length, artifact.uses_user
        )
        report.add(
            "graph",
            True,
            f"{artifact.encoder_path.name}: symbolic batch"
            + ("" if artifact.fixed_length else " and length")
            + f" axes, opset {opset}, "
            f"exporter {artifact.encoder.get('exporter', '?')}",
        )
    except ExportError as e:
        report.add("graph", False, str(e))


def check_parity(
    report: Report,
    artifact: Artifact,
    model: nn.Module,
    session: Any,
    test_inputs: list[np.ndarray],
    rng: np.random.Generator,
    batches: tuple[int, ...] = BATCHES,
) -> None:
    """Max |ORT - torch| over random/real x batches x lengths (1, 3, max_len, longer)."""
    n_users = artifact.num_users or 0
    lengths = (1, 3, artifact.max_len, artifact.max_len + 7)
    worst, worst_at = 0.0, ""
    for source in ("random", "real"):
        for b in batches:
            for length in lengths:
                if source == "random":
                    hist, users = random_inputs(rng, b, length, artifact.num_items, n_users)
                    hist[0, -1] = artifact.num_items  # the largest id must be inside the encoder's table
                else:
                    hist, users = _real_histories(test_inputs, rng.choice(len(test_inputs), b), length)
                try:
                    got = ort_encode(session, encoder_input(artifact, hist), users)
                except Exception as e:  # noqa: BLE001 - ORT raises its own pybind exception types
                    report.add(
                        "parity",
                        False,
                        f"{artifact.encoder_path}: ONNX Runtime fails on {source} ({b}, "
                        f"{length}) histories: {str(e).splitlines()[0][:200]}",
                    )
                    return
                diff = float(np.abs(got - torch_queries(model, artifact, hist, users)).max())
                if diff >= worst:
                    worst, worst_at = diff, f"{source} ({b}, {length})"
    report.figures["parity_max_abs_diff"] = worst
    report.add(
        "parity",
        worst < PARITY_TOL,
        f"max |ORT - torch| {worst:.2e} (worst at {worst_at}; tolerance "
        f"{PARITY_TOL:.0e}) over random/real x batch {list(batches)} x length {list(lengths)}",
    )


def faiss_topk(items: np.ndarray, queries: np.ndarray, k: int, gpu: bool = False) -> np.ndarray:
    """Item ids (1..N) of the top ``k`` by inner product through FAISS ``IndexFlatIP`` (exact)."""
    import faiss

    index = faiss.IndexFlatIP(items.shape[1])
    if gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(np.ascontiguousarray(items, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return ids.astype(np.int64) + 1


def compare_topk(
    got: np.ndarray, want: np.ndarray, scores: np.ndarray, slack: np.ndarray
) -> tuple[int, int, int]:
    """(identical rows, rows that differ only by near-ties, rows that really differ).

    ``scores`` (B, N+1) are the reference scores by item id; position i of a row may hold another item
    only when the two items' reference scores differ by at most ``slack`` of that row."""
    identical = tie = bad = 0
    for r in range(len(got)):
        pos = np.nonzero(got[r] != want[r])[0]
        if not len(pos):
            identical += 1
        elif np.all(np.abs(scores[r, got[r, pos]] - scores[r, want[r, pos]]) <= slack[r]):
            tie += 1
        else:
            bad += 1
    return identical, tie, bad


def check_topk(
    report: Report,
    artifact: Artifact,
    model: nn.Module,
    session: Any,
    test_inputs: list[np.ndarray],
    rng: np.random.Generator,
    n_users: int = N_USERS,
    k: int = TOP_K,
) -> None:
    """FAISS over items.npy with ORT queries vs torch full scoring, on ``n_users`` real test histories."""
    rows = np.sort(rng.choice(len(test_inputs), min(n_users, len(test_inputs)), replace=False))
    hist, users = _real_histories(test_inputs, rows, artifact.max_len)
    q_ort = np.concatenate(
        [
            ort_encode(session, encoder_input(artifact, hist[s : s + 256]), users[s : s + 256])
            for s in range(0, len(rows), 256)
        ]
    )
    q_torch = torch_queries(model, artifact, hist, users)
    with torch.no_grad():
        scores = (torch.from_numpy(q_torch) @ model.item_vectors().float().T).numpy()
    want = np.argsort(-scores, axis=1, kind="stable")[:, :k] + 1
    got = faiss_topk(artifact.items, q_ort, k)
    scores = np.pad(scores, ((0, 0), (1, 0)))  # column = item id
    max_norm = float(np.linalg.norm(artifact.items, axis=1).max())
    slack = 2 * np.linalg.norm(q_ort - q_torch, axis=1) * max_norm + 1e-5 * (1 + np.abs(scores).max(axis=1))
    identical, tie, bad = compare_topk(got, want, scores, slack)
    report.figures.update(
        {"topk_identical": identical, "topk_near_tie": tie, "topk_differ": bad, "topk_users": len(rows)}
    )
    report.add(
        f"top-{k}",
        bad == 0,
        f"FAISS IndexFlatIP + ORT vs torch full scoring on {len(rows)} real test "
        f"histories: {identical} identical, {tie} differ only by near-ties, {bad} differ",
    )


def check_index(
    report: Report,
    artifact: Artifact,
    session: Any,
    test_inputs: list[np.ndarray],
    n_users: int = N_USERS,
    seed: int = 1,
    k: int = 10,
) -> None:
    """The approximate index the artifact carries (``index.faiss``), read as the server reads it, searched with
    the manifest's knob on ORT queries of real test histories that export did not draw (``query_rows`` with
    another seed): its recall@10 against exact search must not fall below the manifest's by more than sampling
    noise allows (4 standard errors of the mean over the queries, at least 0.02). No entry, or an exact one:
    nothing to check (the server searches exactly)."""
    from protocol import ann
    from protocol.artifact import index_entry

    entry = index_entry(artifact.manifest, artifact.path / MANIFEST)
    if entry is None or not entry.get("file"):
        report.add("index", True, "exact search (no approximate index in the artifact)")
        return
    import faiss

    path = artifact.path / entry["file"]
    index = faiss.read_index(str(path))
    if index.ntotal != len(artifact.items):
        report.add("index", False, f"{path} holds {index.ntotal} vectors, items.npy {len(artifact.items)}")
        return
    for name, value in dict(entry["params"]).items():
        ann.set_knob(index, name, value)
    rows = ann.query_rows(len(test_inputs), n_users, seed)
    hist, users = _real_histories(test_inputs, rows, artifact.max_len)
    queries = np.concatenate([ort_encode(session, encoder_input(artifact, hist[s : s + 256]), users[s : s + 256])
                              for s in range(0, len(rows), 256)]).astype(np.float32)
    want = ann.exact_ids(artifact.items, queries, k)
    _, got = index.search(queries, k)
    per_query = np.array([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(got, want)])
    recall, stated = float(per_query.mean()), float(entry["recall_at_10"])
    tol = max(0.02, 4 * float(per_query.std(ddof=1)) / np.sqrt(len(per_query))) if len(per_query) > 1 else 0.02
    report.figures.update({"index_recall_at_10": recall, "index_recall_stated": stated, "index_recall_tol": tol})
    report.add("index", recall >= stated - tol,
               f"{entry['factory']} {entry['params']} read from {entry['file']}: recall@10 {recall:.4f} against exact on "
               f"{len(rows)} test histories export did not draw; the manifest says {stated:.4f} (tolerance {tol:.4f})")


def file_sizes(artifact: Artifact) -> dict[str, int]:
    return {name: (artifact.path / name).stat().st_size for name in sorted(artifact.manifest["files"])}


# ------------------------------------------------------------------------------------------ main


def verify_artifact(
    path: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    run_dir: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    n_users: int = N_USERS,
    batches: tuple[int, ...] = BATCHES,
    seed: int = 0,
) -> Report:
    """Run every check on the artifact in ``path``. Integrity failures raise ``ArtifactError``; other
    failures are recorded in the returned report (``report.ok``)."""
    artifact = load_artifact(path)
    report = Report(Path(path))
    files = file_sizes(artifact)
    report.figures["sizes"] = files
    report.add(
        "integrity",
        True,
        f"schema {artifact.manifest['schema_version']}, sha256 of "
        f"{', '.join(files)} match the manifest (protocol.artifact)",
    )
    model = check_run(report, artifact, model, run_dir)
    ds = load_run_dataset(
        {
            "dataset": artifact.manifest["dataset"]["name"],
            "data_sha256": artifact.manifest["dataset"]["sha256"],
        },
        data,
    )
    check_interface(report, artifact)
    check_popularity(report, artifact, ds)
    if not check_items(report, artifact, model):
        return report  # parity and top-k need one item table
    session = ort_session(artifact.encoder_path)
    test_inputs, _ = eval_examples(ds, "test")
    rng = np.random.default_rng(seed)
    check_parity(report, artifact, model, session, test_inputs, rng, batches)
    check_topk(report, artifact, model, session, test_inputs, rng, n_users)
    check_index(report, artifact, session, test_inputs, n_users)
    report.add("sizes", True, ", ".join(f"{n} {s / 1024:.1f} KiB" for n, s in files.items()))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.verify", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "artifact", type=Path, help="artifact folder (<root>/<model>/<version>) or a root with 'latest'"
    )
    p.add_argument(
        "--data", default=None, help="data folder or .txt file (default: $SSI_DATA_DIR, else ./data)"
    )
    p.add_argument(
        "--run-dir", default=None, help="the training run (default: the manifest's source.run_dir)"
    )
    p.add_argument("--users", type=int, default=N_USERS, help="real test histories for the top-20 check")
    a = p.parse_args(argv)
    try:
        report = verify_artifact(resolve_latest(a.artifact), run_dir=a.run_dir, data=a.data, n_users=a.users)
    except (ArtifactError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
