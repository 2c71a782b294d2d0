"""ONNX export of a model's encoder, isolated in a fresh subprocess and checked before it is accepted.

The graph holds the encoder only (``history`` [+ ``user``] -> ``query``); the item table goes to FAISS.
Facts this module is built on (torch 2.13, measured on this project's CPU machine):

- The TorchScript exporter (``dynamo=False``) exports GRUs and HGN correctly and in well under a second,
  but bakes the sequence length of a transformer into the graph; the graph then fails in ONNX Runtime at
  any other length.
- The dynamo exporter handles transformers, takes ~10 s, and fails to decompose a GRU whose input length
  is symbolic after the in-graph truncation below. A second dynamo export of a GRU in the same process
  silently fixes the sequence axis, so every export runs in its own `python -m export.onnx_export` process.
- A trace with batch size 1 can bake the batch size in, so the sample batch has 3 rows.

Hence: each exporter in ``EXPORTERS`` is tried in turn, each in a fresh process, and its graph is only
accepted after (a) the declared input/output dims are checked to be symbolic where they must be, and
(b) ONNX Runtime matches torch to ``PARITY_TOL`` at several batch sizes and history lengths.

For models with a dynamic history length the graph itself keeps the most recent ``max_len`` items
(``history[:, -max_len:]``), so a longer history gives the same query as the server-side truncation.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protocol import onnx_runtime
from protocol.artifact import OUTPUT_QUERY, EncoderSpec, input_names

OPSET = 18
EXPORTERS: tuple[str, ...] = ("torchscript", "dynamo")
OUTPUT_NAME = OUTPUT_QUERY
PARITY_TOL = 1e-4
SAMPLE_BATCH = 3  # >= 2: a batch-1 trace can bake the batch size in
CHECK_BATCHES = (1, 2, 5)
CHILD_TIMEOUT_S = 900  # one exporter attempt


class ExportError(Exception):
    """An export that cannot be completed or does not pass its checks; the message names the file/run."""


@dataclass
class EncoderInfo:
    """What the manifest records about an exported encoder."""

    file: str
    exporter: str
    opset: int
    input_names: list[str]
    output_name: str
    max_len: int
    fixed_length: bool
    uses_user: bool
    dim: int
    max_abs_diff: float  # ORT vs torch over the export-time checks

    def spec(self) -> EncoderSpec:
        """The manifest's ``encoder`` entry (``protocol.artifact.EncoderSpec``)."""
        return EncoderSpec(max_len=self.max_len, fixed_length=self.fixed_length, uses_user=self.uses_user,
                           dim=self.dim, opset=self.opset, exporter=self.exporter, file=self.file,
                           output_name=self.output_name)


class _HistoryEncoder(nn.Module):
    """``history`` -> query; truncates to the most recent ``max_len`` items unless the length is fixed."""

    def __init__(self, model: nn.Module, max_len: int, fixed_length: bool):
        super().__init__()
        self.model, self.max_len, self.fixed_length = model, max_len, fixed_length

    def _history(self, history: torch.Tensor) -> torch.Tensor:
        return history if self.fixed_length else history[:, -self.max_len :]

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.model.encode(self._history(history), None).float()


class _UserHistoryEncoder(_HistoryEncoder):
    """``history``, ``user`` (0 = anonymous) -> query."""

    def forward(self, history: torch.Tensor, user: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.model.encode(self._history(history), user).float()


def wrap_encoder(model: nn.Module, max_len: int, fixed_length: bool, uses_user: bool) -> nn.Module:
    """The module that is exported: the model's ``encode`` with the graph's input convention."""
    cls = _UserHistoryEncoder if uses_user else _HistoryEncoder
    return cls(model, max_len, fixed_length).eval()


# ------------------------------------------------------------------------------------------ inputs


def model_sizes(model: nn.Module) -> tuple[int, int]:
    """(num_items, num_users) of a model: items from ``item_vectors()``, users from its config (0 if none)."""
    with torch.no_grad():
        n_items = int(model.item_vectors().shape[0])
    n_users = int(getattr(getattr(model, "config", None), "num_users", 0) or 0)
    return n_items, n_users


def random_inputs(
    rng: np.random.Generator, batch: int, length: int, num_items: int, num_users: int, pad_rows: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Random left-padded histories (B, length) with ids in 1..num_items, and users in 0..num_users.

    With ``pad_rows`` every other row gets a random amount of left padding, to exercise masking."""
    hist = rng.integers(1, num_items + 1, size=(batch, length), dtype=np.int64)
    if pad_rows and length > 1:
        for r in range(0, batch, 2):
            hist[r, : int(rng.integers(0, length))] = 0
    users = rng.integers(0, num_users + 1, size=batch, dtype=np.int64)
    return hist, users


def check_lengths(max_len: int, fixed_length: bool) -> list[int]:
    """History lengths an encoder must handle: exactly ``max_len``, or 1, 2, ``max_len`` and longer."""
    return [max_len] if fixed_length else sorted({1, 2, max_len, max_len + 3})


# ------------------------------------------------------------------------------------------ checks


def _dims(value_info: Any) -> list[int | str]:
    return [
        d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
        for d in value_info.type.tensor_type.shape.dim
    ]


def check_graph(
    path: str | os.PathLike, max_len: int, fixed_length: bool, uses_user: bool
) -> tuple[int, int]:
    """Check the ONNX graph's declared interface. Returns (opset, output dim); raises ExportError.

    ``history`` is int64 (batch, length) with a symbolic batch axis and a symbolic length axis unless
    ``fixed_length`` (then exactly ``max_len``); ``user`` is int64 (batch,); ``query`` float32 (batch, D).
    """
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: ONNX checker rejects the graph ({str(e).splitlines()[0]})") from None
    inputs = {i.name: i for i in model.graph.input}
    if list(inputs) != input_names(uses_user):
        raise ExportError(f"{path}: graph inputs {list(inputs)}, expected {input_names(uses_user)}")
    for name, want in (("history", ["batch", max_len if fixed_length else "length"]), ("user", ["batch"])):
        if name not in inputs:
            continue
        dims = _dims(inputs[name])
        if inputs[name].type.tensor_type.elem_type != onnx.TensorProto.INT64:
            raise ExportError(f"{path}: input {name!r} is not int64")
        if len(dims) != len(want) or any(_mismatch(d, w) for d, w in zip(dims, want, strict=True)):
            raise ExportError(
                f"{path}: input {name!r} has dims {dims}, expected {want} (symbolic where named)"
            )
    outputs = {o.name: o for o in model.graph.output}
    if list(outputs) != [OUTPUT_NAME]:
        raise ExportError(f"{path}: graph outputs {list(outputs)}, expected [{OUTPUT_NAME!r}]")
    out_dims = _dims(outputs[OUTPUT_NAME])
    if len(out_dims) != 2 or not isinstance(out_dims[0], str) or not isinstance(out_dims[1], int):
        raise ExportError(f"{path}: output {OUTPUT_NAME!r} has dims {out_dims}, expected [batch, D]")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return int(opset), int(out_dims[1])


def declare_output_dim(path: Path, dim: int) -> None:
    """Write the query width into the graph's output type when the exporter left it symbolic (the
    TorchScript exporter does for GRU4Rec), so a reader can check it against the item table statically.
    The parity check that follows runs the graph, so a wrong width cannot slip through."""
    import onnx

    model = onnx.load(str(path))
    width = model.graph.output[0].type.tensor_type.shape.dim[1]
    if width.HasField("dim_value"):
        return
    width.dim_value = dim
    onnx.save(model, str(path))


def _mismatch(dim: int | str, want: int | str) -> bool:
    """A named (symbolic) dim must stay symbolic (any name); a fixed dim must equal ``want``."""
    if isinstance(want, str):
        return not isinstance(dim, str) or dim == "?"
    return dim != want


def ort_session(path: str | os.PathLike, providers: list[str] | None = None, threads: int = 1):
    """An ONNX Runtime session with quiet logging and a small thread count."""
    return onnx_runtime.session(path, threads, providers)


def ort_encode(session: Any, history: np.ndarray, users: np.ndarray | None) -> np.ndarray:
    feeds = {"history": np.ascontiguousarray(history, dtype=np.int64)}
    if users is not None and "user" in {i.name for i in session.get_inputs()}:
        feeds["user"] = np.ascontiguousarray(users, dtype=np.int64)
    return session.run([OUTPUT_NAME], feeds)[0]


def check_parity(
    path: str | os.PathLike,
    wrapper: nn.Module,
    max_len: int,
    fixed_length: bool,
    uses_user: bool,
    num_items: int,
    num_users: int,
    seed: int = 0,
) -> float:
    """Max |ORT - torch| over CHECK_BATCHES x check_lengths; raises ExportError above PARITY_TOL."""
    session = ort_session(path)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch in CHECK_BATCHES:
        for length in check_lengths(max_len, fixed_length):
            hist, users = random_inputs(rng, batch, length, num_items, num_users)
            args = (torch.from_numpy(hist),) + ((torch.from_numpy(users),) if uses_user else ())
            with torch.no_grad():
                ref = wrapper(*args).numpy()
            try:
                got = ort_encode(session, hist, users if uses_user else None)
            except Exception as e:  # noqa: BLE001 - ORT raises its own pybind exception types
                raise ExportError(
                    f"{path}: ONNX Runtime fails on a ({batch}, {length}) history: "
                    f"{str(e).splitlines()[0][:200]}"
                ) from None
            if got.shape != ref.shape:
                raise ExportError(
                    f"{path}: ORT output {got.shape} vs torch {ref.shape} at ({batch}, {length})"
                )
            diff = float(np.abs(got - ref).max())
            if not diff <= PARITY_TOL:
                raise ExportError(
                    f"{path}: ORT differs from torch by {diff:.2e} at ({batch}, {length}) "
                    f"(tolerance {PARITY_TOL:.0e})"
                )
            worst = max(worst, diff)
    return worst


# ------------------------------------------------------------------------------------------ export


def _sample_args(max_len: int, fixed_length: bool, uses_user: bool, num_items: int, num_users: int):
    """Trace inputs: 3 rows, longer than ``max_len`` for dynamic lengths (so truncation is traced)."""
    length = max_len if fixed_length else max_len + 2
    hist, users = random_inputs(np.random.default_rng(1), SAMPLE_BATCH, length, num_items, num_users)
    return (torch.from_numpy(hist),) + ((torch.from_numpy(users),) if uses_user else ())


def _torch_export(
    wrapper: nn.Module,
    args: tuple,
    path: Path,
    exporter: str,
    fixed_length: bool,
    uses_user: bool,
    opset: int,
) -> None:
    names = input_names(uses_user)
    if exporter == "torchscript":
        axes: dict[str, dict[int, str]] = {
            "history": {0: "batch"} if fixed_length else {0: "batch", 1: "length"},
            "user": {0: "batch"},
            OUTPUT_NAME: {0: "batch"},
        }
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes={k: v for k, v in axes.items() if k in names + [OUTPUT_NAME]},
            opset_version=opset,
            do_constant_folding=True,
        )
    elif exporter == "dynamo":
        batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1)
        shapes: dict[str, Any] = {"history": {0: batch} if fixed_length else {0: batch, 1: length}}
        if uses_user:
            shapes["user"] = {0: batch}
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=True,
            external_data=False,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes=shapes,
            opset_version=opset,
            verbose=False,
        )
    else:
        raise ExportError(f"unknown exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}")


def _export_and_check(
    model: nn.Module, path: str, max_len: int, fixed_length: bool, uses_user: bool, exporter: str, opset: int
) -> dict[str, Any]:
    """Child-process body: export with one exporter, check the graph and ORT parity. Returns EncoderInfo."""
    model = model.eval()
    num_items, num_users = model_sizes(model)
    wrapper = wrap_encoder(model, max_len, fixed_length, uses_user)
    args = _sample_args(max_len, fixed_length, uses_user, num_items, num_users)
    out = Path(path)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        _torch_export(wrapper, args, out, exporter, fixed_length, uses_user, opset)
    if list(out.parent.glob(out.name + "*.data")):
        raise ExportError(f"{out}: the exporter wrote external data; expected a one-file model")
    with torch.no_grad():
        declare_output_dim(out, int(wrapper(*args).shape[1]))
    got_opset, dim = check_graph(out, max_len, fixed_length, uses_user)
    diff = check_parity(out, wrapper, max_len, fixed_length, uses_user, num_items, num_users)
    return asdict(
        EncoderInfo(
            file=out.name,
            exporter=exporter,
            opset=got_opset,
            input_names=input_names(uses_user),
            output_name=OUTPUT_NAME,
            max_len=max_len,
            fixed_length=fixed_length,
            uses_user=uses_user,
            dim=dim,
            max_abs_diff=diff,
        )
    )


def _child_main(request: str, result: str) -> int:
    """``python -m export.onnx_export REQUEST RESULT``: run one export, write ``{"info"|"error": ...}``."""
    torch.set_num_threads(1)
    try:
        req = torch.load(request, map_location="cpu", weights_only=False)
        out: dict[str, Any] = {"info": _export_and_check(req.pop("model"), **req)}
    except ExportError as e:
        out = {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - the exporters raise many types; report the first line
        out = {"error": f"{type(e).__name__}: {_last_line(e)}"}
    Path(result).write_text(json.dumps(out), encoding="utf-8")
    return 0


def _child_env() -> dict[str, str]:
    """The parent's import path, so the child can import the model's class (sent by pickle)."""
    paths = [p or os.getcwd() for p in sys.path]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _run_in_child(model: nn.Module, workdir: Path, **kwargs: Any) -> dict[str, Any]:
    """One export in a fresh ``python -m export.onnx_export`` process (exporter state never leaks)."""
    request, result = workdir / ".export-request.pt", workdir / ".export-result.json"
    torch.save({"model": model, **kwargs}, request)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "export.onnx_export", str(request), str(result)],
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
        if not result.is_file():
            tail = " ".join(proc.stderr.strip().splitlines()[-2:])[-300:]
            raise ExportError(f"the export process died (exit code {proc.returncode}): {tail}")
        out = json.loads(result.read_text(encoding="utf-8"))
    except subprocess.TimeoutExpired:
        raise ExportError(f"the export process took longer than {CHILD_TIMEOUT_S} s") from None
    finally:
        request.unlink(missing_ok=True)
        result.unlink(missing_ok=True)
    if "error" in out:
        raise ExportError(out["error"])
    return out["info"]


def export_encoder(
    model: nn.Module,
    path: str | os.PathLike,
    max_len: int,
    fixed_length: bool,
    uses_user: bool,
    exporters: tuple[str, ...] = EXPORTERS,
    opset: int = OPSET,
) -> EncoderInfo:
    """Export ``model.encode`` to ``path`` as a one-file ONNX graph and check it (symbolic dims, ORT parity).

    Each exporter in ``exporters`` is tried in its own subprocess until one passes; the model's class
    must be importable there (it is sent by pickle). Raises ExportError listing every attempt's failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    failures = []
    for exporter in exporters:
        try:
            info = _run_in_child(
                model,
                path.parent,
                path=str(path),
                max_len=max_len,
                fixed_length=fixed_length,
                uses_user=uses_user,
                exporter=exporter,
                opset=opset,
            )
            return EncoderInfo(**info)
        except ExportError as e:
            failures.append(f"{exporter}: {str(e).replace(f'{path}: ', '')}")
    path.unlink(missing_ok=True)
    raise ExportError(f"{path}: no exporter produced a working graph; " + " | ".join(failures))


def _last_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip() or "".join(
        traceback.format_exception_only(type(e), e)
    )
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:300]


if __name__ == "__main__":
    sys.exit(_child_main(*sys.argv[1:3]))
