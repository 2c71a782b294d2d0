"""Export + verify of smoke-trained students, and the refusal of damaged or inconsistent artifacts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_fakes import FakeBroken, FakeGRU, FakeTransformer, make_model, save_fake_run
from safetensors.torch import save_model

from export.__main__ import main as export_main
from export.artifact import build_artifact
from export.onnx_export import ExportError, check_graph, export_encoder, ort_encode, ort_session
from export.verify import compare_topk, verify_artifact
from export.verify import main as verify_main
from models import MODELS
from protocol import load_dataset
from protocol.data import sha256_file
from serving.artifact import load_artifact
from training.runs import load_run_model

ROOT = Path(__file__).resolve().parents[2]


def _input_dims(path: Path) -> dict[str, list]:
    graph = onnx.load(str(path)).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


# ------------------------------------------------------------------------------------- students


@pytest.mark.parametrize("student", ["hgn", "gru4rec"])
def test_student_artifact_verifies(student, student_artifacts, student_runs, export_ds, export_data_dir):
    path = student_artifacts[student]
    report = verify_artifact(path, data=export_data_dir)
    assert report.ok, "\n".join(report.lines())
    assert report.figures["parity_max_abs_diff"] < 1e-4
    assert report.figures["topk_users"] == 500 and report.figures["topk_differ"] == 0
    assert report.figures["topk_identical"] >= 495  # near-tie swaps are allowed, but must stay rare

    manifest = json.loads((path / "manifest.json").read_text())
    run = json.loads((student_runs[student] / "run.json").read_text())
    metrics = json.loads((student_runs[student] / "metrics.json").read_text())
    cls = MODELS[student]
    assert manifest["schema_version"] == 1
    assert manifest["model"]["name"] == student and manifest["model"]["version"] == path.name
    assert manifest["model"]["config"] == run["model_config"]
    enc = manifest["encoder"]
    assert (enc["fixed_length"], enc["uses_user"]) == (cls.fixed_length, cls.uses_user)
    assert enc["input_names"] == (["history", "user"] if cls.uses_user else ["history"])
    assert enc["max_len"] == (
        run["model_config"]["max_len"] if cls.fixed_length else run["train_config"]["max_len"]
    )
    assert manifest["items"]["count"] == export_ds.num_items == manifest["dataset"]["num_items"]
    assert manifest["dataset"]["sha256"] == export_ds.sha256
    assert manifest["dataset"]["negatives_sha256"] == run["negatives_sha256"]
    assert manifest["metrics"]["test"] == metrics["test"]
    assert manifest["id_map"] is None
    assert manifest["files"] == {
        n: sha256_file(path / n) for n in ("encoder.onnx", "items.npy", "popularity.npy")
    }
    assert sorted(p.name for p in path.iterdir()) == [
        "encoder.onnx",
        "items.npy",
        "manifest.json",
        "popularity.npy",
    ]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("student", ["hgn", "gru4rec"])
def test_onnx_axes_stay_symbolic(student, student_artifacts):
    """Two exports ran in this test session; each graph must still have symbolic batch (and length) axes."""
    dims = _input_dims(student_artifacts[student] / "encoder.onnx")
    assert isinstance(dims["history"][0], str) and dims["history"][0]
    if student == "gru4rec":
        assert isinstance(dims["history"][1], str) and dims["history"][1]
    else:
        assert dims["history"][1] == 5 and isinstance(dims["user"][0], str)


def test_items_fold_bias_and_popularity(student_artifacts, student_runs, export_ds):
    art = load_artifact(student_artifacts["hgn"])
    model, _ = load_run_model(student_runs["hgn"])
    with torch.no_grad():
        w2, b2 = model.out_emb.weight[1:].numpy(), model.out_bias.weight[1:, 0].numpy()
    np.testing.assert_array_equal(art.items, np.concatenate([w2, b2[:, None]], axis=1))  # [W2 | b2]
    counts = np.bincount(
        np.concatenate([s[:-2] for s in export_ds.sequences]), minlength=export_ds.num_items + 1
    )
    assert sorted(art.popularity.tolist()) == list(range(1, export_ds.num_items + 1))
    assert np.all(np.diff(counts[art.popularity]) <= 0)  # most popular first


# ------------------------------------------------------------------------------------- refusals


def _refused(path: Path, data_dir: Path, capsys) -> str:
    """Run ``python -m export.verify``'s main; it must fail with exactly one line on stderr."""
    assert verify_main([str(path), "--data", str(data_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def _rewrite_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    for dotted, value in changes.items():
        node = manifest
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["items.npy", "encoder.onnx"])
def test_flipped_byte_is_refused(name, artifact_copy, export_data_dir, capsys):
    data = bytearray((artifact_copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (artifact_copy / name).write_bytes(bytes(data))
    err = _refused(artifact_copy, export_data_dir, capsys)
    assert str(artifact_copy / name) in err and "checksum mismatch" in err


def test_missing_file_is_refused(artifact_copy, export_data_dir, capsys):
    (artifact_copy / "popularity.npy").unlink()
    err = _refused(artifact_copy, export_data_dir, capsys)
    assert str(artifact_copy / "popularity.npy") in err and "missing" in err


def test_newer_schema_is_refused(artifact_copy, export_data_dir, capsys):
    _rewrite_manifest(artifact_copy, schema_version=2)
    err = _refused(artifact_copy, export_data_dir, capsys)
    assert str(artifact_copy / "manifest.json") in err and "schema_version 2 is newer" in err


def test_item_count_mismatch_between_encoder_and_index(artifact_copy, export_data_dir, capsys):
    """items.npy one row short, with a manifest made consistent with it: only the encoder disagrees."""
    items = np.load(artifact_copy / "items.npy")[:-1]
    np.save(artifact_copy / "items.npy", items)
    popularity = np.load(artifact_copy / "popularity.npy")
    np.save(artifact_copy / "popularity.npy", popularity[popularity <= len(items)])
    files = {n: sha256_file(artifact_copy / n) for n in ("encoder.onnx", "items.npy", "popularity.npy")}
    _rewrite_manifest(artifact_copy, items__count=len(items), dataset__num_items=len(items), files=files)
    load_artifact(artifact_copy)  # the static checks alone cannot see it
    report = verify_artifact(artifact_copy, data=export_data_dir)
    assert not report.ok
    items_check = next(c for c in report.checks if c.name == "items")
    assert not items_check.ok
    assert (
        "item-count mismatch" in items_check.detail and str(artifact_copy / "items.npy") in items_check.detail
    )
    assert verify_main([str(artifact_copy), "--data", str(export_data_dir)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FAILED: ") and "items" in last


def test_item_count_mismatch_in_manifest(artifact_copy, export_data_dir, capsys):
    np.save(artifact_copy / "items.npy", np.load(artifact_copy / "items.npy")[:-1])
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    _rewrite_manifest(
        artifact_copy, files={**manifest["files"], "items.npy": sha256_file(artifact_copy / "items.npy")}
    )
    err = _refused(artifact_copy, export_data_dir, capsys)
    assert "manifest.json" in err and "item-count mismatch" in err


def test_changed_weights_fail_verification(student_runs, export_data_dir, tmp_path):
    """Re-trained weights after the export: verify names the weights and finds the encoder different."""
    run = Path(shutil.copytree(student_runs["gru4rec"], tmp_path / "run"))
    art = build_artifact(run, tmp_path / "serving", data=export_data_dir)
    model, _ = load_run_model(run)
    with torch.no_grad():
        model.dense.bias.add_(0.5)
    save_model(model, str(run / "model.safetensors"))
    report = verify_artifact(art, data=export_data_dir)
    failed = {c.name for c in report.checks if not c.ok}
    assert {"weights", "parity"} <= failed


# ------------------------------------------------------------------------------------- exporter


@pytest.mark.slow
def test_transformer_falls_back_to_dynamo_and_stays_symbolic(export_ds, tmp_path):
    """TorchScript bakes a transformer's length in (the ORT check catches it, so the export falls back to
    dynamo); a second dynamo export from the same process still has symbolic axes (subprocess isolation)."""
    model = make_model(FakeTransformer, export_ds, max_len=10)
    for name, exporters in (("a.onnx", ("torchscript", "dynamo")), ("b.onnx", ("dynamo",))):
        info = export_encoder(model, tmp_path / name, 10, False, False, exporters=exporters)
        assert info.exporter == "dynamo" and info.max_abs_diff < 1e-4
        dims = _input_dims(tmp_path / name)["history"]
        assert all(isinstance(d, str) and d for d in dims), dims


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_check_graph_rejects_fixed_axes(export_ds, tmp_path):
    """A graph whose length axis was baked in is refused by the interface check."""
    from export.onnx_export import wrap_encoder

    wrapper = wrap_encoder(make_model(FakeTransformer, export_ds), 10, False, False)
    torch.onnx.export(
        wrapper,
        (torch.ones(3, 10, dtype=torch.long),),
        str(tmp_path / "static.onnx"),
        dynamo=False,
        input_names=["history"],
        output_names=["query"],
        dynamic_axes={"history": {0: "batch"}},
    )
    with pytest.raises(ExportError, match="input 'history' has dims"):
        check_graph(tmp_path / "static.onnx", 10, False, False)
    session = ort_session(tmp_path / "static.onnx")  # and indeed it cannot run other lengths
    with pytest.raises(Exception, match="ONNXRuntimeError"):
        ort_encode(session, np.ones((2, 3), dtype=np.int64), None)


def test_failed_export_leaves_nothing(export_ds, tmp_path):
    model = make_model(FakeBroken, export_ds)
    run = save_fake_run(model, export_ds, tmp_path / "run")
    root = tmp_path / "serving"
    with pytest.raises(ExportError, match="cannot be exported"):
        build_artifact(run, root, model=model, data=export_ds.path.parent, exporters=("torchscript",))
    assert list((root / "fake_broken").iterdir()) == [] and not (root / "latest").exists()


def test_id_map_from_the_converter_is_shipped(export_ds, tmp_path):
    """Data written by ``training.data convert`` has ``NAME_id_map.json``; the artifact carries it."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(export_ds.path, data / "mapped.txt")
    raw = [f"sku-{i:04d}" for i in range(1, export_ds.num_items + 1)]
    id_map = data / "mapped_id_map.json"
    id_map.write_text(json.dumps({"item_ids": raw[:-1], "user_ids": []}))
    ds = load_dataset("mapped", data)
    model = make_model(FakeGRU, ds)
    run = save_fake_run(model, ds, tmp_path / "run")
    with pytest.raises(
        ExportError, match=f"{id_map}: {len(raw) - 1} item_ids, the dataset has {len(raw)} items"
    ):
        build_artifact(run, tmp_path / "serving", model=model, data=data)
    id_map.write_text(json.dumps({"item_ids": raw, "user_ids": []}))
    art = load_artifact(build_artifact(run, tmp_path / "serving", model=model, data=data))
    assert art.manifest["id_map"] == {"file": "id_map.json"} and "id_map.json" in art.manifest["files"]
    assert (
        art.id_map is not None
        and art.id_map.to_raw(1) == "sku-0001"
        and art.id_map.to_internal("sku-0007") == 7
    )


# ------------------------------------------------------------------------------------- CLI + helpers


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_cli_user_errors_are_one_line(tmp_path):
    """The real entry points (subprocesses): one ``error:`` line, no traceback, exit status 1."""
    for module, message in (("export", "run folder does not exist"), ("export.verify", "does not exist")):
        proc = _cli(module, str(tmp_path / "nope"))
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_unfinished_run_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    assert export_main([str(tmp_path / "run"), "--out", str(tmp_path / "serving")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(tmp_path / "run" / "metrics.json") in err and "\n" not in err
    assert not (tmp_path / "serving").exists()


def test_compare_topk_accepts_only_near_ties():
    scores = np.array([[0.0, 3.0, 2.0, 2.0 + 1e-7, 1.0]])  # item ids 1..4; items 2 and 3 tie
    want = np.array([[1, 3, 2]])
    slack = np.array([1e-5])
    assert compare_topk(want, want, scores, slack) == (1, 0, 0)
    assert compare_topk(np.array([[1, 2, 3]]), want, scores, slack) == (0, 1, 0)
    assert compare_topk(np.array([[1, 3, 4]]), want, scores, slack) == (0, 0, 1)
