"""The search index travels in the artifact: the real exporter builds an approximate one (forced on a small
catalogue), the server reads it back (``faiss.read_index``, not rebuilt), ``/model`` shows it, and the recall of
the served answers against exact search is the one the manifest records. A missing or corrupt index file is a
one-line error naming the file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from protocol import ann, eval_examples, load_dataset, load_or_create_negatives
from protocol.artifact import INDEX_FILE, MANIFEST, sha256_file
from serving.artifact import ArtifactError, load_artifact
from serving.backends import create_backend

export_artifact = pytest.importorskip("export.artifact", reason="export/ is not available")
torch = pytest.importorskip("torch")
from serving_export_model import WindowConfig, WindowUserModel
from serving_factory import DATASET
from test_serving_export_roundtrip import _finished_run
from test_serving_main import _one_clean_line, run_main

from export.index import IndexConfig

FACTORY = "IVF8,Flat"  # 8 lists over 150 items; a low target keeps nprobe small, so recall stays below 1
TARGET = 0.6


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """An artifact root written by ``export.artifact.build_artifact`` with ``--index IVF8,Flat``."""
    tmp = tmp_path_factory.mktemp("indexed")
    ds = load_dataset(DATASET, data_dir)
    negs = load_or_create_negatives(ds)
    torch.manual_seed(0)
    model = WindowUserModel(WindowConfig(num_items=ds.num_items, num_users=ds.num_users, max_len=6, dim=8)).eval()
    run_dir = _finished_run(model, ds, negs, tmp / "run", "windowusermodel")
    root = tmp / "serving"
    export_artifact.build_artifact(run_dir, root, model=model, data=data_dir, exporters=("torchscript",),
                                   index=IndexConfig(index=FACTORY, recall_target=TARGET))
    return root


def _folder(root: Path) -> Path:
    return root / (root / "latest").read_text().strip()


def _copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "serving"
    shutil.copytree(root, out)
    return out


def test_exported_approximate_index_is_served_with_the_recall_its_manifest_records(exported: Path, data_dir: Path,
                                                                                    make_client) -> None:
    folder = _folder(exported)
    entry = json.loads((folder / MANIFEST).read_text())["index"]
    assert entry["kind"] == "ivf" and entry["factory"] == FACTORY and entry["file"] == INDEX_FILE
    assert (folder / INDEX_FILE).is_file() and INDEX_FILE in json.loads((folder / MANIFEST).read_text())["files"]
    assert set(entry["params"]) == {"nprobe"} and "test histories" in entry["query_source"]
    assert 0 < entry["recall_at_10"] < 1, entry  # approximate: the test would prove nothing at recall 1

    approx, exact = make_client(exported), make_client(exported, index="flat")
    index = approx.get("/model").json()["index"]
    assert index["type"] == "IndexIVFFlat" and index["factory"] == FACTORY and index["params"] == entry["params"]
    assert index["recall_at_10_vs_exact"] == entry["recall_at_10"] and index["recall_queries"] == entry["queries"]
    assert "not rebuilt" in index["loaded"]
    assert exact.get("/model").json()["index"]["type"] == "exact-ort"

    # The held-out queries of the manifest: the odd positions of protocol.ann.query_rows, each user's test input.
    ds = load_dataset(DATASET, data_dir)
    histories, _ = eval_examples(ds, "test")
    rows = ann.query_rows(len(histories), IndexConfig().queries, IndexConfig().seed)[1::2]
    assert len(rows) == entry["queries"]
    requests = [{"history": histories[r].tolist(), "k": 10, "user_id": int(r) + 1, "exclude_seen": False}
                for r in rows]
    got = approx.post("/recommend/batch", json={"requests": requests}).json()["results"]
    want = exact.post("/recommend/batch", json={"requests": requests}).json()["results"]
    recall = np.mean([len(set(g["items"]) & set(w["items"])) / 10 for g, w in zip(got, want)])
    # Same queries, same encoder graph, same deterministic index: the two can differ only where an item ties
    # with the 10th (float rounding between the two ONNX Runtime sessions); allow one such item in the whole set.
    assert abs(recall - entry["recall_at_10"]) <= 1 / (10 * len(rows)) + 1e-9, (recall, entry["recall_at_10"])


def test_missing_index_file_stops_the_server_with_one_line_naming_it(exported: Path, tmp_path: Path) -> None:
    root = _copy(exported, tmp_path)
    (_folder(root) / INDEX_FILE).unlink()
    _one_clean_line(run_main("--artifact-root", str(root)), INDEX_FILE, "missing file")


def test_corrupt_index_file_is_an_artifact_error_naming_it(exported: Path, tmp_path: Path) -> None:
    root = _copy(exported, tmp_path)
    path = _folder(root) / INDEX_FILE
    path.write_bytes(path.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(ArtifactError, match=r"index\.faiss: checksum mismatch"):
        load_artifact(_folder(root))
    # a file that passes its checksum (the manifest rewritten to match) but is not an index: read_index fails
    path.write_bytes(b"not a faiss index")
    manifest = json.loads((_folder(root) / MANIFEST).read_text())
    manifest["files"][INDEX_FILE] = sha256_file(path)
    (_folder(root) / MANIFEST).write_text(json.dumps(manifest))
    art = load_artifact(_folder(root))
    with pytest.raises(ArtifactError, match=rf"{path}: not a readable FAISS index"):
        create_backend(art, "cpu", threads=1)


def test_artifact_without_an_index_entry_is_served_exactly(artifact_v1: Path) -> None:
    art = load_artifact(artifact_v1)
    assert art.index is None and art.index_path is None
    info = create_backend(art, "cpu", threads=1).describe()["index"]
    assert info["type"] == "exact-ort" and "records no index" in info["chosen_because"]


def test_export_verify_measures_the_carried_index_against_its_manifest(exported: Path, data_dir: Path) -> None:
    """``python -m export.verify``'s index check: the index read back and searched with the manifest's knob on
    test histories export did not draw reaches the recorded recall (up to sampling noise); a manifest that
    claims more than the index gives fails the check."""
    from export.onnx_export import ort_session
    from export.verify import Report, check_index
    from export.verify import load_artifact as load_for_verify

    folder = _folder(exported)
    art = load_for_verify(folder)
    session = ort_session(art.encoder_path)
    test_inputs, _ = eval_examples(load_dataset(DATASET, data_dir), "test")
    report = Report(folder)
    check_index(report, art, session, test_inputs)
    check = next(c for c in report.checks if c.name == "index")
    assert check.ok, check.detail
    stated, measured = report.figures["index_recall_stated"], report.figures["index_recall_at_10"]
    assert abs(measured - stated) <= report.figures["index_recall_tol"] and 0 < measured < 1
    art.manifest["index"]["recall_at_10"] = 1.0  # a manifest that overstates the index
    worse = Report(folder)
    check_index(worse, art, session, test_inputs)
    assert not next(c for c in worse.checks if c.name == "index").ok
