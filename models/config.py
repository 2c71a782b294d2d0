"""``ModelConfig``: the base of every model's ``@dataclass`` config (presets, overrides, common checks).

A model config subclasses it as a dataclass, adds its own fields (all with defaults; ``num_users``, for
a model that embeds users, without), sets ``PRESETS`` and checks its own fields in ``__post_init__``
after ``super().__post_init__()``::

    @dataclass
    class XConfig(ModelConfig):
        PRESETS = {"smoke": {"dim": 16}, "cpu": {}, "paper": {}}
        dim: int = 64

``num_items`` is this base's field and always the first one, so ``dataclasses.asdict(config)`` (what a
run's ``model_config.json`` holds) lists the same keys in the same order as the configs written before
this base existed, and ``XConfig(**saved)`` reads them back.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self


@dataclass
class ModelConfig:
    # preset name -> field values; what the data gives (num_items, num_users) comes as overrides.
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    num_items: int  # items are ids 1..num_items; 0 is padding

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"{type(self).__name__}: num_items must be >= 1, got {self.num_items}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        """The config of preset ``name`` (``smoke``, ``cpu``, ``paper``) with ``overrides`` applied by field name."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown preset {name!r} for {cls.__name__}; expected one of {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @property
    def mask_token(self) -> int:
        """[MASK]'s token id: the first row after the items (BERT4Rec's cloze, the consistency tasks)."""
        return self.num_items + 1

    @property
    def int_token(self) -> int:
        """[INT]'s token id, after [MASK] (the temporal and persona tasks' interval token)."""
        return self.num_items + 2

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (checked again by ``__post_init__``)."""
        return dataclasses.replace(self, **changes)


__all__ = ["ModelConfig"]
