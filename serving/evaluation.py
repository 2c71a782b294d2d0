"""``POST /eval``: the offline metrics of the served model, recomputed through the served path.

``Evaluator.evaluate(request)`` runs ``protocol.evaluate`` with the model's ONNX encoder and item table
(``serving.engine.eval_scorer``), in chunks that run as batcher jobs beside ``/recommend``, one evaluation
at a time (409 while one runs), off the event loop. The dataset is one of the server's data folder
(``Settings.data_dir``, ``protocol.data.resolve_data_dir``'s rule), never a path from the request, and it
must be the one the artifact was trained on (sha256), as must the stored sampled negatives.

Client-facing messages name files relative to the data folder and the folder itself in a relative or
label form (``data_folder_display``): no absolute server path reaches a response body.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from protocol import DataError, Negatives, SequenceDataset, evaluate, load_dataset, load_or_create_negatives
from protocol.data import DATA_ENV, SIBLING_DATA, dataset_path
from serving.batching import BatcherStopped
from serving.config import Settings
from serving.engine import ModelState, eval_scorer
from serving.errors import ServingError
from serving.metrics import ServingMetrics
from serving.schemas import EvalRequest, EvalResponse

log = logging.getLogger("serving.evaluation")
EVAL_TOLERANCE = 1e-4
DATA_FOLDER_LABEL = "<data folder>"


class ModelSource(Protocol):
    """What the evaluator needs from the running service: the current model and the batcher's job runner."""

    def current(self) -> ModelState: ...

    def run_job(self, fn: Callable[[], Any]) -> Future: ...


def data_folder_display(folder: Path) -> str:
    """The data folder as a client may see it: relative to the server's working folder when it is inside
    it or beside the checkout (``data``, ``../shared/data``), else the label ``<data folder>``."""
    if not folder.is_absolute():
        return folder.as_posix()
    try:
        rel = Path(os.path.relpath(folder, Path.cwd()))
    except ValueError:  # another drive (Windows)
        return DATA_FOLDER_LABEL
    inside = rel.parts and ".." not in rel.parts
    beside = os.path.realpath(folder) == os.path.realpath(SIBLING_DATA)  # the documented ../shared/data
    return rel.as_posix() if inside or beside else DATA_FOLDER_LABEL


def known_datasets(folder: Path) -> list[str]:
    """Dataset names of the folder's ``NAME.txt`` files (stored negatives ``*_sample.txt`` left out)."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.txt") if not p.stem.endswith("_sample"))


def find_dataset(name: str, settings: Settings, meta: dict[str, Any]) -> SequenceDataset:
    """The named dataset of the configured data folder, checked against the artifact's sha256.

    404 names the folder it looked in (relative or label form) and the datasets that are there."""
    data_dir = settings.data_folder
    try:
        dataset_path(name, data_dir)
    except DataError:
        known = known_datasets(data_dir)
        where = (f"the server's data folder {data_folder_display(data_dir)}"
                 + ("" if data_dir.is_dir() else ", which does not exist"))
        have = f"; datasets there: {', '.join(known)}" if known else "; it holds no dataset (NAME.txt)"
        raise ServingError(404, "dataset_not_found",
                           f"no dataset named {name!r} in {where}{have} (the folder is {DATA_ENV} or --data-dir, "
                           "else ./data, else ../shared/data beside the checkout)") from None
    try:
        ds = load_dataset(name, data_dir)
    except (DataError, OSError) as e:
        raise ServingError(422, "dataset_unreadable", f"dataset {name!r}: {e}") from None
    want = meta.get("sha256")
    if want and want != ds.sha256:
        raise ServingError(409, "dataset_mismatch",
                           f"dataset {name!r} (sha256 {ds.sha256[:12]}...) is not the one this model was "
                           f"trained and evaluated on (sha256 {str(want)[:12]}...)")
    return ds


def find_negatives(ds: SequenceDataset, meta: dict[str, Any]) -> Negatives:
    """The stored sampled negatives of ``ds``, checked against the ones the artifact was evaluated with."""
    try:
        negs = load_or_create_negatives(ds)
    except (DataError, OSError) as e:
        raise ServingError(422, "negatives_unreadable", f"sampled negatives of {ds.name!r}: {e}") from None
    want = meta.get("negatives_sha256")
    if want and want != negs.sha256:
        raise ServingError(409, "negatives_mismatch",
                           f"the stored negatives of {ds.name!r} (sha256 {negs.sha256[:12]}...) differ from the "
                           f"ones the model was evaluated with (sha256 {str(want)[:12]}...)")
    return negs


def check_sizes(ds: SequenceDataset, state: ModelState, name: str) -> None:
    """409 when the dataset has more items (or users, for a user-aware model) than the model knows."""
    art = state.artifact
    if ds.num_items > art.num_items:
        raise ServingError(409, "dataset_mismatch", f"dataset {name!r} has {ds.num_items} items, the model "
                           f"{art.num_items}")
    if art.uses_user and art.num_users is not None and ds.num_users > art.num_users:
        raise ServingError(409, "dataset_mismatch", f"dataset {name!r} has {ds.num_users} users, the model "
                           f"{art.num_users}")


class Evaluator:
    """Runs ``/eval`` requests against the service's current model, one at a time."""

    def __init__(self, settings: Settings, metrics: ServingMetrics, source: ModelSource) -> None:
        self.settings = settings
        self.metrics = metrics
        self.source = source
        self._lock = threading.Lock()

    async def evaluate(self, req: EvalRequest) -> EvalResponse:
        """The evaluation on a thread of its own (409 while another runs); the chunks run as batcher jobs."""
        state = self.source.current()
        if not self._lock.acquire(blocking=False):
            raise ServingError(409, "eval_in_progress", "an evaluation is already running; try again later",
                               headers={"Retry-After": "5"})
        return await asyncio.to_thread(self._evaluate_locked, state, req)

    def _evaluate_locked(self, state: ModelState, req: EvalRequest) -> EvalResponse:
        t0 = time.perf_counter()
        try:
            resp = self._evaluate(state, req, t0)
            self.metrics.evals.labels(result="ok").inc()
            return resp
        except ServingError:
            self.metrics.evals.labels(result="rejected").inc()
            raise
        except BatcherStopped as e:
            self.metrics.evals.labels(result="failed").inc()
            raise ServingError(503, "shutting_down", str(e)) from None
        except Exception:
            self.metrics.evals.labels(result="failed").inc()
            log.exception("/eval failed")
            raise ServingError(500, "eval_failed", "evaluation failed; see the server log") from None
        finally:
            self.metrics.eval_seconds.observe(time.perf_counter() - t0)
            self._lock.release()

    def _evaluate(self, state: ModelState, req: EvalRequest, t0: float) -> EvalResponse:
        art = state.artifact
        meta = art.manifest.get("dataset") or {}
        ds = find_dataset(req.dataset, self.settings, meta)
        negatives = find_negatives(ds, meta) if req.protocol == "sampled" else None
        check_sizes(ds, state, req.dataset)
        scorer = eval_scorer(state, self.source.run_job, self.settings.eval_chunk)
        metrics = evaluate(scorer, ds, req.split, req.protocol, max_len=art.max_len, limit_users=req.limit_users,
                           negatives=negatives)
        users = ds.num_users if req.limit_users is None else min(req.limit_users, ds.num_users)
        expected = None
        if users == ds.num_users:
            expected = ((art.manifest.get("metrics") or {}).get(req.split) or {}).get(req.protocol)
        diff = None
        if expected:
            diff = max((abs(float(metrics[key]) - float(expected[key])) for key in metrics if key in expected),
                       default=None)
        return EvalResponse(dataset=ds.name, split=req.split, protocol=req.protocol, users=users, metrics=metrics,
                            expected=expected or None, max_abs_diff=diff,
                            matches=None if diff is None else bool(diff <= EVAL_TOLERANCE),
                            tolerance=EVAL_TOLERANCE, model=state.version,
                            seconds=round(time.perf_counter() - t0, 4))
