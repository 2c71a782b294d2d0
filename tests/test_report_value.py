"""The README's value-of-distillation table, from ``python -m export.latency``'s JSON."""
from __future__ import annotations

import json

from training.report import value_table


def _row(label: str, dataset: str, ratio: float) -> dict:
    return {"label": label, "dataset": dataset, "test_sampled_ndcg@10": 0.3, "test_full_ndcg@10": 0.03,
            "encode_b1_ratio": ratio, "encode_b1_ms": 0.024 * ratio, "encode_b32_ratio": ratio,
            "encode_b32_ms": 0.074 * ratio, "params": 2_346_000, "artifact_bytes": 9 * 2**20}


def test_value_table_names_each_rows_dataset_and_groups_them(tmp_path) -> None:
    doc = {"reference": "hgn_ce/seed42", "created_at": "2026-11-30T10:00:00Z", "settings": {"threads": 1},
           "rows": [_row("hgn_ce/seed42", "beauty", 1.0), _row("hgn_ce/seed42", "toys", 1.1),
                    _row("teacher_gru_temporal/seed42", "beauty", 7.7)]}
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(doc))
    lines = [ln for ln in value_table(path).splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [ln.split(" | ")[0:2] for ln in lines] == [["| beauty", "hgn_ce/seed42"],
                                                      ["| beauty", "teacher_gru_temporal/seed42"],
                                                      ["| toys", "hgn_ce/seed42"]]
    assert "7.70x (185 us)" in lines[1]


def test_value_table_is_empty_without_a_measurement(tmp_path) -> None:
    assert value_table(tmp_path / "latency.json") == ""
