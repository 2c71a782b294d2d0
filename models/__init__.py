"""Pure torch models. One file per model, each with a ``@dataclass`` config and presets.

``MODELS`` maps a model name to its class; every class has ``model_name``, ``config_class``,
``fixed_length`` and ``uses_user`` class attributes and implements the servable contract
``encode(history, user) -> (B, D')`` and ``item_vectors() -> (N, D')``.
"""
from __future__ import annotations

import importlib
import importlib.util

from torch import nn

# module name -> class name; one file per model.
_MODEL_FILES: dict[str, str] = {
    "bert4rec": "BERT4Rec",
    "hgn": "HGN",
    "gru4rec": "GRU4Rec",
    "sasrec": "SASRec",
    "s3rec": "S3Rec",
    "grec": "GRec",
}

MODELS: dict[str, type[nn.Module]] = {}
for _module, _cls in _MODEL_FILES.items():
    if importlib.util.find_spec(f"models.{_module}") is not None:
        _m = importlib.import_module(f"models.{_module}")
        MODELS[_m.__dict__[_cls].model_name] = _m.__dict__[_cls]

__all__ = ["MODELS"]
