"""Traffic generation and the answer checks (pure; no server, no locust)."""
from __future__ import annotations

import json
import os
import random

import pytest

from loadtest.traffic import (
    BATCH_PATH,
    RECOMMEND_PATH,
    Expectation,
    TrafficConfig,
    build_pool,
    build_pool_from_histories,
    check_recommendation,
    check_response,
    sample_length,
)


def _histories(n: int = 50, items: int = 40) -> list[list[int]]:
    rng = random.Random(1)
    return [[rng.randint(1, items) for _ in range(rng.randint(1, 30))] for _ in range(n)]


def _good(exp: Expectation) -> dict:
    """A correct answer for ``exp``."""
    pool = sorted(exp.candidates) if exp.candidates is not None else range(1, exp.num_items + 1)
    items = [i for i in pool if i not in exp.excluded][: exp.k]
    out = {"items": items, "scores": [1.0 / (1 + r) for r in range(len(items))], "model": "m",
           "fallback": exp.fallback}
    if exp.dropped_unknown is not None:
        out["dropped_unknown"] = exp.dropped_unknown
    return out


def test_config_env_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SSI_LOADTEST_")]:
        monkeypatch.delenv(key)
    default = TrafficConfig()
    cfg = TrafficConfig(dataset="beauty", data_dir="/d", k=20, anonymous_share=0.1, batch_share=0.0,
                        rate_per_user=2.5, check="shape", seed=7)
    env = cfg.to_env()
    assert env["SSI_LOADTEST_DATA_DIR"] == "/d" and env["SSI_LOADTEST_K"] == "20"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert TrafficConfig() == cfg  # what a locust worker process reads
    assert TrafficConfig(k=3).k == 3  # an argument beats the environment
    assert cfg.replace(k=5) == TrafficConfig(**{**cfg.model_dump(), "k": 5})
    monkeypatch.setenv("SSI_LOADTEST_K", "")  # empty = unset
    assert TrafficConfig().k == default.k


@pytest.mark.parametrize("bad", [{"anonymous_share": 1.5}, {"k": 0}, {"check": "nope"}, {"rate_per_user": -1},
                                 {"batch_size": 0}])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        TrafficConfig(**bad)


def test_sample_length_bounds_and_mix() -> None:
    rng = random.Random(0)
    lengths = [sample_length(rng, 100, 50) for _ in range(2000)]
    assert min(lengths) == 1 and max(lengths) <= 50
    assert sum(1 for n in lengths if n <= 5) > 300  # many short ones
    assert sum(1 for n in lengths if n >= 25) > 100  # and some long ones
    assert sample_length(rng, 1, 50) == 1


def test_pool_shares_and_payloads() -> None:
    cfg = TrafficConfig(pool_size=3000, anonymous_share=0.3, exclude_seen_share=0.5, candidates_share=0.1,
                        batch_share=0.05, cold_share=0.02, unknown_share=0.02, num_candidates=20, seed=3)
    hist = _histories()
    pool = build_pool_from_histories(hist, list(range(1, len(hist) + 1)), [1] * len(hist), 40, cfg)
    assert len(pool) == 3000
    batches = [r for r in pool if r.is_batch]
    assert 0.02 < len(batches) / len(pool) < 0.08
    singles = [json.loads(r.body) for r in pool if not r.is_batch]
    assert all(set(p) <= {"history", "k", "exclude_seen", "user_id", "candidates", "unknown_items"} for p in singles)
    anon = sum("user_id" not in p for p in singles) / len(singles)
    assert 0.2 < anon < 0.4
    cands = [p for p in singles if "candidates" in p]
    assert 0.05 < len(cands) / len(singles) < 0.15
    assert all(len(p["candidates"]) == 20 == len(set(p["candidates"])) for p in cands)
    assert any(p["history"] == [] for p in singles)
    assert all(p["user_id"] >= 1 for p in singles if "user_id" in p)
    for r in batches:
        body = json.loads(r.body)
        assert r.path == BATCH_PATH and len(body["requests"]) == cfg.batch_size == len(r.expect)
    assert {r.path for r in pool} == {RECOMMEND_PATH, BATCH_PATH}
    # every prepared request has an answer that passes, built from its own expectations
    for r in pool:
        data = {"results": [_good(e) for e in r.expect]} if r.is_batch else _good(r.expect[0])
        assert check_response(r, data) is None


def test_build_pool_from_dataset(tiny_dataset_file) -> None:
    cfg = TrafficConfig(dataset="Tiny", data_dir=str(tiny_dataset_file.parent), pool_size=100)
    pool, n = build_pool(cfg)
    from protocol import load_dataset

    assert n == load_dataset("Tiny", tiny_dataset_file.parent).num_items and len(pool) == 100
    for r in pool:
        for p in json.loads(r.body).get("requests", [json.loads(r.body)]):
            assert all(isinstance(i, int) for i in p["history"])


@pytest.mark.parametrize("mutate, reason", [
    (lambda a: (a["items"].pop(), a["scores"].pop()), "items, expected"),
    (lambda a: a["scores"].pop(), "scores"),
    (lambda a: a["scores"].reverse(), "sorted"),
    (lambda a: a["items"].__setitem__(1, a["items"][0]), "duplicate"),
    (lambda a: a["items"].__setitem__(0, 999), "out of range"),
    (lambda a: a["items"].__setitem__(0, 3), "seen item"),
    (lambda a: a.pop("model"), "model"),
    (lambda a: a.__setitem__("fallback", True), "fallback"),
    (lambda a: a["items"].__setitem__(0, "7"), "not an integer"),
    (lambda a: a["scores"].__setitem__(0, float("nan")), "finite"),
])
def test_wrong_answers_are_caught(mutate, reason: str) -> None:
    exp = Expectation(k=5, num_items=40, excluded=frozenset({3}))
    ans = _good(exp)
    assert check_recommendation(exp, ans) is None
    mutate(ans)
    err = check_recommendation(exp, ans)
    assert err is not None and reason in err


def test_candidates_and_small_catalogue() -> None:
    exp = Expectation(k=10, num_items=40, excluded=frozenset({1, 2}), candidates=frozenset({1, 2, 3, 4}))
    assert exp.expected_len == 2
    assert check_recommendation(exp, {"items": [3, 4], "scores": [2.0, 1.0], "model": "m", "fallback": False}) is None
    err = check_recommendation(exp, {"items": [3, 5], "scores": [2.0, 1.0], "model": "m", "fallback": False})
    assert err and "outside the candidates" in err
    assert Expectation(k=10, num_items=4, excluded=frozenset({1, 99})).expected_len == 3


def test_unknown_items_count_is_checked() -> None:
    exp = Expectation(k=2, num_items=40, dropped_unknown=1)
    ans = _good(exp)
    assert check_recommendation(exp, ans) is None
    ans["dropped_unknown"] = 0
    assert "dropped_unknown" in check_recommendation(exp, ans)


def test_batch_shape_is_checked() -> None:
    hist = _histories(5)
    cfg = TrafficConfig(pool_size=200, batch_share=1.0, batch_size=3)
    req = build_pool_from_histories(hist, None, None, 40, cfg)[0]
    good = {"results": [_good(e) for e in req.expect]}
    assert check_response(req, good) is None
    assert "results" in check_response(req, {"items": []})
    assert "got 2" in check_response(req, {"results": good["results"][:2]})
    bad = {"results": [*good["results"][:2], {"items": [], "scores": [], "model": "m", "fallback": False}]}
    assert "batch[2]" in check_response(req, bad)


def test_shape_mode_skips_content_checks() -> None:
    exp = Expectation(k=2, num_items=40, excluded=frozenset({1}))
    ans = {"items": [1, 1], "scores": [1.0, 0.5], "model": "m", "fallback": False}
    assert check_recommendation(exp, ans, "shape") is None
    assert check_recommendation(exp, ans, "full") is not None
