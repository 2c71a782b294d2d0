"""The serving artifact's schema: file names, manifest fields, schema version, checksums, ``latest``.

One small torch-free module (json, hashlib, re) that every party to an artifact imports: ``export/``
writes artifacts with it, ``serving/artifact.py`` reads them with it, and the tests build fake ones with
it. Layout (docs/CONTRACTS.md, "Serving artifact")::

    <root>/latest                      text "<model-name>/<version>", replaced atomically
    <root>/<model-name>/<version>/     manifest.json, encoder.onnx, items.npy, popularity.npy[, id_map.json]
                                       [, index.faiss]

The manifest's ``index`` entry (``INDEX_KEYS``) says how the server ranks the whole catalogue: the kind chosen at
export (``flat`` = exact, no file; ``ivf`` / ``ivfpq`` / ``hnsw`` = ``index.faiss``, written by
``faiss.write_index``), its FAISS factory string, its search knob (``params``) and its recall@10 against exact
measured at export. An artifact without the entry (exported before indexes travelled) is served exactly.

What lives here: the names (``MANIFEST``, ``ENCODER_FILE``, ...), ``SCHEMA_VERSION``, the manifest as
typed parts (``Manifest``, ``EncoderSpec``, ``DatasetSpec``) that write the JSON layout, and the checks
that need no arrays or graph: ``read_manifest`` (JSON, schema version, required keys), ``artifact_files``
(plain file names that exist), ``verify_checksums`` (sha256 of every listed file), ``check_counts``
(item count and dimension across the manifest and ``items.npy``'s shape) and ``resolve_latest``.
``open_artifact`` runs the first three. Every failure is an ``ArtifactError`` whose message names the
file and the problem, in one line.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.data import sha256_file

__all__ = [
    "ENCODER_FILE", "ID_MAP_FILE", "INDEX_FILE", "INDEX_KEYS", "INPUT_HISTORY", "INPUT_USER", "ITEMS_FILE", "LATEST", "MANIFEST",
    "OUTPUT_QUERY", "POPULARITY_FILE", "REQUIRED_KEYS", "SCHEMA_VERSION", "ArtifactError", "ArtifactFiles",
    "DatasetSpec", "EncoderSpec", "Manifest", "artifact_files", "check_counts", "file_checksums",
    "index_entry", "input_names", "is_safe_name", "latest_text", "open_artifact", "read_manifest", "resolve_latest",
    "sha256_file", "verify_checksums",
]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"
ENCODER_FILE = "encoder.onnx"
ITEMS_FILE = "items.npy"
POPULARITY_FILE = "popularity.npy"
ID_MAP_FILE = "id_map.json"
INDEX_FILE = "index.faiss"
#: Keys of the manifest's ``index`` entry that readers rely on (``index_entry`` checks them).
INDEX_KEYS = ("kind", "factory", "params", "recall_at_10", "queries", "query_source", "build_s")
INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw")
INPUT_HISTORY, INPUT_USER, OUTPUT_QUERY = "history", "user", "query"
#: Manifest keys every reader relies on (dotted paths); ``read_manifest`` refuses a manifest without one.
REQUIRED_KEYS = ("model.name", "model.version", "encoder.file", "encoder.max_len", "encoder.output_name",
                 "encoder.input_names", "items.file", "items.count", "popularity.file", "files")
# "@" and "+" for runs named as compositions (training/catalogue.py: hgn_ce--sasrec_ce@0+sasrec_ce@1), whose
# artifact folder is the run's name; still no separator and no leading dot
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")


class ArtifactError(Exception):
    """An artifact that cannot be served. The message names the file and what is wrong with it."""


def is_safe_name(name: object) -> bool:
    """A plain file or folder name (no separators, no leading dot): safe to join to an artifact folder."""
    return isinstance(name, str) and bool(_SAFE_NAME.match(name))


def input_names(uses_user: bool) -> list[str]:
    """The encoder graph's inputs: ``history``, plus ``user`` when the model embeds users."""
    return [INPUT_HISTORY, INPUT_USER] if uses_user else [INPUT_HISTORY]


def latest_text(name: str, version: str) -> str:
    """The content of ``<root>/latest`` pointing at ``<root>/<name>/<version>``."""
    return f"{name}/{version}\n"


def file_checksums(folder: str | Path, names: Iterable[str]) -> dict[str, str]:
    """``{name: sha256}`` of the given files in ``folder`` (the manifest's ``files``)."""
    folder = Path(folder)
    return {name: sha256_file(folder / name) for name in sorted(names)}


# ------------------------------------------------------------------------------------------ writing


@dataclass(frozen=True)
class EncoderSpec:
    """The manifest's ``encoder`` entry: the ONNX graph's interface."""

    max_len: int
    fixed_length: bool
    uses_user: bool
    dim: int
    opset: int
    exporter: str | None = None  # "torchscript" | "dynamo"; None when not recorded
    file: str = ENCODER_FILE
    output_name: str = OUTPUT_QUERY

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file}
        if self.exporter is not None:
            out["exporter"] = self.exporter
        out.update(opset=self.opset, input_names=input_names(self.uses_user), output_name=self.output_name,
                   max_len=self.max_len, fixed_length=self.fixed_length, uses_user=self.uses_user, dim=self.dim)
        return out


@dataclass(frozen=True)
class DatasetSpec:
    """The manifest's ``dataset`` entry: what the model was trained and measured on."""

    name: str
    sha256: str
    negatives_sha256: str | None
    num_users: int
    num_items: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "negatives_sha256": self.negatives_sha256,
                "num_users": self.num_users, "num_items": self.num_items}


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``. ``files`` maps every file of the artifact to its sha256 (``file_checksums``);
    ``extra`` holds writer-specific keys that readers ignore (the exporter's ``source``)."""

    name: str
    version: str
    config: dict[str, Any]
    encoder: EncoderSpec
    items_count: int
    items_dim: int
    dataset: DatasetSpec
    metrics: dict[str, Any]
    created_at: str  # UTC, "YYYY-MM-DDTHH:MM:SSZ"
    packages: dict[str, str]
    files: dict[str, str]
    has_id_map: bool = False
    index: dict[str, Any] | None = None  # the ``index`` entry (``INDEX_KEYS``); None: none recorded
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "model": {"name": self.name, "version": self.version, "config": self.config},
            "encoder": self.encoder.to_dict(),
            "items": {"file": ITEMS_FILE, "count": int(self.items_count), "dim": int(self.items_dim)},
            "popularity": {"file": POPULARITY_FILE},
            "id_map": {"file": ID_MAP_FILE} if self.has_id_map else None,
            "dataset": self.dataset.to_dict(),
            "metrics": self.metrics,
        }
        if self.index is not None:
            out["index"] = self.index
        out.update(self.extra)
        out.update(created_at=self.created_at, packages=self.packages, files=self.files)
        return out

    def write(self, folder: str | Path, indent: int | None = 2) -> Path:
        """Write ``folder/manifest.json`` (the caller makes the folder atomic) and return its path."""
        path = Path(folder) / MANIFEST
        path.write_text(json.dumps(self.to_dict(), indent=indent) + "\n", encoding="utf-8")
        return path


# ------------------------------------------------------------------------------------------ reading


def read_manifest(mpath: str | Path) -> dict[str, Any]:
    """The manifest at ``mpath``, checked: a JSON object, a supported ``schema_version``, every required key."""
    mpath = Path(mpath)
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: missing file")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: expected a JSON object")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"{mpath}: missing or non-integer 'schema_version'")
    if version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{mpath}: schema_version {version} is newer than this server supports ({SCHEMA_VERSION}); upgrade serving"
        )
    for key in REQUIRED_KEYS:
        _require(manifest, key, mpath)
    return manifest


def _require(manifest: dict[str, Any], dotted: str, mpath: Path) -> Any:
    node: Any = manifest
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node or node[part] is None:
            raise ArtifactError(f"{mpath}: missing key '{dotted}'")
        node = node[part]
    return node


def artifact_files(path: str | Path, manifest: dict[str, Any]) -> dict[str, str]:
    """``{role: file name}`` for encoder, items, popularity and (when present) id_map and index, each checked
    to be a plain file name that exists in ``path``."""
    path = Path(path)
    mpath = path / MANIFEST
    names = {"encoder": manifest["encoder"]["file"], "items": manifest["items"]["file"],
             "popularity": manifest["popularity"]["file"]}
    id_map = manifest.get("id_map")
    if isinstance(id_map, dict) and id_map.get("file"):
        names["id_map"] = id_map["file"]
    elif isinstance(id_map, str):
        names["id_map"] = id_map
    elif (path / ID_MAP_FILE).is_file():
        names["id_map"] = ID_MAP_FILE
    entry = index_entry(manifest, mpath)
    if entry is not None and entry.get("file"):
        names["index"] = entry["file"]
    for role, name in names.items():
        if not is_safe_name(name):
            raise ArtifactError(f"{mpath}: {role} file name {name!r} is not a plain file name")
        if not (path / name).is_file():
            raise ArtifactError(f"{path / name}: missing file")
    return names


def index_entry(manifest: dict[str, Any], mpath: str | Path = MANIFEST) -> dict[str, Any] | None:
    """The manifest's ``index`` entry, checked (``INDEX_KEYS``, a known kind, a file for an approximate kind),
    or None when the artifact has none (exported before indexes travelled: served exactly)."""
    entry = manifest.get("index")
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ArtifactError(f"{mpath}: 'index' must be an object")
    for key in INDEX_KEYS:
        if key not in entry:
            raise ArtifactError(f"{mpath}: missing key 'index.{key}'")
    if entry["kind"] not in INDEX_KINDS:
        raise ArtifactError(f"{mpath}: index.kind {entry['kind']!r} is not one of {', '.join(INDEX_KINDS)}")
    if entry["kind"] != "flat" and not entry.get("file"):
        raise ArtifactError(f"{mpath}: index.kind {entry['kind']!r} needs 'index.file' (the faiss.write_index file)")
    if not isinstance(entry["params"], dict):
        raise ArtifactError(f"{mpath}: index.params must be an object (knob -> value)")
    return entry


def verify_checksums(path: str | Path, manifest: dict[str, Any], names: dict[str, str]) -> None:
    """Every file listed in the manifest's ``files`` exists and has its sha256; the three required
    files (``names`` from ``artifact_files``) are listed."""
    path = Path(path)
    sums = manifest["files"]
    mpath = path / MANIFEST
    if not isinstance(sums, dict):
        raise ArtifactError(f"{mpath}: 'files' must map file names to sha256 checksums")
    for role in ("encoder", "items", "popularity", "index"):
        if role in names and names[role] not in sums:
            raise ArtifactError(f"{mpath}: no checksum for {names[role]} in 'files'")
    for name, expected in sums.items():
        if not is_safe_name(name):
            raise ArtifactError(f"{mpath}: file name {name!r} in 'files' is not a plain file name")
        fpath = path / name
        if not fpath.is_file():
            raise ArtifactError(f"{fpath}: missing file")
        actual = sha256_file(fpath)
        if actual != str(expected).lower():
            raise ArtifactError(
                f"{fpath}: checksum mismatch (sha256 {actual[:12]}..., manifest says {str(expected)[:12]}...)"
            )


def check_counts(mpath: str | Path, manifest: dict[str, Any], items_shape: tuple[int, ...]) -> None:
    """Item count and dimension agree across the manifest and ``items.npy`` (shape ``(N, D)``)."""
    n, d = items_shape
    count = manifest["items"]["count"]
    if count != n:
        raise ArtifactError(f"{mpath}: item-count mismatch: manifest items.count={count}, items.npy has {n} rows")
    ds_items = (manifest.get("dataset") or {}).get("num_items")
    if ds_items is not None and ds_items != n:
        raise ArtifactError(f"{mpath}: item-count mismatch: dataset.num_items={ds_items}, items.npy has {n} rows")
    for key in ("items", "encoder"):
        dim = manifest[key].get("dim")
        if dim is not None and dim != d:
            raise ArtifactError(f"{mpath}: dimension mismatch: {key}.dim={dim}, items.npy has {d} columns")
    if manifest["encoder"]["max_len"] < 1:
        raise ArtifactError(f"{mpath}: encoder.max_len must be at least 1")
    if manifest["encoder"].get("uses_user") and not isinstance((manifest.get("dataset") or {}).get("num_users"), int):
        raise ArtifactError(f"{mpath}: missing key 'dataset.num_users' (needed to check user ids of a user model)")


@dataclass(frozen=True)
class ManifestView:
    """An artifact folder and its checked manifest, with the encoder facts every reader needs."""

    path: Path
    manifest: dict[str, Any]

    @property
    def encoder(self) -> dict[str, Any]:
        return self.manifest["encoder"]

    @property
    def max_len(self) -> int:
        return int(self.encoder["max_len"])

    @property
    def uses_user(self) -> bool:
        return bool(self.encoder.get("uses_user", False))

    @property
    def fixed_length(self) -> bool:
        return bool(self.encoder.get("fixed_length", False))

    @property
    def num_users(self) -> int | None:
        n = (self.manifest.get("dataset") or {}).get("num_users")
        return int(n) if n is not None else None


@dataclass(frozen=True)
class ArtifactFiles(ManifestView):
    """An artifact folder whose manifest (and, by default, checksums) passed; no array is loaded."""

    files: dict[str, str]  # role -> file name (encoder, items, popularity[, id_map][, index])

    def file(self, role: str) -> Path:
        return self.path / self.files[role]

    @property
    def encoder_path(self) -> Path:
        return self.file("encoder")


def open_artifact(path: str | Path, verify: bool = True) -> ArtifactFiles:
    """``read_manifest`` + ``artifact_files`` (+ ``verify_checksums`` when ``verify``) on the folder ``path``."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: artifact folder does not exist")
    manifest = read_manifest(path / MANIFEST)
    files = artifact_files(path, manifest)
    if verify:
        verify_checksums(path, manifest, files)
    return ArtifactFiles(path=path, manifest=manifest, files=files)


def resolve_latest(root: str | Path) -> Path:
    """The artifact folder to use under ``root``.

    ``root`` itself when it holds a manifest; else the folder named by ``root/latest``
    (``<model-name>/<version>``, written atomically by the exporter); else the newest
    ``root/<model>/<version>/`` by version name (versions start with a UTC timestamp).
    """
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: artifact root does not exist or is not a folder")
    if (root / MANIFEST).is_file():
        return root
    pointer = root / LATEST
    if pointer.is_file():
        return _follow_pointer(root, pointer)
    found = [m.parent for m in root.glob(f"*/*/{MANIFEST}")]
    if not found:
        raise ArtifactError(f"{root}: no artifact found (no '{LATEST}' file and no <model>/<version>/{MANIFEST})")
    return max(found, key=lambda p: (p.name, p.stat().st_mtime))


def _follow_pointer(root: Path, pointer: Path) -> Path:
    text = pointer.read_text(encoding="utf-8").strip()
    parts = text.split("/")
    if len(parts) != 2 or not all(is_safe_name(p) for p in parts):
        raise ArtifactError(f"{pointer}: expected '<model-name>/<version>', found {text[:80]!r}")
    target = root / parts[0] / parts[1]
    if not target.is_dir():
        raise ArtifactError(f"{pointer}: points to {target}, which does not exist")
    return target
