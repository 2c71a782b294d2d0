"""The README's value-of-distillation table, from ``python -m export.latency``'s JSON."""
from __future__ import annotations

import json

from training.report import value_table


def _row(label: str, dataset: str, ratio: float) -> dict:
    return {"label": label, "model": label.split("/")[0], "dataset": dataset, "test_sampled_ndcg@10": 0.3, "test_full_ndcg@10": 0.03,
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


def test_an_ensemble_costs_the_sum_of_its_measured_members(tmp_path) -> None:
    """An ensemble is served as its members: its row adds up their measured costs (a member measured on another
    seed of its row stands for it); one with an unmeasured member gets no row."""
    doc = {"reference": "hgn_ce/seed42", "rows": [_row("hgn_ce/seed42", "beauty", 1.0),
                                                   _row("sasrec_ce/seed42", "beauty", 15.0)]}
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(doc))
    cell = {"full": {"ndcg@10": 0.0595}, "sampled": {"ndcg@10": 0.36}}
    ensemble = lambda members: {"dataset": "beauty", "model": "ensemble--x", "seed": 42, "ensemble": True,
                                "teachers": members, "metrics": {"test": cell}}
    entries = [ensemble(["sasrec_ce/seed42", "sasrec_ce/seed43", "sasrec_ce/seed44"]),
               ensemble(["sasrec_ce/seed42", "gru4rec/seed43"]),
               {**ensemble(["sasrec_ce/seed42"]), "ensemble": False, "model": "hgn_ce--sasrec_ce"}]
    text = value_table(path, entries)
    lines = [ln for ln in text.splitlines() if ln.startswith("|") and "sum of" in ln]
    assert lines == [("| beauty | ensemble--x/seed42 (sum of 3 members) | 0.0595 | 0.3600 | 45.00x (1080 us) | "
                     "45.00x (3330 us) | 7038 k | 27.00 MiB |")]
    assert "a lower bound" in text and "a lower bound" not in value_table(path)


def test_value_table_is_empty_without_a_measurement(tmp_path) -> None:
    assert value_table(tmp_path / "latency.json") == ""


def test_the_summary_is_regenerated_from_a_committed_report(tmp_path) -> None:
    """``python -m training.report REPORT_JSON --update-readme``: the same numbers from report.json alone, in
    the tables' current form (full ranking first), into the README block."""
    from training.report import README_END, README_START, main

    cell = lambda v: {"sampled": {"ndcg@10": v, "recall@10": v}, "full": {"ndcg@10": v / 10, "recall@10": v / 5}}
    entry = lambda model, seed, v: {"dataset": "d", "model": model, "seed": seed, "best_epoch": 3, "wall_time_s": 9.0,
                                    "metrics": {"valid": cell(v), "test": cell(v)}}
    doc = {"runs": [entry("hgn_ce", 42, 0.30), entry("hgn_ce", 43, 0.32), entry("ssi_hgn_ce_gru", 42, 0.35),
                    entry("ssi_hgn_ce_gru", 43, 0.36), entry("teacher_gru_temporal", 42, 0.2)]}
    (tmp_path / "report.json").write_text(json.dumps(doc))
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{README_START}\nold\n{README_END}\nbottom\n")
    assert main([str(tmp_path / "report.json"), "--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("top\n") and text.endswith("bottom\n") and "old" not in text
    assert "| dataset | row | seeds | valid full N@10 | test full N@10 | valid sampled N@10 |" in text
    assert "| d | hgn_ce | 2 | 0.0310 ± 0.0014 |" in text  # (0.030 + 0.032) / 2, full first
    assert "| d | ssi_hgn_ce_gru − hgn_ce | 42, 43 | +0.0090 ± 0.0014 | +0.0045 ± 0.0007 |" in text
    assert "Best student alone on d (validation full N@10): `hgn_ce` 0.0310." in text


def test_figure_3_reads_the_paper_row_of_composed_runs(tmp_path) -> None:
    """Figure 3 (HGN from each task's teacher alone) is drawn from the rows' specs: the BPR HGN of one SASRec task
    teacher is the paper's single-task row, and a dataset with no SSI-HGN row gets no figure."""
    from training.report import fig3

    cell = {"ndcg@10": [0.30, 0.31]}
    rows = {("beauty", "hgn"): cell, ("beauty", "hgn--teacher_sas_global@2"): cell,
            ("toys", "hgn"): cell, ("toys", "hgn_ce--teacher_sas_global@2"): cell}
    assert fig3(rows, tmp_path / "fig3.png") and (tmp_path / "fig3.png").stat().st_size > 0
    assert not fig3({k: v for k, v in rows.items() if k[0] == "toys"}, tmp_path / "none.png")
