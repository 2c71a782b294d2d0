"""Pure torch models. One file per model, each with a ``@dataclass`` config (``models.config.ModelConfig``)
and presets.

``MODELS`` maps a model name to its class; every class meets ``models.contracts.ServableEncoder``
(``model_name``, ``config_class``, ``fixed_length``, ``uses_user``, ``encode(history, user) -> (B, D')``,
``item_vectors() -> (N, D')``, ``scores(history, user) -> (B, N)``); the students also meet
``models.contracts.Student``. The imports are explicit: a missing model file is an ImportError here,
never a model that silently disappears from the registry.
"""
from __future__ import annotations

from torch import nn

from models.bert4rec import BERT4Rec
from models.config import ModelConfig
from models.contracts import PrefixStudent, ServableEncoder, Student, WindowStudent
from models.grec import GRec
from models.gru4rec import GRU4Rec
from models.hgn import HGN
from models.s3rec import S3Rec
from models.sasrec import SASRec

MODELS: dict[str, type[nn.Module]] = {cls.model_name: cls for cls in (BERT4Rec, HGN, GRU4Rec, SASRec, S3Rec, GRec)}

__all__ = ["MODELS", "ModelConfig", "PrefixStudent", "ServableEncoder", "Student", "WindowStudent"]
