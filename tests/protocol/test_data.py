
from pathlib import Path

import numpy as np
import pytest

from protocol import DataError, eval_examples, load_dataset, pad_left, train_sequences
from protocol.data import dataset_path, resolve_data_dir
from training.data import convert
from training.data import main as data_cli


def test_loads_file(tiny_dataset_file):
    ds = load_dataset(str(tiny_dataset_file))
    ids = [int(x) for line in tiny_dataset_file.read_text().splitlines() for x in line.split()[1:]]
    assert ds.num_users == 60 and ds.num_items == max(ids) and ds.num_actions == len(ids)
    assert all(s.dtype == np.int64 for s in ds.sequences)


@pytest.mark.parametrize(
    "content, needle",
    [
        ("1 2 3 4\n2 5 x 7\n", ":2: non-integer id 'x'"),
        ("1 2 3 4\n2 5 0 7\n", ":2: item id 0 out of range"),
        ("1 2 3 4\n1 5 6 7\n", ":2: user 1 appears again"),
        ("1\n", ":1: user 1 has no items"),
        ("", "no usable user sequences"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, content, needle):
    p = tmp_path / "Bad.txt"
    p.write_text(content)
    with pytest.raises(DataError) as e:
        load_dataset(str(p))
    assert needle in str(e.value) and "Bad.txt" in str(e.value)


def test_short_users_skipped_and_counted(tmp_path):
    p = tmp_path / "Short.txt"
    p.write_text("1 1 2 3 4\n2 5 6\n3 7 8 9\n")
    ds = load_dataset(str(p))
    assert ds.num_users == 2 and ds.skipped_short == 1
    with pytest.raises(DataError, match=":2: user 2 has 2 items"):
        load_dataset(str(p), skip_short=False)


def test_missing_dataset_names_folder_and_command(tmp_path):
    with pytest.raises(DataError) as e:
        dataset_path("beauty", tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and f"python -m training.data --data-dir {tmp_path} download beauty" in msg


def test_missing_dataset_hint_runs_as_printed(tmp_path, monkeypatch):
    """The command in the hint is accepted by the data CLI exactly as printed (the flag before the subcommand)."""
    import shlex

    import training.data

    with pytest.raises(DataError) as e:
        dataset_path("beauty", tmp_path)
    command = str(e.value).split("Download it with: ")[1].split(". Known names")[0]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "training.data"]
    calls = []
    monkeypatch.setattr(training.data, "download", lambda name, folder, url=None: calls.append((name, folder)))
    assert data_cli(argv[3:]) == 0
    assert calls == [("beauty", tmp_path)]


def test_download_of_a_present_verified_file_fetches_nothing(tmp_path, monkeypatch, capsys):
    """`download` on a file already there with the expected sha256 (e.g. a read-only shared data folder)
    succeeds without the network and without writing."""
    import hashlib

    import training.data

    (tmp_path / "LastFM.txt").write_text("1 1 2 3\n")
    digest = hashlib.sha256(b"1 1 2 3\n").hexdigest()
    monkeypatch.setitem(training.data.SHA256, "LastFM.txt", digest)
    monkeypatch.setattr(training.data.urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched"))
    assert data_cli(["--data-dir", str(tmp_path), "download", "lastfm"]) == 0
    assert "already present" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LastFM.txt"]


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    import protocol.data as pdata

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSI_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.setenv("SSI_DATA_DIR", "")
    sibling = tmp_path / "shared" / "data"
    monkeypatch.setattr(pdata, "SIBLING_DATA", sibling)
    assert resolve_data_dir() == Path("data")  # neither exists: where a download goes
    sibling.mkdir(parents=True)
    assert resolve_data_dir() == sibling
    (tmp_path / "data").mkdir()
    assert resolve_data_dir() == Path("data")  # a local data folder wins over the shared one


def test_env_data_dir(monkeypatch, tiny_dataset_file):
    monkeypatch.setenv("SSI_DATA_DIR", str(tiny_dataset_file.parent))
    assert load_dataset("Tiny").num_users == 60


def test_leave_one_out_split(tmp_path):
    p = tmp_path / "S.txt"
    p.write_text("7 1 2 3 4 5\n8 6 7 8\n")
    ds = load_dataset(str(p))
    assert [s.tolist() for s in train_sequences(ds)] == [[1, 2, 3], [6]]
    vin, vt = eval_examples(ds, "valid")
    tin, tt = eval_examples(ds, "test")
    assert [s.tolist() for s in vin] == [[1, 2, 3], [6]] and vt.tolist() == [4, 7]
    assert [s.tolist() for s in tin] == [[1, 2, 3, 4], [6, 7]] and tt.tolist() == [5, 8]


def test_pad_left_truncates_to_most_recent():
    out = pad_left([np.array([1, 2, 3, 4]), np.array([9]), np.array([], dtype=np.int64)], 3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 9], [0, 0, 0]]


def test_real_counts_match_readme(shared_data_dir):
    ds = load_dataset("lastfm", shared_data_dir)
    assert (ds.num_users, ds.num_items, ds.num_actions) == (1090, 3646, 52551)
    assert ds.sha256 == "9ded486adb5b0fe9dc761950afa0a9a05e93ff018992e0c52bf11afec529f802"


def test_convert_csv_chronological_with_id_map(tmp_path):
    raw = tmp_path / "raw.csv"
    rows = ["uid,iid,ts"]
    for u in ("a", "b"):
        for k, t in enumerate([5, 1, 3, 2, 4]):
            rows.append(f"{u},item{k},{t}")
    rows.append("c,item0,1")  # fewer than 5 interactions: dropped
    raw.write_text("\n".join(rows) + "\n")
    out = convert(raw, "mine", tmp_path, "uid", "iid", "ts")
    ds = load_dataset(str(out))
    import json

    idmap = json.loads((tmp_path / "mine_id_map.json").read_text())
    # item1 (t=1), item3 (t=2), item2 (t=3), item4 (t=4), item0 (t=5)
    assert [idmap["item_ids"][i - 1] for i in ds.sequences[0]] == ["item1", "item3", "item2", "item4", "item0"]
    assert idmap["user_ids"] == ["a", "b"] and ds.num_users == 2


def test_convert_bad_timestamp_names_line(tmp_path):
    raw = tmp_path / "raw.csv"
    raw.write_text("user,item,timestamp\n1,2,3\n1,3,oops\n")
    with pytest.raises(DataError, match=r"raw.csv:3: timestamp 'oops'"):
        convert(raw, "x", tmp_path)


def test_convert_jsonl_and_item_core(tmp_path):
    import json

    raw = tmp_path / "raw.jsonl"
    lines = []
    for u in range(6):
        for k in range(6):
            lines.append(json.dumps({"user": u, "item": k, "timestamp": k}))
    lines.append(json.dumps({"user": 0, "item": 99, "timestamp": 10}))  # rare item, removed by the 5-core
    raw.write_text("\n".join(lines) + "\n")
    ds = load_dataset(str(convert(raw, "j", tmp_path, item_core=5)))
    assert ds.num_items == 6 and all(len(s) == 6 for s in ds.sequences)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert data_cli(["--data-dir", str(tmp_path), "info", "beauty"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'beauty' not found") and "Traceback" not in err
