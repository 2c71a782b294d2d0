"""The benchmark's reference servers and report, without starting any process.

Every answer of the floor and of the naive server must pass the load generator's own checks, so the
bench compares servers that all answer correctly.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from loadtest.baselines.floor import FixedRanker, create_app
from loadtest.bench import (
    batching_between,
    compute_ratios,
    cpu_list_size,
    cpu_per_request_us,
    evaluate_targets,
    limit_of,
    load_generator_limits,
    load_note,
    paired_markdown,
    paired_summary,
    render_markdown,
    resolve_artifact,
)
from loadtest.traffic import TrafficConfig, build_pool, check_response
from serving.schemas import RecommendRequest


def _pool(tiny_dataset_file: Path, n: int = 300):
    cfg = TrafficConfig(dataset="Tiny", data_dir=str(tiny_dataset_file.parent), pool_size=n, batch_share=0.1,
                        candidates_share=0.2, cold_share=0.05, unknown_share=0.05, num_candidates=10, k=5)
    return build_pool(cfg)


def _answer_all(answer, req) -> dict:
    """Run ``answer`` (one RecommendRequest -> dict) over a prepared request (single or batch)."""
    body = json.loads(req.body)
    if req.is_batch:
        return {"results": [answer(RecommendRequest(**r)) for r in body["requests"]]}
    return answer(RecommendRequest(**body))


def test_fixed_ranker_answers_pass_the_checks(tiny_dataset_file: Path) -> None:
    pool, n = _pool(tiny_dataset_file)
    ranker = FixedRanker(n)
    for req in pool:
        assert check_response(req, _answer_all(ranker.answer, req)) is None


@pytest.mark.parametrize("json_mode", ["model", "orjson"])
def test_standalone_floor_app(tiny_dataset_file: Path, json_mode: str) -> None:
    pool, n = _pool(tiny_dataset_file, 60)
    with TestClient(create_app(n, "standalone", json_mode)) as client:
        assert client.get("/health/ready").status_code == 200
        assert "process_resident_memory_bytes" in client.get("/metrics").text
        for req in pool:
            r = client.post(req.path, content=req.body, headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            assert check_response(req, r.json()) is None
        bad = client.post("/recommend", json={"history": [1], "k": 0})
        assert bad.status_code == 422
        unknown = client.post("/recommend", json={"history": [n + 5], "k": 2})
        assert unknown.status_code == 422


def test_serving_mode_floor_answers_before_the_real_routes() -> None:
    # Without the lifespan no model is loaded: the real /recommend would answer 503, the floor answers 200.
    client = TestClient(create_app(100, "serving"))
    r = client.post("/recommend", json={"history": [1, 2, 3], "k": 4})
    assert r.status_code == 200, r.text
    assert r.json() == {"items": [4, 5, 6, 7], "scores": [1.0, 0.5, 1 / 3, 0.25], "model": "floor",
                        "fallback": False}
    r = client.post("/recommend/batch", json={"requests": [{"history": [], "k": 2}]})
    assert r.status_code == 200 and r.json()["results"][0]["fallback"] is True
    assert client.get("/health/live").status_code == 200
    assert client.post("/recommend", json={"history": [1], "k": 0}).json()["error"] == "validation_error"
    assert 'endpoint="/recommend"' in client.get("/metrics").text  # the real app's metrics middleware


def test_naive_server_answers_pass_the_checks(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from loadtest.baselines.naive import NaiveRecommender
    from loadtest.baselines.untrained_run import write_untrained_run

    # the stored negatives need >= 99 unseen items per user: a 150-item catalogue
    rng = np.random.default_rng(0)
    lines = [f"{u} " + " ".join(str(int(i)) for i in rng.integers(1, 151, size=int(rng.integers(5, 25))))
             for u in range(1, 41)]
    (tmp_path / "Small.txt").write_text("\n".join([*lines, "41 1 2 150"]) + "\n")
    data = str(tmp_path)
    run_dir = write_untrained_run("Small", "hgn", "smoke", tmp_path / "runs", data_dir=data)
    assert json.loads((run_dir / "run.json").read_text())["untrained"] is True
    assert "test" in json.loads((run_dir / "metrics.json").read_text())
    rec = NaiveRecommender(run_dir, data)
    cfg = TrafficConfig(dataset="Small", data_dir=data, pool_size=200, batch_share=0.1, candidates_share=0.2,
                        cold_share=0.05, unknown_share=0.05, num_candidates=10, k=5)
    pool, _ = build_pool(cfg)
    for req in pool:
        assert check_response(req, _answer_all(rec.answer, req)) is None
    # the naive path ranks by the model's own scores
    out = rec.answer(RecommendRequest(history=[1, 2, 3], k=3, exclude_seen=False, user_id=2))
    assert out["scores"] == sorted(out["scores"], reverse=True) and not out["fallback"]


def test_resolve_artifact(tmp_path: Path) -> None:
    art = tmp_path / "hgn" / "v1"
    art.mkdir(parents=True)
    (art / "manifest.json").write_text("{}")
    (tmp_path / "latest").write_text("hgn/v1\n")
    assert resolve_artifact(tmp_path) == art
    assert resolve_artifact(art) == art
    with pytest.raises(SystemExit):
        resolve_artifact(tmp_path / "hgn")


def _step(users: int, rps: float, p99: float, failures: int = 0) -> dict:
    return {"users": users, "rate": 0.0, "rps": rps, "p50_ms": p99 / 3, "p95_ms": p99 / 1.5, "p99_ms": p99,
            "p999_ms": p99 * 2, "requests": int(rps * 8), "failures": failures, "server_cpu": 0.9,
            "machine_cpu": 1.0, "loadgen_cpu": 0.5}


def test_render_markdown() -> None:
    config = {"cpus": 2, "artifact_name": "hgn/v1", "model": "hgn", "num_items": 3646, "dim": 51,
              "dataset": "lastfm", "k": 10, "anonymous_share": 0.3, "exclude_seen_share": 0.5,
              "candidates_share": 0.1, "batch_share": 0.05, "batch_size": 8, "cold_share": 0.02,
              "step_seconds": 8.0, "p99_limit_ms": 50.0, "moderate_rate": 200.0, "moderate_seconds": 12.0,
              "lever_seconds": 8.0, "loadgen_cpus": "0"}
    res = {
        "started": "now", "config": config, "notes": ["a note"],
        "servers": [
            {"label": "floor", "steps": [_step(8, 1000, 20)], "best": _step(8, 1000, 20),
             "moderate": {**_step(20, 200, 10), "rate": 200.0}},
            {"label": "naive", "steps": [], "error": "boom"},
            {"label": "ours", "steps": [_step(8, 900, 30, 1)], "best": None, "moderate": None},
        ],
        "ratios": {"ours_over_floor": 0.9},
        "breakdown": {"requests": 10, "failures": 0, "stages": {"queue": {"mean_us": 100.0, "p50_us": 90.0}},
                      "server_total": {"mean_us": 500.0, "p50_us": 450.0}, "rest": {"mean_us": 400.0,
                                                                                   "covers": ["parse"]},
                      "client_rtt_p50_us": 700.0, "client_rtt_p99_us": math.nan},
        "levers": {"users": 8, "rows": [{"lever": "x", "setting": "y", **_step(8, 800, 25), "relative": 0.8},
                                         {"lever": "z", "setting": "w", "error": "skipped (time budget)"}]},
        "scaling": {"loadgen_cpus": "0", "rows": [
            {"workers": 1, "best": _step(8, 1000, 20), "peak": 1100.0, "relative": 1.0},
            {"workers": 2, "error": "server did not start"}]},
        "sweep": {"device": "cuda", "rows": [
            {"mode": "thread", "max_batch_size": 32, "best": _step(16, 2400, 9), "mean_batch": 11.5},
            {"mode": "thread", "max_batch_size": 1, "best": None},
            {"mode": "thread", "max_batch_size": 8, "error": "server did not start"}]},
    }
    res["servers"][0]["limit"] = limit_of({**_step(8, 1000, 20), "server_cpu": 0.5, "loadgen_cpu": 0.97}, 2, "0")
    res["targets"] = evaluate_targets(res)
    md = render_markdown(res)
    assert "Batch-size sweep (ours, device cuda; max throughput at p99 <= 50 ms" in md
    assert "| thread | 32 | 2400 | 16 | 3 / 9 | 11.5 |" in md
    assert "| thread | 1 | no step under the limit |" in md and "| thread | 8 | server did not start |" in md
    assert ("| floor | 1000 | 8 | 7 / 20 | 1000 | 3 / 10 | 4500 | 0 | load generator (locust 0.97 of 1 core, server "
            "0.50 of 1) |") in md  # 0.9 cores / 200 req/s = 4.5 ms
    assert "error: boom" in md and "| ours | none |" in md
    assert "| max throughput at the p99 limit (targets: >= 0.8, >= 4) | 0.90 | n/a |" in md
    assert "| 1 | 1000 | 8 | 7 / 20 | 0.90 | 1100 | 1.00x | - |" in md and "| 2 | server did not start |" in md
    assert "load generator pinned to CPU 0 (taskset)" in md
    assert "| single request, server total (mean, batch 1) | <= 500 us | 500 us | yes |" in md
    assert "| single request, queue wait (mean, idle server) | near 0 (<= 100 us) | 100 us | yes |" in md
    assert "| ours / naive, max req/s at the p99 limit | >= 4 | n/a | n/a |" in md
    assert "| queue | 100 | 90 |" in md and "0.80x" in md and "skipped (time budget)" in md and "- a note" in md


def test_compute_ratios() -> None:
    servers = [
        {"name": "floor", "steps": [_step(8, 1000, 20), _step(16, 1200, 80)], "best": _step(8, 1000, 20),
         "moderate": {**_step(20, 200, 10), "server_cpu": 0.2}},
        {"name": "naive", "steps": [_step(2, 100, 90)], "best": None,
         "moderate": {**_step(20, 200, 10), "server_cpu": 0.8}},
        {"name": "ours", "steps": [_step(8, 900, 30), _step(16, 960, 60, failures=1)], "best": _step(8, 900, 30),
         "moderate": {**_step(20, 200, 10), "server_cpu": 0.25}},
    ]
    r = compute_ratios(servers)
    assert r["ours_over_floor"] == pytest.approx(0.9) and "ours_over_naive" not in r
    assert r["peak_ours_over_floor"] == pytest.approx(900 / 1200)  # a step with failures does not count
    assert r["peak_ours_over_naive"] == pytest.approx(9.0)
    assert r["cpu_ours_vs_floor"] == pytest.approx(0.8) and r["cpu_ours_vs_naive"] == pytest.approx(3.2)
    assert math.isnan(cpu_per_request_us(None)) and cpu_per_request_us(_step(8, 100, 1)) == pytest.approx(9000)


def test_targets_from_ratios_and_breakdown() -> None:
    res = {"ratios": {"ours_over_floor": 0.85, "ours_over_naive": 3.5, "cpu_ours_vs_floor": 0.5,
                      "cpu_ours_vs_floor_paired": 0.7},
           "breakdown": {"stages": {"queue": {"mean_us": 20.0}}, "server_total": {"mean_us": 600.0}}}
    met = {t["target"].split(",")[0] + t["goal"]: t["met"] for t in evaluate_targets(res)}
    assert met == {"ours / floor>= 0.8": True, "ours / naive>= 4": False, "single request<= 500 us": False,
                   "single requestnear 0 (<= 100 us)": True, "server CPU per request>= 0.67": False,
                   "the same>= 0.67": True}
    assert all(t["met"] is None for t in evaluate_targets({}))


def test_paired_rounds_summary_and_table() -> None:
    rounds = [{"round": 0, "order": ["floor", "ours"], "floor_us": 100.0, "ours_us": 250.0, "ratio": 0.4},
              {"round": 1, "order": ["ours", "floor"], "floor_us": 120.0, "ours_us": 200.0, "ratio": 0.6},
              {"round": 2, "order": ["floor", "ours"], "floor_us": 90.0, "ours_us": 180.0, "ratio": 0.5},
              {"round": 3, "order": ["ours", "floor"], "floor_us": math.nan, "ours_us": 180.0, "ratio": math.nan}]
    p = paired_summary(rounds)
    assert (p["median"], p["min"], p["max"]) == (0.5, 0.4, 0.6)  # the failed round is left out
    assert paired_summary(rounds[:2])["median"] == pytest.approx(0.5)  # even count: the middle two's mean
    assert math.isnan(paired_summary(rounds[3:])["median"])
    md = "\n".join(paired_markdown(p, {"moderate_rate": 200.0}))
    assert "| 1 | ours then floor | 120 | 200 | 0.60 |" in md and "| 3 | ours then floor | n/a | 180 | n/a |" in md
    assert "| median (min - max) | | | | 0.50 (0.40 - 0.60); target >= 0.67 |" in md
    assert paired_markdown(None, {}) == [] and "error: no floor" in paired_markdown({"error": "no floor"}, {})[1]


def test_limit_of_names_what_held_a_step() -> None:
    """locust is one process: near one core while the server has CPU left means the load generator held it."""
    assert limit_of({"loadgen_cpu": 0.97, "server_cpu": 0.55}, 2, "0")["by"] == "load generator"
    assert limit_of({"loadgen_cpu": 0.6, "server_cpu": 0.93}, 2, "0")["by"] == "server"
    assert limit_of({"loadgen_cpu": 0.95, "server_cpu": 0.9}, 2, "0")["by"] == "both"
    assert limit_of({"loadgen_cpu": 0.4, "server_cpu": 0.5}, 2, "0")["by"] == "neither"
    assert limit_of({"loadgen_cpu": math.nan, "server_cpu": 1.9}, 2, "")["by"] == "server"  # unpinned: 2 cores
    assert limit_of({"loadgen_cpu": 0.9, "server_cpu": 1.2}, 2, "")["by"] == "load generator"
    assert limit_of(None, 2, "0") is None and cpu_list_size("0-2,5") == 4 and cpu_list_size("") == 0
    notes: list[str] = []
    res = {"servers": [{"name": "floor", "steps": [{**_step(8, 1000, 20), "loadgen_cpu": 0.98, "server_cpu": 0.5}],
                        "best": {**_step(8, 1000, 20), "loadgen_cpu": 0.98, "server_cpu": 0.5}},
                       {"name": "ours", "steps": [_step(8, 900, 30)], "best": _step(8, 900, 30)}]}
    out = load_generator_limits(res, "0", notes)
    assert out["limited_by_load_generator"] == {"floor": True, "ours": False}
    assert res["servers"][0]["limit"]["by"] in ("load generator", "both") and notes and "floor" in notes[0]


def test_fastapi_mode_floor_answers_through_the_typed_routes() -> None:
    """The floor of the earlier runs: the same fixed answers, through FastAPI's routes and response models."""
    client = TestClient(create_app(100, "fastapi"))
    assert client.app.fast_path is None
    r = client.post("/recommend", json={"history": [1, 2, 3], "k": 4})
    assert r.status_code == 200 and r.json()["items"] == [4, 5, 6, 7] and r.json()["model"] == "floor"
    assert client.post("/recommend", json={"history": [1], "k": 0}).json()["error"] == "validation_error"


def test_servers_are_pinned_to_the_cores_the_load_generator_leaves() -> None:
    from loadtest.bench import BenchSettings

    allowed = sorted(os.sched_getaffinity(0))
    auto = BenchSettings()
    if len(allowed) >= 2:
        assert auto.pinned_cpus() == str(allowed[0])
        assert auto.server_pinned_cpus() == ",".join(map(str, allowed[1:]))
    assert BenchSettings(loadgen_cpus="").server_pinned_cpus() == ""  # load generator not pinned: servers neither
    assert BenchSettings(server_cpus="").server_pinned_cpus() == ""
    assert BenchSettings(server_cpus="1").server_pinned_cpus() == "1"


def test_batching_between_reads_our_servers_histograms() -> None:
    """The moderate-rate batching figures come from two scrapes of the real server's metrics: batches of 1, 1 and 6
    requests after the first scrape (a batch of 3 before it), the model call 100, 300 and 800 us."""
    from loadtest.report import parse_prometheus
    from serving.metrics import ServingMetrics

    m = ServingMetrics()
    m.batch_size.observe(3)
    m.encode_seconds.observe(0.5)
    before = parse_prometheus(m.render().decode())
    for size, seconds in ((1, 100e-6), (1, 300e-6), (6, 800e-6)):
        m.batch_size.observe(size)
        m.encode_seconds.observe(seconds)
    got = batching_between(before, parse_prometheus(m.render().decode()))
    assert got is not None
    assert got["batches"] == 3 and got["requests"] == 8 and got["mean_batch"] == pytest.approx(8 / 3)
    assert got["share_of_batches_of_one"] == pytest.approx(2 / 3)
    assert got["model_call_us_per_batch"] == pytest.approx(400.0)
    assert got["model_call_us_per_request"] == pytest.approx(150.0)
    assert batching_between(before, before) is None  # no batch in between (and the floor has no such histogram)


def test_load_note_says_above_the_core_count_only_when_it_is() -> None:
    assert load_note(2.5, 2).startswith("above the core count")
    assert load_note(1.4, 2).startswith("at or below the core count")
    assert load_note(2.0, 2).startswith("at or below the core count")
