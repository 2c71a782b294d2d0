"""Load-testing settings (loadtest/settings.py): flags generated from the fields, precedence, errors;
and the bench's small helpers that used to break (an empty error message, a shadowed helper)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loadtest import bench, run
from loadtest.settings import from_args
from loadtest.traffic import TrafficConfig


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith(("SSI_LOADTEST_", "SSI_BENCH_"))]:
        monkeypatch.delenv(key)


def _flags(cls, exclude=()) -> set[str]:
    return {"--" + name.replace("_", "-") for name in cls.model_fields if name not in exclude}


@pytest.mark.parametrize("module, settings", [(run, run.RunSettings), (bench, bench.BenchSettings)])
def test_every_field_has_a_flag(module, settings) -> None:
    parser = module.build_parser()
    options = {o for a in parser._actions for o in a.option_strings}
    assert _flags(settings) <= options
    assert _flags(TrafficConfig, exclude=("dataset", "rate_per_user")) <= options


def test_flag_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = run.build_parser()
    assert from_args(TrafficConfig, parser.parse_args([])).k == 10
    monkeypatch.setenv("SSI_LOADTEST_K", "7")
    monkeypatch.setenv("SSI_LOADTEST_SOAK", "true")
    assert from_args(TrafficConfig, parser.parse_args([])).k == 7
    assert from_args(TrafficConfig, parser.parse_args(["--k", "9"])).k == 9
    assert from_args(run.RunSettings, parser.parse_args([])).soak is True
    assert from_args(run.RunSettings, parser.parse_args(["--no-soak"])).soak is False


def test_bench_settings_have_their_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSI_LOADTEST_USERS", "5")  # loadtest.run's, not the bench's
    monkeypatch.setenv("SSI_BENCH_STEP_SECONDS", "3")
    s = from_args(bench.BenchSettings, bench.build_parser().parse_args(["--no-levers", "--batch-sweep", "1,8"]))
    assert s.users == "2,4,8,16,32,64" and s.step_seconds == 3.0 and s.levers is False
    assert s.numbers(s.batch_sweep) == [1, 8] and s.numbers("") == []
    assert isinstance(s.work_dir, Path)


@pytest.mark.parametrize("argv, needle", [(["--duration", "0"], "duration"), (["--k", "0"], "k"),
                                          (["--anonymous-share", "2"], "anonymous_share")])
def test_bad_values_are_one_line_errors(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert run.main([*argv, "--wait-ready", "0", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err


def test_bench_rejects_bad_values(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--step-seconds", "-1"]) == 2
    assert "step_seconds" in capsys.readouterr().err


def test_error_line_never_raises() -> None:
    assert bench.error_line(RuntimeError("")) == "RuntimeError"
    assert bench.error_line(OSError("\n  \nsecond line")) == "second line"
    assert bench.error_line(ValueError("first\nsecond")) == "first"


def test_server_batching_reads_the_running_server(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = {"batching": {"mode": "loop", "max_batch_size": 32, "max_queue_delay_ms": 1.0}}
    monkeypatch.setattr(bench, "fetch_text", lambda url, timeout: json.dumps(answer))
    assert bench.server_batching("http://127.0.0.1:1") == "batching_mode loop, max_batch_size 32, max_queue_delay 1.0 ms"
    monkeypatch.setattr(bench, "fetch_text", lambda url, timeout: None)
    assert bench.server_batching("http://127.0.0.1:1") == "default settings"


def test_levers_past_the_deadline_start_nothing(tmp_path: Path) -> None:
    """Every lever variant is built (the helper that makes them is no longer shadowed) and skipped."""
    ours = bench.ServerSpec("ours", "ours", ["python", "-m", "serving"], {"SSI_DEVICE": "cpu"}, None)
    settings = from_args(bench.BenchSettings, bench.build_parser().parse_args([]))
    out = bench.run_levers({"ours": ours}, tmp_path, 10, TrafficConfig(), 4, settings, tmp_path, lambda m: None,
                           deadline=0.0)
    rows = out["rows"]
    assert len(rows) > 5 and all(r["error"] == "skipped (time budget)" for r in rows)
    assert rows[0]["lever"] == "default" and "k = 100 (default k = 10)" in {r["setting"] for r in rows}
