"""Server settings: one ``Settings`` object, read from the environment (prefix ``SSI_``) and the CLI.

Environment variables use the ``SSI_`` prefix (``SSI_PORT=8001``, ``SSI_API_KEY=...``); the data folder
for ``/eval`` is ``SSI_DATA_DIR``, the variable the protocol itself reads, else ``resolve_data_dir``'s
default (./data, else ../shared/data beside the checkout): ``Settings.data_folder``. On the command line
(``python -m serving --help``) the same fields are kebab-case flags (``--max-batch-size 64``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MATMUL_MAX_ITEMS = 262_144  # serving.scoring.MATMUL_MAX_ITEMS (kept here so that settings load no numpy)

MAX_K_LIMIT = 1000  # hard ceiling for max_k (FAISS GPU caps k at 2048, and over-fetch needs room)


class Settings(BaseSettings):
    """Everything the server can be told. Defaults suit one uvicorn worker on a small CPU box."""

    model_config = SettingsConfigDict(
        env_prefix="SSI_", extra="ignore", cli_kebab_case=True, cli_prog_name="python -m serving",
        cli_implicit_flags=True, validate_default=True,
    )

    # Artifact
    artifact_root: Path = Field(Path("artifacts/serving"), description="folder holding <model>/<version>/ artifacts")
    artifact_path: Path | None = Field(
        None, description="serve this artifact folder instead of the latest under artifact_root (reload re-reads it)"
    )
    # Network
    host: str = Field("127.0.0.1", description="interface to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    # Compute
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks cuda when usable")
    ort_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads (and FAISS/OMP threads)")
    index: Literal["artifact", "flat"] = Field(
        "artifact", description="CPU index for top-k: artifact = the index the artifact carries (chosen, built and "
        "measured at export: exact up to its exact_max_items, else IVF/HNSW read with faiss.read_index, never "
        "rebuilt; /model shows it, its parameters and its recall@10 against exact); an artifact exported without "
        "one is served exactly; flat = exact search whatever the artifact carries")
    scoring: Literal["auto", "ort", "matmul", "faiss"] = Field(
        "auto", description="exact CPU top-k (index=flat, or an artifact whose index is exact): ort = one matmul + "
        "top-k per batch in ONNX Runtime (the item table packed once at load; needs the onnx package, else matmul), "
        "matmul = the same in numpy (one BLAS matmul + partial top-k), faiss = FAISS IndexFlatIP per query; auto = "
        "ort up to matmul_max_items items, faiss above (same answers; serving/scoring.py, measured in "
        "loadtest/README.md). GPU backends keep their GPU index")
    matmul_max_items: int = Field(MATMUL_MAX_ITEMS, ge=0, description="scoring=auto: the largest catalogue "
                                  "scored by one matmul per batch (ort)")
    fuse_topk: bool = Field(
        True, description="scoring ort on the CPU: the encoder and the top-k graph merged into one ONNX Runtime "
        "session, one call per batch instead of two (same answers; measured in loadtest/README.md, issue 27 part 4). "
        "ssi_encode_seconds then times that one call, ssi_search_seconds what follows it")
    # Dynamic batching
    batching_mode: Literal["auto", "loop", "thread"] = Field(
        "auto", description="where batches run: loop = on the event-loop thread (fastest on CPU), thread = one "
        "worker thread (GPU backends); auto = loop on CPU, thread on CUDA")
    max_batch_size: int = Field(32, ge=1, le=1024, description="largest batch the worker executes")
    max_queue_delay_ms: float = Field(
        0.0, ge=0.0, le=10_000.0, description="under load, the longest wait of the oldest request for a batch to "
        "fill (an idle server sends a lone request at once: idle_dispatch); 0 (Triton's default): a batch holds "
        "what arrived in one turn of the event loop (loop mode) or while the worker was busy (thread mode), "
        "measured 1.48x the throughput of 1 ms at 16 users on the Beauty bench (loadtest/README.md)")
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="batch sizes sent as soon as the queue holds them, before "
        "max_queue_delay (Triton's preferred_batch_size); empty: max_batch_size only")
    idle_dispatch: bool = Field(
        True, description="send a batch at once when the server is idle (the last batch held one request, or "
        "ended 10 x max_queue_delay ago); wait for max_queue_delay only under load")
    max_queue_size: int = Field(1024, ge=1, description="queued requests beyond this get 503 + Retry-After")
    request_timeout_s: float = Field(30.0, gt=0, description="a request waiting longer gets 504")
    # Limits
    max_k: int = Field(100, ge=1, le=MAX_K_LIMIT, description="largest k a request may ask for")
    max_history_len: int = Field(10_000, ge=1, description="longest history accepted (longer: 422)")
    max_candidates: int = Field(10_000, ge=1, description="most candidates a request may list")
    max_batch_requests: int = Field(256, ge=1, description="most requests in one /recommend/batch call")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body (larger: 413)")
    # Slow clients (a connection that trickles its request holds a socket and memory)
    header_timeout_s: float = Field(
        10.0, gt=0, le=300, description="the request line and headers must arrive within this many seconds of the "
        "connection (or of the request's first byte on a kept-alive one); else 408 and the connection is closed")
    body_timeout_s: float = Field(
        10.0, gt=0, le=300, description="the whole request body must arrive within this many seconds after the "
        "headers; else 408 and the connection is closed")
    max_header_bytes: int = Field(65_536, ge=1024, le=1_048_576, description="largest request line + headers "
                                  "(larger: 431)")
    keep_alive_timeout_s: int = Field(5, ge=1, le=300, description="an idle kept-alive connection is closed after "
                                      "this many seconds")
    coalesce_writes: bool = Field(
        True, description="send each response's head and body in one write (one send call and one wake-up of the "
        "client instead of two; python -m serving's HTTP protocol, serving/server.py)")
    gc_freeze: bool = Field(
        True, description="once the model is loaded and warmed (and after each reload), move every object the server "
        "holds into the garbage collector's permanent generation (gc.freeze), so that its collections scan only what "
        "requests create: a full collection of the loaded server scans ~90k objects (tens of ms) otherwise")
    # Operations
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    api_key: SecretStr | None = Field(
        None, description="/admin/* and /eval need it in header X-API-Key. Without a key they are refused (403), "
        "unless host is a loopback address (127.0.0.1, ::1, localhost): then they are open to local requests")
    data_dir: Path | None = Field(
        None, description="dataset folder for /eval; none: protocol.data.resolve_data_dir's rule (./data, else "
        "../shared/data beside the checkout), the rule of every entry point")
    eval_chunk_users: int = Field(0, ge=0, description="users per worker job in /eval (0 = max_batch_size)")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.api_key is not None and not self.api_key.get_secret_value():
            self.api_key = None  # SSI_API_KEY= (empty) means no key
        return self

    @property
    def data_folder(self) -> Path:
        """The data folder /eval reads: ``data_dir`` (SSI_DATA_DIR, --data-dir), else ``resolve_data_dir``'s
        default. Resolved on use, so that reading the settings loads no numpy (``python -m serving`` caps the
        BLAS/OpenMP threads after reading them and before numpy starts)."""
        from protocol.data import resolve_data_dir

        return resolve_data_dir(self.data_dir)

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_ms / 1000.0

    @property
    def eval_chunk(self) -> int:
        return self.eval_chunk_users or self.max_batch_size
