"""Writing a serving artifact from a finished training run (layout: docs/CONTRACTS.md, "Serving artifact").

``build_artifact(run_dir)`` exports the encoder (``export.onnx_export``), writes the item table with the
bias folded in, the MostPop ranking of the training part, the id map when the data came from the
converter, and ``manifest.json`` with the sha256 of every file. Everything goes into a hidden temporary
folder beside the target, which is renamed into ``<root>/<model>/<version>/`` only when complete; the
``<root>/latest`` pointer is replaced atomically last. File names, manifest fields and checksums come
from the torch-free schema module ``protocol.artifact``, which the reader (``serving.artifact``) uses too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import secrets
import shutil
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.index import DEFAULT_INDEX, IndexConfig, choose_index, item_queries, write_index
from export.onnx_export import EXPORTERS, EncoderInfo, ExportError, export_encoder, ort_encode, ort_session
from protocol import DataError, SequenceDataset, ann, eval_examples, load_dataset, pad_left
from protocol.artifact import (  # noqa: F401 - MANIFEST re-exported for export.__main__
    ENCODER_FILE,
    ID_MAP_FILE,
    ITEMS_FILE,
    LATEST,
    MANIFEST,
    POPULARITY_FILE,
    DatasetSpec,
    Manifest,
    file_checksums,
    latest_text,
    sha256_file,
)
from training.mostpop import popularity_ranking

DEFAULT_ROOT = Path("artifacts/serving")
PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy", "safetensors")


# ------------------------------------------------------------------------------------------ the run


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` of a finished run with its ``metrics.json`` under ``"metrics"``; ExportError otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: run folder does not exist")
    for name in ("run.json", "metrics.json", "model.safetensors"):
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir / name}: missing; is {run_dir} a finished training run?")
    info = _read_json(run_dir / "run.json")
    info["metrics"] = _read_json(run_dir / "metrics.json")
    for key in ("model", "dataset", "data_sha256"):
        if key not in info:
            raise ExportError(f"{run_dir / 'run.json'}: missing key {key!r}")
    return info


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


def load_model(run_dir: str | os.PathLike) -> nn.Module:
    """The run's best model, rebuilt from the registry and its safetensors (no pickle)."""
    from training.runs import RunError, load_run_model

    try:
        model, _ = load_run_model(run_dir)
    except (RunError, KeyError, OSError, RuntimeError) as e:
        raise ExportError(f"{run_dir}: cannot load the model ({e})") from None
    return model.eval()


def load_run_dataset(info: dict[str, Any], data: str | os.PathLike | None = None) -> SequenceDataset:
    """The run's dataset (``data``: a folder or a ``.txt`` file), checked against the run's sha256."""
    try:
        if data is not None and Path(data).suffix == ".txt":
            ds = load_dataset(str(data))
        else:
            ds = load_dataset(info["dataset"], data)
    except DataError as e:
        raise ExportError(str(e)) from None
    if ds.sha256 != info["data_sha256"]:
        raise ExportError(
            f"{ds.path}: sha256 {ds.sha256[:12]}... differs from the run's data "
            f"({str(info['data_sha256'])[:12]}...); point --data at the file the run was trained on"
        )
    return ds


def max_len_of(model: nn.Module, info: dict[str, Any]) -> int:
    """History length the encoder serves.

    A fixed-length encoder (HGN's window) reads exactly ``config.max_len`` columns. Any other encoder
    gets the length the run's metrics were measured with (``train_config.max_len``, what ``evaluate``
    was given), so the served model is the evaluated one; else ``config.max_len``; else 50."""
    if model.fixed_length:  # the contract: a fixed-length encoder reads exactly config.max_len columns
        return int(model.config.max_len)
    # optional: the servable contract does not require a max_len on a variable-length model's config
    cfg_len = getattr(model.config, "max_len", None)
    return int((info.get("train_config") or {}).get("max_len") or cfg_len or 50)


def model_config(model: nn.Module) -> dict[str, Any]:
    return dataclasses.asdict(model.config)  # a model's config is a dataclass (models.config.ModelConfig)


# ------------------------------------------------------------------------------------------ files


def item_table(model: nn.Module, num_items: int, where: Path) -> np.ndarray:
    """(N, D') float32 ``item_vectors()``; row i = item id i + 1. Checks N against the dataset."""
    with torch.no_grad():
        items = model.item_vectors().detach().float().cpu().numpy()
    if items.ndim != 2 or items.shape[0] != num_items:
        raise ExportError(
            f"{where}: item_vectors() has shape {items.shape}, the dataset has {num_items} items"
        )
    if not np.isfinite(items).all():
        raise ExportError(f"{where}: item_vectors() contains NaN or infinite values")
    return np.ascontiguousarray(items, dtype=np.float32)


def find_id_map(ds: SequenceDataset) -> Path | None:
    """``NAME_id_map.json`` beside ``NAME.txt``, as written by ``python -m training.data convert``."""
    path = ds.path.with_name(f"{ds.path.stem}_id_map.json")
    return path if path.is_file() else None


def _check_id_map(path: Path, num_items: int) -> None:
    ids = _read_json(path).get("item_ids")
    if not isinstance(ids, list) or len(ids) != num_items:
        n = len(ids) if isinstance(ids, list) else "no"
        raise ExportError(f"{path}: {n} item_ids, the dataset has {num_items} items")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_latest(root: Path, name: str, version: str) -> None:
    """Point ``root/latest`` at ``<name>/<version>`` (write a temporary file, then ``os.replace``)."""
    tmp = root / f".{LATEST}.tmp{os.getpid()}"
    tmp.write_text(latest_text(name, version), encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, root / LATEST)
    _fsync(root)


def new_version(now: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ-xxxxxx``: sorts by creation time; the random suffix keeps
    same-second exports apart."""
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


# ------------------------------------------------------------------------------------------ build


def build_manifest(
    *,
    name: str,
    version: str,
    config: dict[str, Any],
    encoder: EncoderInfo,
    items: np.ndarray,
    ds: SequenceDataset,
    info: dict[str, Any],
    run_dir: Path,
    has_id_map: bool,
    created: datetime,
    files: dict[str, str],
    index: dict[str, Any] | None = None,
) -> Manifest:
    metrics = info["metrics"]
    return Manifest(
        name=name,
        version=version,
        config=config,
        encoder=encoder.spec(),
        items_count=int(items.shape[0]),
        items_dim=int(items.shape[1]),
        dataset=DatasetSpec(
            name=ds.name,
            sha256=ds.sha256,
            negatives_sha256=info.get("negatives_sha256") or metrics.get("negatives_sha256"),
            num_users=ds.num_users,
            num_items=ds.num_items,
        ),
        metrics={"test": metrics.get("test"), "valid": metrics.get("valid")},
        created_at=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        packages=package_versions(),
        files=files,
        has_id_map=has_id_map,
        index=index,
        # read by ``python -m export.verify`` only; readers ignore other keys
        extra={
            "architecture": info["model"],
            "source": {
                "run_dir": str(run_dir.resolve()),
                "weights_sha256": sha256_file(run_dir / "model.safetensors"),
                "export_max_abs_diff": encoder.max_abs_diff,
            }
        },
    )


def _write_files(
    tmp: Path,
    model: nn.Module,
    ds: SequenceDataset,
    info: dict[str, Any],
    run_dir: Path,
    exporters: tuple[str, ...],
) -> tuple[EncoderInfo, np.ndarray, Path | None]:
    """Everything but the manifest into ``tmp``; the cheap checks run before the (slow) export."""
    items = item_table(model, ds.num_items, run_dir)
    id_map = find_id_map(ds)
    if id_map is not None:
        _check_id_map(id_map, ds.num_items)
    fixed, uses_user = bool(model.fixed_length), bool(model.uses_user)
    encoder = export_encoder(model, tmp / ENCODER_FILE, max_len_of(model, info), fixed, uses_user, exporters)
    if encoder.dim != items.shape[1]:
        raise ExportError(
            f"{tmp / ENCODER_FILE}: query dim {encoder.dim} differs from item_vectors() dim {items.shape[1]}"
        )
    np.save(tmp / ITEMS_FILE, items)
    np.save(tmp / POPULARITY_FILE, popularity_ranking(ds))
    if id_map is not None:
        shutil.copyfile(id_map, tmp / ID_MAP_FILE)
    return encoder, items, id_map


def index_queries(tmp: Path, encoder: EncoderInfo, items: np.ndarray, ds: SequenceDataset,
                  config: IndexConfig) -> tuple[np.ndarray, str]:
    """Query vectors for measuring the index, and what they are: real test histories (each user's ``s[:-1]``,
    the users of ``protocol.ann.query_rows``) through the exported ``encoder.onnx`` (ONNX Runtime, as the server
    encodes), or with ``query_source="items"`` draws from the item distribution (``export.index.item_queries``)."""
    if config.query_source == "items":
        return item_queries(items, config.queries, config.seed), (
            f"{config.queries} vectors drawn from a Gaussian fitted to items.npy (mean, per-dimension std)")
    histories, _ = eval_examples(ds, "test")
    rows = ann.query_rows(len(histories), config.queries, config.seed)
    hist = pad_left([histories[i] for i in rows], encoder.max_len)
    users = (rows + 1).astype(np.int64) if encoder.uses_user else None  # model user ids: row + 1 (0 = anonymous)
    queries = ort_encode(ort_session(tmp / ENCODER_FILE), hist, users)
    return np.ascontiguousarray(queries, dtype=np.float32), (
        f"test histories of {len(rows)} of {len(histories)} users (protocol.ann.query_rows(users, {config.queries}, "
        f"seed {config.seed})) through encoder.onnx; tuned on the even positions, measured on the odd ones")


def build_artifact(
    run_dir: str | os.PathLike,
    out_root: str | os.PathLike = DEFAULT_ROOT,
    *,
    model: nn.Module | None = None,
    data: str | os.PathLike | None = None,
    exporters: tuple[str, ...] = EXPORTERS,
    update_latest: bool = True,
    index: IndexConfig = DEFAULT_INDEX,
) -> Path:
    """Build ``<out_root>/<model>/<version>/`` from a finished run and return its path.

    ``model`` defaults to the run's best weights (``training.runs.load_run_model``); ``data`` is a data
    folder or ``.txt`` file (default: ``$SSI_DATA_DIR`` / ``./data``, looked up by the run's dataset name).
    ``index`` says which search index travels with it (``export.index``: exact up to ``exact_max_items``
    items, else an approximate index chosen for ``recall_target``); the manifest's ``index`` entry records
    it and its recall@10 against exact.
    """
    run_dir, out_root = Path(run_dir), Path(out_root)
    info = read_run(run_dir)
    model = (model if model is not None else load_model(run_dir)).eval()
    name = str(info.get("variant") or info["model"])  # the run_all row (ssi_hgn_ce_gru), else the architecture
    ds = load_run_dataset(info, data)
    created = datetime.now(timezone.utc)
    version = new_version(created)
    final = out_root / name / version
    tmp = out_root / name / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        encoder, items, id_map = _write_files(tmp, model, ds, info, run_dir, exporters)
        queries, source = index_queries(tmp, encoder, items, ds, index)
        faiss_index, index_entry = choose_index(items, queries, source, index)
        if faiss_index is not None:
            write_index(faiss_index, tmp)
        files = file_checksums(tmp, [p.name for p in tmp.iterdir()])
        manifest = build_manifest(
            name=name,
            version=version,
            config=model_config(model),
            encoder=encoder,
            items=items,
            ds=ds,
            info=info,
            run_dir=run_dir,
            has_id_map=id_map is not None,
            created=created,
            files=files,
            index=index_entry,
        )
        manifest.write(tmp)
        for p in tmp.iterdir():
            _fsync(p)
        os.rename(tmp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if update_latest:
        write_latest(out_root, name, version)
    return final
