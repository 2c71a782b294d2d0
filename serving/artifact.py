"""Finding, loading and verifying a serving artifact (see docs/CONTRACTS.md, "Serving artifact").

``resolve_latest(root)`` picks the artifact to serve; ``load_artifact(path)`` reads it and checks it
end to end: manifest keys, schema version, file checksums, item count and dimensions across the
manifest, ``items.npy``, ``popularity.npy``, the id map and the ONNX graph's declared inputs/outputs.
Every failure is an ``ArtifactError`` whose message names the file and the problem, so the server
can print it as one line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

# The schema (names, version, manifest checks, checksums, ``latest``) is shared with export/: protocol.artifact.
from protocol.artifact import (  # noqa: F401 - SCHEMA_VERSION, MANIFEST, LATEST, sha256_file re-exported
    LATEST,
    MANIFEST,
    SCHEMA_VERSION,
    ArtifactError,
    ManifestView,
    artifact_files,
    check_counts,
    index_entry,
    read_manifest,
    resolve_latest,
    sha256_file,
)
from protocol.artifact import (
    verify_checksums as verify_checksums_of,
)


@dataclass(frozen=True)
class IdMap:
    """Raw item ids <-> internal ids (1..N). Raw ids are kept as they appear in ``id_map.json``."""

    raw_ids: tuple[Any, ...]  # raw_ids[i] is the raw id of internal item i + 1
    lookup: dict[str, int]  # str(raw id) -> internal id

    def to_internal(self, raw: Any) -> int | None:
        """Internal id of a raw id (an int or a string; ``5`` and ``"5"`` are the same id), or None."""
        if isinstance(raw, bool):
            return None
        return self.lookup.get(str(raw))

    def to_raw(self, internal: int) -> Any:
        return self.raw_ids[internal - 1]


@dataclass(frozen=True)
class Artifact(ManifestView):
    """A verified artifact held in memory (the ONNX file is read by the backend)."""

    encoder_path: Path
    items: np.ndarray  # (N, D) float32, row i = item id i + 1
    popularity: np.ndarray  # (P,) int64 internal item ids, most popular first
    id_map: IdMap | None = None
    pop_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (N+1,) rank by id
    index: dict[str, Any] | None = None  # the manifest's ``index`` entry (None: an artifact from before it)
    index_path: Path | None = None  # its ``index.faiss`` (read by the backend), None for exact search

    # Read on every request: computed once (an artifact never changes once loaded; a reload makes a new one).
    @cached_property
    def name(self) -> str:
        return str(self.manifest["model"]["name"])

    @cached_property
    def version(self) -> str:
        return str(self.manifest["model"]["version"])

    @cached_property
    def num_items(self) -> int:
        return int(self.items.shape[0])

    @cached_property
    def dim(self) -> int:
        return int(self.items.shape[1])

    @cached_property
    def max_len(self) -> int:  # type: ignore[override]
        return ManifestView.max_len.fget(self)  # type: ignore[attr-defined]

    @cached_property
    def uses_user(self) -> bool:  # type: ignore[override]
        return ManifestView.uses_user.fget(self)  # type: ignore[attr-defined]

    @cached_property
    def num_users(self) -> int | None:  # type: ignore[override]
        return ManifestView.num_users.fget(self)  # type: ignore[attr-defined]

    def summary(self) -> dict[str, Any]:
        """What /model shows about the artifact (no file system details beyond its folder name)."""
        m = self.manifest
        return {
            "name": self.name, "version": self.version, "created_at": m.get("created_at"),
            "schema_version": m.get("schema_version"), "config": m["model"].get("config"),
            "encoder": {k: v for k, v in self.encoder.items() if k != "file"},
            "items": {"count": self.num_items, "dim": self.dim}, "has_id_map": self.id_map is not None,
            "dataset": m.get("dataset"), "metrics": m.get("metrics"), "packages": m.get("packages"),
            "index": {k: v for k, v in self.index.items() if k not in ("sweep", "file")} if self.index else None,
        }


# ------------------------------------------------------------------------------------------------ load


def load_artifact(path: str | Path, verify_checksums: bool = True) -> Artifact:
    """Read and verify the artifact in ``path``. Raises ``ArtifactError`` naming the file and problem."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: artifact folder does not exist")
    manifest = read_manifest(path / MANIFEST)
    files = artifact_files(path, manifest)
    if verify_checksums:
        verify_checksums_of(path, manifest, files)
    items = _load_items(path / files["items"], manifest)
    n = items.shape[0]
    check_counts(path / MANIFEST, manifest, items.shape)
    _check_onnx(path / files["encoder"], manifest, items.shape[1])
    popularity = _load_popularity(path / files["popularity"], n)
    id_map = _load_id_map(path / files["id_map"], n) if "id_map" in files else None
    pop_rank = np.full(n + 1, n + 1, dtype=np.int64)
    pop_rank[popularity] = np.arange(len(popularity))  # popularity holds every item once
    index = index_entry(manifest, path / MANIFEST)  # the index file itself is checked against items.npy on reading
    return Artifact(path=path, manifest=manifest, encoder_path=path / files["encoder"], items=items,
                    popularity=popularity, id_map=id_map, pop_rank=pop_rank, index=index,
                    index_path=path / files["index"] if "index" in files else None)


def _load_npy(fpath: Path) -> np.ndarray:
    try:
        return np.load(fpath, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ArtifactError(f"{fpath}: not a readable .npy array ({e})") from None


def _load_items(fpath: Path, manifest: dict[str, Any]) -> np.ndarray:
    items = _load_npy(fpath)
    if items.ndim != 2 or items.shape[0] < 1 or items.shape[1] < 1:
        raise ArtifactError(f"{fpath}: expected a 2-D (items, dim) array, found shape {items.shape}")
    if items.dtype != np.float32:
        raise ArtifactError(f"{fpath}: expected float32, found {items.dtype}")
    if not np.isfinite(items).all():
        raise ArtifactError(f"{fpath}: contains NaN or infinite values")
    return np.ascontiguousarray(items)


def _check_onnx(fpath: Path, manifest: dict[str, Any], dim: int) -> None:
    """Declared graph inputs/outputs against the manifest (static check; warm-up checks the real shape)."""
    try:
        import onnx
    except ImportError:  # the graph is still checked at warm-up
        return
    try:
        model = onnx.load(str(fpath), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and friends
        raise ArtifactError(f"{fpath}: not a readable ONNX model ({type(e).__name__})") from None
    enc = manifest["encoder"]
    inputs = [i.name for i in model.graph.input]
    want = ["history"] + (["user"] if enc.get("uses_user") else [])
    declared = list(enc["input_names"])
    if sorted(declared) != sorted(want) or sorted(inputs) != sorted(want):
        raise ArtifactError(f"{fpath}: graph inputs {inputs}, manifest says {declared}, expected {want}")
    outputs = {o.name: o for o in model.graph.output}
    if enc["output_name"] not in outputs:
        raise ArtifactError(f"{fpath}: no output named {enc['output_name']!r} (outputs: {list(outputs)})")
    dims = outputs[enc["output_name"]].type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value != dim:
        raise ArtifactError(f"{fpath}: ONNX output dim {dims[1].dim_value} does not match items.npy dim {dim}")


def _load_popularity(fpath: Path, n: int) -> np.ndarray:
    pop = _load_npy(fpath)
    if pop.ndim != 1 or not np.issubdtype(pop.dtype, np.integer):
        raise ArtifactError(f"{fpath}: expected a 1-D integer array of item ids, found {pop.dtype} {pop.shape}")
    pop = pop.astype(np.int64)
    if len(pop) and (pop.min() < 1 or pop.max() > n):
        raise ArtifactError(f"{fpath}: item ids must lie in 1..{n}, found {pop.min()}..{pop.max()}")
    # Items never seen in training follow, in id order, so every item can be ranked.
    rest = np.setdiff1d(np.arange(1, n + 1, dtype=np.int64), pop, assume_unique=False)
    _, first = np.unique(pop, return_index=True)
    return np.concatenate([pop[np.sort(first)], rest])


def _load_id_map(fpath: Path, n: int) -> IdMap:
    try:
        data = json.loads(fpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{fpath}: not valid JSON ({e})") from None
    raw = data.get("item_ids") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        raise ArtifactError(f"{fpath}: expected {{\"item_ids\": [...]}}")
    if len(raw) != n:
        raise ArtifactError(f"{fpath}: item-count mismatch: {len(raw)} ids, items.npy has {n} rows")
    if any(isinstance(r, bool) or not isinstance(r, (int, str)) for r in raw):
        raise ArtifactError(f"{fpath}: raw item ids must be strings or integers")
    lookup = {str(r): i + 1 for i, r in enumerate(raw)}
    if len(lookup) != n:
        raise ArtifactError(f"{fpath}: raw item ids are not unique")
    return IdMap(raw_ids=tuple(raw), lookup=lookup)
