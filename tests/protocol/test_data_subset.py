"""``python -m training.data subset``: a named, reproducible subset of a dataset (the first run's data)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol import DataError, load_dataset
from protocol.data import SUBSETS, sha256_file
from training.data import download, subset
from training.data import main as data_cli

# item 1: 5 interactions, 2: 4, 3: 3, 4: 3, 5: 1; ties (3, 4) go to the smaller id
SOURCE = "1 5 1 2 3 4\n2 1 2 3 1 2\n3 4 1 2 3 4\n4 1 4 2 3 1\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "src.txt").write_text(SOURCE)
    return tmp_path


def test_keeps_the_top_items_in_order_and_renumbers_by_first_appearance(folder: Path) -> None:
    subset("src", "src-top3", folder, top_items=3, min_user=4)
    ds = load_dataset("src-top3", folder)
    # users keep items {1, 2, 3} in their order: u1 [1 2 3] (3 < 4: dropped), u2 [1 2 3 1 2], u3 [1 2 3], u4 [1 2 3 1]
    assert ds.users.tolist() == [1, 2]
    assert [s.tolist() for s in ds.sequences] == [[1, 2, 3, 1, 2], [1, 2, 3, 1]]
    id_map = json.loads((folder / "src-top3_id_map.json").read_text())
    assert id_map == {"item_ids": [1, 2, 3], "user_ids": [2, 4]}  # the source's ids of users 1, 2
    source = json.loads((folder / "src-top3_source.json").read_text())
    assert source["sha256"] == sha256_file(folder / "src-top3.txt") and source["top_items"] == 3


def test_same_source_same_file_and_a_wrong_checksum_writes_nothing(folder: Path) -> None:
    first = sha256_file(subset("src", "a", folder, top_items=4, min_user=3))
    assert sha256_file(subset("src", "b", folder, top_items=4, min_user=3)) == first
    with pytest.raises(DataError, match="differs from the expected"):
        subset("src", "c", folder, top_items=4, min_user=3, expected_sha256="0" * 64)
    assert not (folder / "c.txt").exists()


def test_ids_compose_with_the_source_id_map(folder: Path) -> None:
    (folder / "src_id_map.json").write_text(json.dumps({"item_ids": ["a", "b", "c", "d", "e"],
                                                        "user_ids": ["u1", "u2", "u3", "u4"]}))
    subset("src", "s", folder, top_items=3, min_user=4)
    assert json.loads((folder / "s_id_map.json").read_text()) == {"item_ids": ["a", "b", "c"], "user_ids": ["u2", "u4"]}


def test_bad_arguments_are_clear_errors(folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert data_cli(["--data-dir", str(folder), "subset", "src", "--top-items", "1", "--min-user", "9",
                     "--name", "x"]) == 2
    assert "no user" in capsys.readouterr().err
    with pytest.raises(DataError, match="--top-items must be"):
        subset("src", "y", folder, top_items=0)
    with pytest.raises(DataError, match="not found"):
        subset("missing", "z", folder, top_items=3)


def test_a_named_subset_is_derived_from_its_source_by_download(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from protocol.data import SubsetSpec

    expected = sha256_file(subset("src", "ref", folder, top_items=3, min_user=4))
    monkeypatch.setitem(SUBSETS, "tiny-top3", SubsetSpec(source="src", top_items=3, min_user=4, sha256=expected))
    monkeypatch.setattr("training.data.DATASET_FILES", {"src": "src.txt"})
    assert sha256_file(download("tiny-top3", folder)) == expected
    before = (folder / "tiny-top3.txt").stat().st_mtime_ns
    download("tiny-top3", folder)  # present and checked: nothing rewritten
    assert (folder / "tiny-top3.txt").stat().st_mtime_ns == before


def test_the_first_runs_subset_reproduces_its_declared_checksum(tmp_path: Path) -> None:
    """``beauty-top1500`` derived from the published Beauty file gives the sha256 ``SUBSETS`` declares (the file
    ``make run`` trains on); skipped where Beauty is not in the data folder (nothing is downloaded)."""
    import shutil

    from protocol.data import DATASET_FILES, SHA256, resolve_data_dir

    spec = SUBSETS["beauty-top1500"]
    source = resolve_data_dir() / DATASET_FILES[spec.source]
    if not source.is_file() or sha256_file(source) != SHA256[source.name]:
        pytest.skip(f"the published {source.name} is not in the data folder")
    shutil.copyfile(source, tmp_path / source.name)
    out = subset(spec.source, "beauty-top1500", tmp_path, spec.top_items, spec.min_user, spec.sha256)
    assert sha256_file(out) == spec.sha256


def test_a_folder_it_cannot_write_is_a_clear_error(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, *_: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("training.data.atomic_write_json", refuse)
    with pytest.raises(DataError, match="cannot write subset 'ro'.*Permission denied"):
        subset("src", "ro", folder, top_items=3, min_user=4)
    assert not (folder / "ro.txt").exists()
