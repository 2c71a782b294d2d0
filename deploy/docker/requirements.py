"""Print the pip requirements of the project for one image profile, read from pyproject.toml.

The Dockerfile installs the dependencies in their own layer, before the source is copied, from this
list (so a source change does not reinstall them). Profiles:

- ``serve``: what ``python -m serving`` needs: the base dependencies minus the training/export-only
  packages (torch, onnxscript, matplotlib, safetensors, tqdm), plus the chosen extra
  (``cpu``: onnxruntime + faiss-cpu; ``gpu``: onnxruntime-gpu + faiss-gpu). The server never imports torch;
  it imports ``onnx`` to build its scoring graph (``serving.scoring.OrtSearcher``), so onnx stays.
- ``full``: every base dependency plus the extra (training, export and serving in one image).

Usage: ``python deploy/docker/requirements.py pyproject.toml --extra cpu --profile serve``
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# Packages only training and export import; the serving process does not need them.
TRAIN_ONLY = frozenset({"torch", "onnxscript", "matplotlib", "safetensors", "tqdm"})


def _name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not m:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def requirements(pyproject: dict, extras: list[str], profile: str) -> list[str]:
    """The requirement strings for ``profile`` (``serve`` or ``full``) and ``extras``."""
    if profile not in ("serve", "full"):
        raise ValueError(f"profile must be 'serve' or 'full', got {profile!r}")
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    out = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"unknown extra {extra!r}; pyproject has {', '.join(sorted(optional))}")
        out += optional[extra]
    if profile == "serve":
        out = [r for r in out if _name(r) not in TRAIN_ONLY]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print the image's pip requirements from pyproject.toml.")
    p.add_argument("pyproject", type=Path, help="path to pyproject.toml")
    p.add_argument("--extra", action="append", default=[], help="optional-dependency group (repeatable)")
    p.add_argument("--profile", choices=("serve", "full"), default="serve", help="serve: no torch; full: all")
    args = p.parse_args(argv)
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    with open(args.pyproject, "rb") as fh:
        data = tomllib.load(fh)
    try:
        print("\n".join(requirements(data, args.extra, args.profile)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
