"""Data command line: download the paper's files, convert your own logs, describe a dataset.

    python -m training.data download beauty [--data-dir DIR]
    python -m training.data convert interactions.csv --name mylog [--user-col ...] [--item-core 5]
    python -m training.data subset beauty --top-items 1500 --name beauty-top1500
    python -m training.data download beauty-top1500   # a named subset: its source fetched, derived, sha256-checked
    python -m training.data info beauty     # counts, checksum, repeated items

``convert`` applies the paper's preprocessing (S3-Rec / SSI): interactions sorted by timestamp per
user, users with at least 5 interactions kept (optionally an iterative item k-core first), items
re-numbered 1..N in order of first appearance; it writes ``NAME.txt`` plus ``NAME_id_map.json``
(``{"item_ids": [raw id of item 1, ...], "user_ids": [...]}``) so that served recommendations map
back to your own ids.

``subset`` derives a smaller dataset from one in the data folder (``protocol.data.SubsetSpec``): the N most
interacted items, each user's sequence restricted to them, users with fewer than ``--min-user`` left dropped,
items re-numbered. It writes ``NAME.txt``, ``NAME_id_map.json`` (the source's ids, composed with the source's own
id map when it has one, so served ids are the source's) and ``NAME_source.json`` (source, its sha256, the
parameters, the result's sha256). The same source and parameters always give the same file.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from protocol.data import (
    DATASET_FILES,
    DOWNLOAD_URL,
    SHA256,
    SUBSETS,
    DataError,
    SequenceDataset,
    load_dataset,
    resolve_data_dir,
    sha256_file,
)
from training.io import atomic_write_json, atomic_write_text


def download(name: str, data_dir: Path, url: str | None = None) -> Path:
    """Fetch a paper dataset and verify its sha256; the file is only moved into place when it matches. A named
    subset (``SUBSETS``) is derived from its source, fetched first when missing, and checked against its sha256."""
    spec = SUBSETS.get(name.lower())
    if spec is not None:
        target = data_dir / f"{name.lower()}.txt"
        if spec.sha256 and target.is_file() and sha256_file(target) == spec.sha256:
            print(f"ok: {target} already present (sha256 {spec.sha256})")
            return target
        source = DATASET_FILES.get(spec.source)
        if source is None or not (data_dir / source).is_file():
            download(spec.source, data_dir, url)
        return subset(spec.source, name.lower(), data_dir, spec.top_items, spec.min_user, spec.sha256)
    file = DATASET_FILES.get(name.lower())
    if file is None:
        raise DataError(f"no public download for {name!r}; known: {', '.join([*DATASET_FILES, *SUBSETS])}")
    url = url or DOWNLOAD_URL.format(file=file)
    target, tmp = data_dir / file, data_dir / f".{file}.part"
    expected = SHA256.get(file)
    if expected and target.is_file() and sha256_file(target) == expected:  # nothing to fetch, nothing written
        print(f"ok: {target} already present (sha256 {expected})")
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} -> {target}")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            h = hashlib.sha256()
            while block := resp.read(1 << 20):
                h.update(block)
                out.write(block)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed: {e}") from None
    if expected and h.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{url}: sha256 {h.hexdigest()} does not match the expected {expected}; file discarded")
    tmp.replace(target)
    print(f"ok: {target} (sha256 {h.hexdigest()})")
    return target


def _read_rows(path: Path, user_col: str, item_col: str, time_col: str):
    """Yield (user, item, timestamp, line) from CSV/TSV or JSON lines; errors name the line."""
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    yield str(row[user_col]), str(row[item_col]), float(row[time_col]), lineno
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise DataError(f"{path}:{lineno}: cannot read user/item/timestamp ({type(e).__name__}: {e})") from None
        return
    with open(path, encoding="utf-8", newline="") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        dialect = csv.Sniffer().sniff(sample, delimiters=",\t;") if sample else csv.excel
        reader = csv.DictReader(fh, dialect=dialect)
        missing = [c for c in (user_col, item_col, time_col) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}:1: missing column(s) {missing}; header is {reader.fieldnames}")
        for lineno, row in enumerate(reader, start=2):
            try:
                yield row[user_col], row[item_col], float(row[time_col]), lineno
            except (TypeError, ValueError):
                raise DataError(f"{path}:{lineno}: timestamp {row.get(time_col)!r} is not a number") from None


def _item_core(events: dict[str, list[tuple[float, str]]], k: int) -> None:
    """Iteratively drop items (and then users) with fewer than k interactions, in place."""
    while True:
        counts = Counter(i for seq in events.values() for _, i in seq)
        rare = {i for i, c in counts.items() if c < k}
        if not rare:
            return
        for u in list(events):
            events[u] = [(t, i) for t, i in events[u] if i not in rare]
            if len(events[u]) < k:
                del events[u]


def convert(path: Path, name: str, data_dir: Path, user_col: str = "user", item_col: str = "item",
            time_col: str = "timestamp", min_user: int = 5, item_core: int = 0) -> Path:
    """Raw interactions -> ``NAME.txt`` (+ id map). Returns the written path."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    events: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for user, item, ts, _ in _read_rows(path, user_col, item_col, time_col):
        events[user].append((ts, item))
    if not events:
        raise DataError(f"{path}: no interactions (empty file?)")
    if item_core > 1:
        _item_core(events, item_core)
    users = [u for u in events if len(events[u]) >= min_user]
    if not users:
        raise DataError(f"{path}: no user has at least {min_user} interactions")
    item_id: dict[str, int] = {}
    lines = []
    for new_u, u in enumerate(users, start=1):
        seq = [i for _, i in sorted(events[u], key=lambda e: e[0])]  # stable: ties keep file order
        ids = [item_id.setdefault(i, len(item_id) + 1) for i in seq]
        lines.append(f"{new_u} " + " ".join(map(str, ids)))
    out = data_dir / f"{name}.txt"
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_json(data_dir / f"{name}_id_map.json", {"item_ids": list(item_id), "user_ids": users})
    print(f"wrote {out}: {len(users)} users, {len(item_id)} items, {sum(len(events[u]) for u in users)} interactions "
          f"(dropped {len(events) - len(users)} users with < {min_user})")
    return out


def subset(source: str, name: str, data_dir: Path, top_items: int, min_user: int = 5,
           expected_sha256: str | None = None) -> Path:
    """``source`` restricted to its ``top_items`` most interacted items -> ``NAME.txt`` (+ id map, + provenance).
    Returns the written path; with ``expected_sha256``, a result that differs is discarded with an error."""
    if top_items < 1 or min_user < 3:
        raise DataError(f"subset {name!r}: --top-items must be >= 1 and --min-user >= 3 (leave-one-out), "
                        f"got {top_items} and {min_user}")
    ds = load_dataset(source, data_dir)
    if name.lower() == ds.name.lower():
        raise DataError(f"subset {name!r}: the name of its source; choose another --name")
    counts = np.bincount(np.concatenate(ds.sequences), minlength=ds.num_items + 1)[1:]  # (N,) interactions per item
    order = np.lexsort((np.arange(1, ds.num_items + 1), -counts))  # most interacted first, ties: smaller id
    keep = np.zeros(ds.num_items + 1, dtype=bool)
    keep[order[:top_items] + 1] = True
    rows = [(u, s[keep[s]]) for u, s in zip(ds.users.tolist(), ds.sequences, strict=True)]
    rows = [(u, s) for u, s in rows if len(s) >= min_user]
    if not rows:
        raise DataError(f"subset {name!r}: no user of {ds.path} keeps {min_user} of its {top_items} top items")
    new_id: dict[int, int] = {}
    lines = [f"{n} " + " ".join(str(new_id.setdefault(int(i), len(new_id) + 1)) for i in s)
             for n, (_, s) in enumerate(rows, start=1)]
    text = "\n".join(lines) + "\n"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise DataError(f"subset {name!r} of {ds.path} (sha256 {ds.sha256}): result sha256 {digest} differs from "
                        f"the expected {expected_sha256}; is the source the published file? nothing written")
    item_ids: list[Any] = list(new_id)  # source ids of items 1..N
    user_ids: list[Any] = [u for u, _ in rows]
    source_map = ds.path.with_name(f"{ds.path.stem}_id_map.json")
    if source_map.is_file():  # the source's own raw ids, so that the subset serves the ids its source serves
        raw = json.loads(source_map.read_text(encoding="utf-8"))
        item_ids = [raw["item_ids"][i - 1] for i in item_ids]
        if isinstance(raw.get("user_ids"), list) and len(raw["user_ids"]) == ds.num_users:
            row_of = {u: r for r, u in enumerate(ds.users.tolist())}
            user_ids = [raw["user_ids"][row_of[u]] for u in user_ids]
    out = data_dir / f"{name}.txt"
    try:  # the id map and provenance first: NAME.txt, the file that makes the dataset exist, comes last
        atomic_write_json(data_dir / f"{name}_id_map.json", {"item_ids": item_ids, "user_ids": user_ids})
        atomic_write_json(data_dir / f"{name}_source.json", {
            "source": ds.name, "source_path": str(ds.path), "source_sha256": ds.sha256, "top_items": top_items,
            "min_user": min_user, "sha256": digest, "users": len(rows), "items": len(new_id),
            "actions": sum(len(s) for _, s in rows)})
        atomic_write_text(out, text)
    except OSError as e:
        raise DataError(f"{data_dir}: cannot write subset {name!r} there ({e.strerror}); copy {ds.path.name} to a "
                        "writable folder and pass it as --data-dir (or SSI_DATA_DIR)") from None
    print(f"wrote {out}: {len(rows)} users, {len(new_id)} items, {sum(len(s) for _, s in rows)} actions "
          f"(the {top_items} most interacted items of {ds.name}; dropped {ds.num_users - len(rows)} users with "
          f"< {min_user} of them; sha256 {digest})")
    return out


def repeat_stats(ds: SequenceDataset) -> dict[str, Any]:
    """Repeated items: consecutive repeats (``12 12``), and evaluation targets the user already has in the
    input history (validation: ``s[-2]`` in ``s[:-2]``; test: ``s[-1]`` in ``s[:-1]``).

    How the protocol treats such targets (README, "Evaluation protocol"): the sampled negatives never
    contain them (they are drawn outside the whole sequence), and full ranking removes the input history
    from the ranking except the target itself, so a repeated target can still be ranked first.
    """
    pairs = users_with = 0
    in_history = {"valid": 0, "test": 0}
    for seq in ds.sequences:
        same = int(np.count_nonzero(seq[1:] == seq[:-1]))
        pairs += same
        users_with += same > 0
        in_history["valid"] += bool(np.any(seq[:-2] == seq[-2]))
        in_history["test"] += bool(np.any(seq[:-1] == seq[-1]))
    n = max(ds.num_users, 1)
    return {
        "consecutive_repeats": {"pairs": pairs, "users": users_with, "share_of_users": round(users_with / n, 4)},
        "targets_in_history": {split: {"users": count, "share": round(count / n, 4)}
                               for split, count in in_history.items()},
    }


def info(name: str, data_dir: Path) -> None:
    ds = load_dataset(name, data_dir)
    lens = [len(s) for s in ds.sequences]
    print(json.dumps({"name": ds.name, "path": str(ds.path), "sha256": ds.sha256, "users": ds.num_users,
                      "items": ds.num_items, "actions": ds.num_actions, "max_len": max(lens),
                      "mean_len": round(sum(lens) / len(lens), 2), "skipped_short_users": ds.skipped_short,
                      **repeat_stats(ds)}, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data folder (default: $SSI_DATA_DIR, else ./data when it exists, "
                   "else ../shared/data beside the checkout when it exists, else ./data)")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="download a paper dataset and verify its sha256")
    d.add_argument("name", choices=sorted([*DATASET_FILES, *SUBSETS]),
                   help="a paper dataset, or a named subset (derived from its source, which is fetched if missing)")
    d.add_argument("--url", default=None, help="override the source URL (a mirror)")
    c = sub.add_parser("convert", help="convert raw interactions (CSV/TSV/JSONL) to the sequence format")
    c.add_argument("path", type=Path)
    c.add_argument("--name", required=True, help="dataset name (writes NAME.txt and NAME_id_map.json)")
    c.add_argument("--user-col", default="user")
    c.add_argument("--item-col", default="item")
    c.add_argument("--time-col", default="timestamp")
    c.add_argument("--min-user", type=int, default=5, help="keep users with at least this many interactions")
    c.add_argument("--item-core", type=int, default=0, help="iterative item k-core before the user filter (0: off)")
    s = sub.add_parser("subset", help="derive a dataset from the N most interacted items of another")
    s.add_argument("source", help="dataset in the data folder (beauty, toys, lastfm or any NAME)")
    s.add_argument("--top-items", type=int, required=True, help="keep this many most interacted items")
    s.add_argument("--min-user", type=int, default=5, help="keep users with at least this many of them")
    s.add_argument("--name", required=True, help="dataset name (writes NAME.txt, NAME_id_map.json, NAME_source.json)")
    i = sub.add_parser("info", help="describe a dataset")
    i.add_argument("name")
    a = p.parse_args(argv)
    data_dir = resolve_data_dir(a.data_dir)
    try:
        if a.cmd == "download":
            download(a.name, data_dir, a.url)
        elif a.cmd == "convert":
            convert(a.path, a.name, data_dir, a.user_col, a.item_col, a.time_col, a.min_user, a.item_core)
        elif a.cmd == "subset":
            subset(a.source, a.name, data_dir, a.top_items, a.min_user)
        else:
            info(a.name, data_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
