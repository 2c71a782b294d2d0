"""training.cli: the one DDP start-up and ``--set`` parser of run_all and the teachers."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from training import run_all, teachers
from training.cli import init_distributed, parse_override

ROOT = Path(__file__).resolve().parents[2]


def test_both_entry_points_use_the_shared_helpers():
    assert teachers.init_distributed is init_distributed and run_all.init_distributed is init_distributed
    assert not hasattr(run_all, "_init_distributed") and not hasattr(teachers, "_parse_override")


@pytest.mark.parametrize("text, expected", [
    ("lr=5e-4", ("lr", 5e-4)), ("dim=128", ("dim", 128)), ("amp=false", ("amp", False)),
    ("enc_dilations=[1, 2]", ("enc_dilations", [1, 2])), ("optimizer=adamw", ("optimizer", "adamw")),
    (" lr =0.1", ("lr", 0.1)), ("x=", ("x", "")), ("grad_clip=null", ("grad_clip", None)),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["lr", "=3", ""])
def test_parse_override_rejects_malformed_items(text):
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_override(text)


def test_single_process_starts_nothing_and_imports_no_torch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed() == (0, 1)
    code = "import sys\nfrom training.cli import init_distributed\nprint(init_distributed(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "(0, 1) False"
