"""What the training entry points share on the command line: DDP start-up and ``--set KEY=VALUE``.

Used by ``training/run_all.py`` and ``training/teachers.py``. Torch is imported only inside
``init_distributed`` when a process group is needed, so ``run_all.py --help`` stays torch-free.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by torchrun with ``WORLD_SIZE > 1`` (nccl on CUDA, with this
    rank's ``LOCAL_RANK`` device selected first; gloo on CPU); returns ``(rank, world_size)``.

    Without torchrun (``WORLD_SIZE`` unset or 1) nothing is started and torch is not imported: ``(0, 1)``.
    Calling it again in a process that already joined returns the same pair.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def parse_override(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE`` -> ``(KEY, value)``: VALUE as JSON when it parses (``5e-4``, ``true``, ``[1, 2]``),
    else the raw string. An ``argparse`` type: a malformed item is a usage error."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


__all__ = ["init_distributed", "parse_override"]
