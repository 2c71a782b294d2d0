"""Load-testing settings: one pydantic-settings class per program, command-line flags made from its fields.

Each field is written once, with its type, bounds, default and description:

- ``TrafficConfig`` (``loadtest/traffic.py``): what the requests look like; ``SSI_LOADTEST_<FIELD>``;
  it travels to locust's processes through those variables (``to_env``).
- ``RunSettings`` (``loadtest/run.py``): one bounded locust run or a soak; ``SSI_LOADTEST_<FIELD>``.
- ``BenchSettings`` (``loadtest/bench.py``): the serving benchmark; ``SSI_BENCH_<FIELD>``.

``add_flags`` turns a class's fields into ``--kebab-case`` argparse flags (``--name/--no-name`` for booleans,
choices for ``Literal`` types); ``from_args`` builds the settings from the flags that were given, the
environment and the defaults, in that order of precedence. Values are checked by pydantic: a bad one
raises ``pydantic.ValidationError`` (a ``ValueError``) naming the field.
"""
from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from typing_extensions import Self

ENV_PREFIX = "SSI_LOADTEST_"

S = TypeVar("S", bound="LoadtestSettings")


class LoadtestSettings(BaseSettings):
    """Base of the load-testing settings: frozen, read from ``SSI_LOADTEST_*`` (empty values ignored)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore", env_ignore_empty=True,
                                      validate_default=True)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated (the environment is not read again)."""
        return type(self)(**{**self.model_dump(), **changes})

    @classmethod
    def env_name(cls, field: str) -> str:
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    def to_env(self) -> dict[str, str]:
        """The environment variables that make ``type(self)()`` equal to this object (None fields left out)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            out[self.env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def _flag_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(argparse ``type``, choices) for a field annotation; ``X | None`` is treated as ``X``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _flag_type(args[0])
        return str, None
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices
    if annotation in (bool, int, float, str, Path):
        return annotation, None
    return str, None


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str) and not value:
        return "empty"
    return str(value)


def add_flags(parser: argparse._ActionsContainer, cls: type[BaseModel], exclude: typing.Iterable[str] = ()) -> None:
    """One ``--kebab-case`` flag per field of ``cls`` (except ``exclude``). Flags that are not given leave
    no attribute in the parsed namespace, so ``from_args`` falls back to the environment, then the default."""
    skip = set(exclude)
    env_name = getattr(cls, "env_name", None)
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        kind, choices = _flag_type(field.annotation)
        default = field.get_default(call_default_factory=True)
        where = f"env {env_name(name)}; " if env_name else ""
        text = f"{field.description or name.replace('_', ' ')} ({where}default: {_default_text(default)})"
        text = text.replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=text)
        else:
            metavar = None if choices else {int: "N", float: "X", Path: "PATH"}.get(kind, "TEXT")
            parser.add_argument(flag, dest=name, type=kind, choices=choices, default=argparse.SUPPRESS,
                                metavar=metavar, help=text)


def from_args(cls: type[S], args: argparse.Namespace, **overrides: Any) -> S:
    """``cls`` from the flags in ``args`` that were given (``add_flags``), then ``overrides`` on top;
    fields neither given nor overridden come from the environment, else their defaults."""
    given = {name: getattr(args, name) for name in cls.model_fields if hasattr(args, name)}
    return cls(**{**given, **overrides})


def describe_error(e: ValidationError) -> str:
    """A pydantic validation error as one line: ``field: problem; field: problem``."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
