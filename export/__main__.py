"""``python -m export <run-dir> [--out artifacts/serving]``: build a serving artifact from a finished run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export.artifact import DEFAULT_ROOT, MANIFEST, build_artifact
from export.onnx_export import EXPORTERS, ExportError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    p.add_argument(
        "run_dir", type=Path, help="a finished training run (with metrics.json and model.safetensors)"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_ROOT, help=f"artifact root (default: {DEFAULT_ROOT})")
    p.add_argument(
        "--data", default=None, help="data folder or .txt file (default: $SSI_DATA_DIR, else ./data)"
    )
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        action="append",
        help=f"exporter(s) to try, in order (default: {', '.join(EXPORTERS)})",
    )
    p.add_argument("--no-latest", action="store_true", help="do not point <out>/latest at the new artifact")
    a = p.parse_args(argv)
    try:
        path = build_artifact(
            a.run_dir,
            a.out,
            data=a.data,
            exporters=tuple(a.exporter or EXPORTERS),
            update_latest=not a.no_latest,
        )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    enc, items = manifest["encoder"], manifest["items"]
    sizes = ", ".join(f"{n} {(path / n).stat().st_size / 1024:.1f} KiB" for n in manifest["files"])
    print(f"wrote {path}")
    print(
        f"  encoder: {enc['exporter']} exporter, opset {enc['opset']}, inputs {enc['input_names']}, "
        f"max_len {enc['max_len']}{' (fixed)' if enc['fixed_length'] else ''}, "
        f"ORT vs torch {manifest['source']['export_max_abs_diff']:.1e}"
    )
    print(f"  items: {items['count']} x {items['dim']}; files: {sizes}")
    if not a.no_latest:
        print(f"  {a.out / 'latest'} -> {manifest['model']['name']}/{manifest['model']['version']}")
    print(f"  check it with: python -m export.verify {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
