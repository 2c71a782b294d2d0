"""load_artifact / resolve_latest: a good artifact loads; every kind of damage gives a clear ArtifactError."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from serving_factory import NUM_ITEMS, V1, V2, rewrite_manifest

from serving.artifact import SCHEMA_VERSION, ArtifactError, load_artifact, resolve_latest


@pytest.fixture
def art(artifact_root: Path) -> Path:
    return artifact_root / "tiny" / V1


def test_good_artifact_loads(art: Path) -> None:
    a = load_artifact(art)
    assert a.version == V1 and a.num_items == NUM_ITEMS and a.items.dtype == np.float32
    assert a.uses_user and a.max_len == 8 and a.id_map is None
    assert sorted(a.popularity.tolist()) == list(range(1, NUM_ITEMS + 1))  # every item rankable
    assert a.pop_rank[a.popularity[0]] == 0


def test_id_map_loads_and_maps_both_ways(artifact_v2: Path) -> None:
    a = load_artifact(artifact_v2)
    assert a.id_map is not None
    assert a.id_map.to_internal("sku-0001") == 1 and a.id_map.to_raw(1) == "sku-0001"
    assert a.id_map.to_internal(777) == 5 and a.id_map.to_internal("777") == 5 and a.id_map.to_raw(5) == 777
    assert a.id_map.to_internal("nope") is None and a.id_map.to_internal(True) is None


def test_resolve_latest_follows_pointer(artifact_root: Path) -> None:
    assert resolve_latest(artifact_root) == artifact_root / "tiny" / V1


def test_resolve_latest_scans_newest_version_without_pointer(artifact_root: Path) -> None:
    shutil.copytree(artifact_root / "tiny" / V1, artifact_root / "tiny" / V2)
    (artifact_root / "latest").unlink()
    assert resolve_latest(artifact_root) == artifact_root / "tiny" / V2


def test_resolve_latest_accepts_an_artifact_folder(art: Path) -> None:
    assert resolve_latest(art) == art


@pytest.mark.parametrize("pointer, problem", [("../../etc", "expected '<model-name>/<version>'"),
                                              ("tiny/nope", "does not exist"), ("/abs/path", "expected")])
def test_resolve_latest_rejects_bad_pointers(artifact_root: Path, pointer: str, problem: str) -> None:
    (artifact_root / "latest").write_text(pointer)
    with pytest.raises(ArtifactError, match="latest") as e:
        resolve_latest(artifact_root)
    assert problem in str(e.value)


def test_missing_root_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        resolve_latest(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="no artifact found"):
        resolve_latest(tmp_path)


def _expect(folder: Path, *fragments: str) -> str:
    with pytest.raises(ArtifactError) as e:
        load_artifact(folder)
    msg = str(e.value)
    for f in fragments:
        assert f in msg, msg
    assert "\n" not in msg
    return msg


def test_missing_manifest(art: Path) -> None:
    (art / "manifest.json").unlink()
    _expect(art, str(art / "manifest.json"), "missing file")


@pytest.mark.parametrize("name", ["encoder.onnx", "items.npy", "popularity.npy"])
def test_missing_file(art: Path, name: str) -> None:
    (art / name).unlink()
    _expect(art, str(art / name), "missing file")


@pytest.mark.parametrize("name", ["encoder.onnx", "items.npy", "popularity.npy"])
def test_checksum_mismatch(art: Path, name: str) -> None:
    with open(art / name, "ab") as f:
        f.write(b"\0")
    _expect(art, str(art / name), "checksum mismatch")


def test_newer_schema_version(art: Path) -> None:
    rewrite_manifest(art, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    _expect(art, "manifest.json", f"schema_version {SCHEMA_VERSION + 1} is newer")


def test_manifest_not_json(art: Path) -> None:
    (art / "manifest.json").write_text("{not json")
    _expect(art, "manifest.json", "not valid JSON")


def test_missing_manifest_key(art: Path) -> None:
    rewrite_manifest(art, lambda m: m["encoder"].pop("max_len"))
    _expect(art, "manifest.json", "missing key 'encoder.max_len'")


def test_item_count_mismatch_manifest_vs_items(art: Path) -> None:
    rewrite_manifest(art, lambda m: m["items"].update(count=NUM_ITEMS + 1))
    _expect(art, "item-count mismatch", f"items.count={NUM_ITEMS + 1}", f"{NUM_ITEMS} rows")


def test_item_count_mismatch_dataset_vs_items(art: Path) -> None:
    rewrite_manifest(art, lambda m: m["dataset"].update(num_items=NUM_ITEMS - 1))
    _expect(art, "item-count mismatch", "dataset.num_items")


def test_items_dim_vs_onnx_output_dim(art: Path) -> None:
    items = np.load(art / "items.npy")
    np.save(art / "items.npy", np.concatenate([items, items[:, :1]], axis=1))
    rewrite_manifest(art, lambda m: (m["items"].update(dim=items.shape[1] + 1),
                                     m["encoder"].update(dim=items.shape[1] + 1)), refresh_checksums=True)
    _expect(art, "encoder.onnx", f"does not match items.npy dim {items.shape[1] + 1}")


def test_items_wrong_dtype(art: Path) -> None:
    np.save(art / "items.npy", np.load(art / "items.npy").astype(np.float64))
    rewrite_manifest(art, lambda m: None, refresh_checksums=True)
    _expect(art, "items.npy", "expected float32")


def test_popularity_out_of_range(art: Path) -> None:
    np.save(art / "popularity.npy", np.array([1, 2, NUM_ITEMS + 5], dtype=np.int64))
    rewrite_manifest(art, lambda m: None, refresh_checksums=True)
    _expect(art, "popularity.npy", f"1..{NUM_ITEMS}")


def test_encoder_not_onnx(art: Path) -> None:
    (art / "encoder.onnx").write_bytes(b"this is not a model")
    rewrite_manifest(art, lambda m: None, refresh_checksums=True)
    _expect(art, "encoder.onnx", "ONNX")


def test_wrong_input_names(art: Path) -> None:
    rewrite_manifest(art, lambda m: m["encoder"].update(uses_user=False, input_names=["history"]))
    _expect(art, "encoder.onnx", "graph inputs")


def test_file_name_with_path_is_refused(art: Path) -> None:
    rewrite_manifest(art, lambda m: m["items"].update(file="../items.npy"))
    _expect(art, "not a plain file name")


def test_id_map_count_mismatch(artifact_v2: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a"
    shutil.copytree(artifact_v2, folder)
    (folder / "id_map.json").write_text(json.dumps({"item_ids": ["a", "b"]}))
    rewrite_manifest(folder, lambda m: None, refresh_checksums=True)
    _expect(folder, "id_map.json", "item-count mismatch")


def test_id_map_duplicates(artifact_v2: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a"
    shutil.copytree(artifact_v2, folder)
    ids = ["x"] * NUM_ITEMS
    (folder / "id_map.json").write_text(json.dumps({"item_ids": ids}))
    rewrite_manifest(folder, lambda m: None, refresh_checksums=True)
    _expect(folder, "id_map.json", "not unique")


def test_user_model_needs_num_users(art: Path) -> None:
    rewrite_manifest(art, lambda m: m["dataset"].pop("num_users"))
    _expect(art, "manifest.json", "dataset.num_users")
