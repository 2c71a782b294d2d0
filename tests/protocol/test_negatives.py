import os
import stat

import numpy as np
import pytest

from protocol import DataError, load_dataset, load_or_create_negatives
from protocol.negatives import sample_negatives


def test_99_unique_negatives_outside_sequence(tmp_path):
    rng = np.random.default_rng(1)
    lines = [f"{u} " + " ".join(map(str, rng.choice(np.arange(1, 301), size=20, replace=False))) for u in range(1, 31)]
    p = tmp_path / "N.txt"
    p.write_text("\n".join(lines) + "\n")
    ds = load_dataset(str(p))
    neg = sample_negatives(ds)
    assert neg.shape == (30, 99)
    for seq, row in zip(ds.sequences, neg):
        assert len(set(row.tolist())) == 99
        assert not set(row.tolist()) & set(seq.tolist())
        assert row.min() >= 1 and row.max() <= ds.num_items


def test_deterministic_and_seed_dependent(tiny_dataset_file):
    ds = load_dataset(str(tiny_dataset_file))
    # 40 items, sequences up to 12 long: only 28 unseen items, so use n=20 here
    a, b, c = sample_negatives(ds, 20, 7), sample_negatives(ds, 20, 7), sample_negatives(ds, 20, 8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_too_few_items_is_a_clear_error(tiny_dataset_file):
    with pytest.raises(DataError, match="unseen items, need 99"):
        sample_negatives(load_dataset(str(tiny_dataset_file)))


def _ds(tmp_path):
    rng = np.random.default_rng(2)
    p = tmp_path / "data" / "M.txt"
    p.parent.mkdir()
    p.write_text("".join(f"{u} " + " ".join(map(str, rng.integers(1, 200, size=8))) + "\n" for u in range(1, 21)))
    return load_dataset(str(p))


def test_stored_beside_data_and_reused(tmp_path):
    ds = _ds(tmp_path)
    n1 = load_or_create_negatives(ds)
    assert n1.path == tmp_path / "data" / "M_sample.txt"
    first = n1.path.read_text().split("\n")[0].split()
    assert first[0] == str(ds.users[0]) and len(first) == 100  # S3-Rec format: user neg1..neg99
    mtime = os.stat(n1.path).st_mtime_ns
    n2 = load_or_create_negatives(ds, seed=999)  # existing file wins: never regenerated
    assert np.array_equal(n1.items, n2.items) and n1.sha256 == n2.sha256 and os.stat(n1.path).st_mtime_ns == mtime


def test_read_only_data_folder_uses_cache(tmp_path, monkeypatch):
    ds = _ds(tmp_path)
    folder = tmp_path / "data"
    os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        monkeypatch.setenv("SSI_CACHE_DIR", str(tmp_path / "cache"))
        neg = load_or_create_negatives(ds)
        assert neg.path.parent == tmp_path / "cache" and not (folder / "M_sample.txt").exists()
    finally:
        os.chmod(folder, stat.S_IRWXU)


def test_truncated_file_is_refused(tmp_path):
    ds = _ds(tmp_path)
    neg = load_or_create_negatives(ds)
    lines = neg.path.read_text().splitlines()
    neg.path.write_text("\n".join(lines[:5]) + "\n")
    with pytest.raises(DataError, match="delete the file to regenerate"):
        load_or_create_negatives(ds)
