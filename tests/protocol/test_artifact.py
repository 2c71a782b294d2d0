"""The artifact schema (protocol.artifact): the manifest it writes, the checks it runs, and no torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.artifact import (
    LATEST,
    MANIFEST,
    REQUIRED_KEYS,
    SCHEMA_VERSION,
    ArtifactError,
    DatasetSpec,
    EncoderSpec,
    Manifest,
    check_counts,
    file_checksums,
    latest_text,
    open_artifact,
    resolve_latest,
)

N, D = 7, 4


def _write(folder: Path, uses_user: bool = True, id_map: bool = False) -> Manifest:
    """A schema-complete artifact with placeholder graph bytes (the schema never parses the graph)."""
    folder.mkdir(parents=True)
    (folder / "encoder.onnx").write_bytes(b"not parsed here")
    np.save(folder / "items.npy", np.ones((N, D), dtype=np.float32))
    np.save(folder / "popularity.npy", np.arange(1, N + 1, dtype=np.int64))
    names = ["encoder.onnx", "items.npy", "popularity.npy"]
    if id_map:
        (folder / "id_map.json").write_text(json.dumps({"item_ids": [f"i{k}" for k in range(N)]}))
        names.append("id_map.json")
    manifest = Manifest(
        name="m", version="20260101T000000Z-aaaaaa", config={"dim": D},
        encoder=EncoderSpec(max_len=5, fixed_length=True, uses_user=uses_user, dim=D, opset=18, exporter="dynamo"),
        items_count=N, items_dim=D,
        dataset=DatasetSpec(name="tiny", sha256="ab" * 32, negatives_sha256="cd" * 32, num_users=3, num_items=N),
        metrics={"test": {"sampled": {"ndcg@10": 0.5}}}, created_at="2026-01-01T00:00:00Z",
        packages={"numpy": np.__version__}, files=file_checksums(folder, names), has_id_map=id_map,
        extra={"source": {"run_dir": "/r"}},
    )
    manifest.write(folder)
    return manifest


def test_manifest_layout_matches_the_contract(tmp_path: Path) -> None:
    _write(tmp_path / "a", id_map=True)
    m = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert m["schema_version"] == SCHEMA_VERSION
    assert set(m) == {"schema_version", "model", "encoder", "items", "popularity", "id_map", "dataset", "metrics",
                      "source", "created_at", "packages", "files"}
    assert m["encoder"] == {"file": "encoder.onnx", "exporter": "dynamo", "opset": 18,
                            "input_names": ["history", "user"], "output_name": "query", "max_len": 5,
                            "fixed_length": True, "uses_user": True, "dim": D}
    assert m["items"] == {"file": "items.npy", "count": N, "dim": D}
    assert m["popularity"] == {"file": "popularity.npy"} and m["id_map"] == {"file": "id_map.json"}
    assert set(m["files"]) == {"encoder.onnx", "items.npy", "popularity.npy", "id_map.json"}
    for key in REQUIRED_KEYS:
        node = m
        for part in key.split("."):
            node = node[part]
    assert EncoderSpec(max_len=1, fixed_length=False, uses_user=False, dim=1, opset=18).to_dict()[
        "input_names"] == ["history"]


def test_open_artifact_passes_and_names_files(tmp_path: Path) -> None:
    _write(tmp_path / "a")
    opened = open_artifact(tmp_path / "a")
    assert opened.files == {"encoder": "encoder.onnx", "items": "items.npy", "popularity": "popularity.npy"}
    assert opened.max_len == 5 and opened.fixed_length and opened.uses_user and opened.num_users == 3
    check_counts(opened.path / MANIFEST, opened.manifest, (N, D))


@pytest.mark.parametrize("damage, file, needle", [
    (lambda p: (p / "items.npy").write_bytes(b"x"), "items.npy", "checksum mismatch"),
    (lambda p: (p / "popularity.npy").unlink(), "popularity.npy", "missing file"),
    (lambda p: (p / MANIFEST).write_text("{"), MANIFEST, "not valid JSON"),
    (lambda p: _edit(p, schema_version=SCHEMA_VERSION + 1), MANIFEST, f"schema_version {SCHEMA_VERSION + 1} is newer"),
    (lambda p: _edit(p, items=None), MANIFEST, "missing key 'items.file'"),
    (lambda p: _edit(p, files={**_read(p)["files"], "../x": "0"}), MANIFEST, "is not a plain file name"),
])
def test_refusals_name_the_file(tmp_path: Path, damage, file: str, needle: str) -> None:
    _write(tmp_path / "a")
    damage(tmp_path / "a")
    with pytest.raises(ArtifactError) as e:
        open_artifact(tmp_path / "a")
    assert str(e.value).startswith(str(tmp_path / "a" / file)) and needle in str(e.value)


def test_counts_are_checked_against_items(tmp_path: Path) -> None:
    m = _write(tmp_path / "a").to_dict()
    with pytest.raises(ArtifactError, match="item-count mismatch"):
        check_counts("manifest.json", m, (N - 1, D))
    with pytest.raises(ArtifactError, match="dimension mismatch"):
        check_counts("manifest.json", m, (N, D + 1))


def test_resolve_latest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _write(root / "m" / "v1")
    _write(root / "m" / "v2")
    assert resolve_latest(root) == root / "m" / "v2"  # newest by version name
    (root / LATEST).write_text(latest_text("m", "v1"))
    assert resolve_latest(root) == root / "m" / "v1"
    assert resolve_latest(root / "m" / "v2") == root / "m" / "v2"
    (root / LATEST).write_text("../../etc\n")
    with pytest.raises(ArtifactError, match="expected '<model-name>/<version>'"):
        resolve_latest(root)
    composed = "sasrec_ce--sasrec_ce@0+sasrec_ce@1"  # a run named by its parts (training/catalogue.py)
    _write(root / composed / "v3")
    (root / LATEST).write_text(latest_text(composed, "v3"))
    assert resolve_latest(root) == root / composed / "v3"


def test_schema_module_is_torch_free() -> None:
    code = "import sys, protocol.artifact; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def _read(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def _edit(folder: Path, **changes) -> None:
    m = _read(folder)
    m.update(changes)
    (folder / MANIFEST).write_text(json.dumps(m))
