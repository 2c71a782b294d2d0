"""export.index: the index is chosen for the catalogue size and the recall target, and its manifest entry says so."""
from __future__ import annotations

import numpy as np
import pytest

from export.index import IndexConfig, IndexSettingError, candidates, choose_index, item_queries
from protocol import ann


def _table(n: int = 6000, d: int = 17, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n, d)).astype(np.float32)
    return items, item_queries(items, 200, seed + 1)


def test_small_catalogue_auto_is_exact_without_a_file() -> None:
    items, queries = _table(n=500)
    index, entry = choose_index(items, queries, "test", IndexConfig())
    assert index is None and entry["kind"] == "flat" and entry["file"] is None and entry["recall_at_10"] == 1.0
    assert "500 items <= exact_max_items 262144" in entry["chosen_because"]


def test_auto_above_the_threshold_picks_a_candidate_that_reaches_the_target_on_held_out_queries() -> None:
    items, queries = _table()
    index, entry = choose_index(items, queries, "draws", IndexConfig(exact_max_items=1000, recall_target=0.9))
    assert index is not None and entry["target_met"] and entry["recall_at_10"] >= 0.9
    assert entry["factory"] in candidates(len(items), items.shape[1])
    assert entry["queries"] == 100 and entry["tuned_on"] == 100 and entry["file"] == "index.faiss"
    # the recorded recall is the held-out half's, at the recorded knob
    ann.set_knob(index, ann.KNOBS[entry["kind"]], next(iter(entry["params"].values())))
    _, got = index.search(queries[1::2], 10)
    assert ann.recall_at_k(got, ann.exact_ids(items, queries[1::2], 10)) == pytest.approx(entry["recall_at_10"], abs=1e-5)
    assert {c["factory"] for c in entry["candidates"]} == set(candidates(len(items), items.shape[1]))


def test_forced_factory_tunes_its_knob_upwards_to_the_target() -> None:
    items, queries = _table()
    _, entry = choose_index(items, queries, "draws", IndexConfig(index="IVF64,Flat", recall_target=0.8))
    steps = entry["sweep"]
    assert [s["value"] for s in steps] == sorted(s["value"] for s in steps)  # a monotone sweep from nprobe 1
    assert all(s["recall"] < 0.8 for s in steps[:-1]) and steps[-1]["value"] == entry["params"]["nprobe"]


@pytest.mark.parametrize("bad", [{"index": "LSH"}, {"recall_target": 1.5}, {"queries": 1}])
def test_bad_settings_are_refused_naming_them(bad: dict) -> None:
    with pytest.raises(IndexSettingError):
        IndexConfig(**bad)


def test_export_cli_help_lists_the_index_settings(capsys: pytest.CaptureFixture) -> None:
    from export.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--index", "--recall-target", "--exact-max-items", "--index-queries", "--index-query-source"):
        assert flag in out
    assert main(["nowhere", "--index", "LSH"]) == 2
