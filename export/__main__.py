"""``python -m export <run-dir> [--out artifacts/serving] [--index auto|flat|FACTORY] [--recall-target 0.95]``:
build a serving artifact from a finished run, with the search index chosen for its catalogue (export/index.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export.artifact import DEFAULT_ROOT, MANIFEST, build_artifact
from export.index import IndexConfig, IndexSettingError
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
    d = IndexConfig()
    g = p.add_argument_group("search index (export/index.py; the manifest's 'index' entry records the choice)")
    g.add_argument("--index", default=d.index, metavar="auto|flat|FACTORY",
                   help="auto = exact search up to --exact-max-items items, else the fastest of IVF<4 sqrt N>,Flat, "
                   "IVF<16 sqrt N>,Flat and HNSW32 that reaches --recall-target; flat = exact search; or a FAISS "
                   f"factory string such as IVF64,Flat, IVF1024,PQ17 or HNSW32 (default: {d.index})")
    g.add_argument("--recall-target", type=float, default=d.recall_target, metavar="R",
                   help=f"recall@10 against exact the index must reach on held-out queries (default: {d.recall_target})")
    g.add_argument("--exact-max-items", type=int, default=d.exact_max_items, metavar="N",
                   help=f"index=auto: exact search up to this many items (default: {d.exact_max_items})")
    g.add_argument("--index-queries", type=int, default=d.queries, metavar="N",
                   help=f"queries that tune (half) and measure (the other half) the index (default: {d.queries})")
    g.add_argument("--index-query-source", choices=("real", "items"), default=d.query_source,
                   help="real = test histories through the exported encoder; items = draws from the item "
                   f"distribution (default: {d.query_source})")
    a = p.parse_args(argv)
    try:
        index = IndexConfig(index=a.index, recall_target=a.recall_target, exact_max_items=a.exact_max_items,
                            queries=a.index_queries, query_source=a.index_query_source)
    except IndexSettingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        path = build_artifact(
            a.run_dir,
            a.out,
            data=a.data,
            exporters=tuple(a.exporter or EXPORTERS),
            update_latest=not a.no_latest,
            index=index,
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
    ix = manifest["index"]
    params = ", ".join(f"{k}={v}" for k, v in ix["params"].items()) or "no knob"
    print(f"  index: {ix['factory']} ({ix['kind']}, {params}), recall@10 against exact {ix['recall_at_10']:.4f} on "
          f"{ix['queries']} queries; {ix['chosen_because']}")
    if not a.no_latest:
        print(f"  {a.out / 'latest'} -> {manifest['model']['name']}/{manifest['model']['version']}")
    print(f"  check it with: python -m export.verify {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
