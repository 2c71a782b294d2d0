"""run_all --workers: the process pool (training/workers.py) on stand-in runs, and the worker command line."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tests.conftest import capturing
from training.catalogue import Run
from training.workers import run_key, run_pool

A, B, C = Run("d", "a", 42), Run("d", "b", 42), Run("d", "c", 42)  # c imitates a and b


def _pool(tmp_path: Path, script: dict[Run, str], workers: int = 2, budget: float | None = None):
    def command(r: Run) -> list[str]:
        code = script[r].replace("DONE", repr(str(tmp_path / r.model)))
        return [sys.executable, "-c", code]

    refs = {C: [A, B]}
    return run_pool([A, B, C], command, lambda r: refs.get(r, []), lambda r: (tmp_path / r.model).is_file(),
                    tmp_path / "logs", workers, budget, poll_s=0.05)


def test_a_run_starts_after_the_runs_it_imitates_and_every_run_logs(tmp_path) -> None:
    # a and b record whether c's output exists when they end; c records whether theirs did when it started
    seen = "import pathlib,sys; p=pathlib.Path(DONE); "
    script = {A: seen + "import time; time.sleep(0.3); p.write_text('ok')",
              B: seen + "p.write_text('ok')",
              C: seen + "ok=all((p.parent/n).is_file() for n in 'ab'); print('refs done', ok); p.write_text(str(ok))"}
    result = _pool(tmp_path, script)
    assert set(result.finished) == {A, B, C} and not result.failed + result.skipped + result.stopped
    assert (tmp_path / "c").read_text() == "True"
    assert "refs done True" in (tmp_path / "logs" / "d__c__seed42.log").read_text()


def test_a_failed_run_skips_its_dependants_and_names_its_log(tmp_path, caplog) -> None:
    script = {A: "import sys; print('boom: bad input'); sys.exit(3)",
              B: "import pathlib; pathlib.Path(DONE).write_text('ok')",
              C: "import pathlib; pathlib.Path(DONE).write_text('ok')"}
    with capturing(caplog, "ssi.workers", logging.ERROR):
        result = _pool(tmp_path, script)
    assert result.failed == [A] and result.finished == [B] and result.skipped == [C]
    assert not (tmp_path / "c").exists()
    assert "d/a/seed42 failed (exit 3)" in caplog.text and "boom: bad input" in caplog.text


def test_the_time_budget_stops_running_runs_and_starts_no_more(tmp_path) -> None:
    slow = "import time; time.sleep(30)"
    t0 = time.monotonic()
    result = _pool(tmp_path, {A: slow, B: slow, C: slow}, workers=2, budget=0.5)
    assert time.monotonic() - t0 < 10
    assert set(result.stopped) == {A, B} and result.skipped == [C] and not result.finished


def test_workers_bound_the_runs_at_once(tmp_path) -> None:
    # one worker: b starts only after a ended (a writes its end time, b its start time)
    script = {A: "import pathlib,time; time.sleep(0.3); pathlib.Path(DONE).write_text(repr(time.time()))",
              B: "import pathlib,time; pathlib.Path(DONE).write_text(repr(time.time()))",
              C: "import pathlib; pathlib.Path(DONE).write_text('ok')"}
    result = _pool(tmp_path, script, workers=1)
    assert result.finished == [A, B, C]
    assert float((tmp_path / "b").read_text()) >= float((tmp_path / "a").read_text())


def test_worker_command_trains_one_run_with_the_parents_options() -> None:
    from training.run_all import parse_args, worker_command

    args = parse_args(["--datasets", "beauty", "--models", "hgn_ce--sasrec_ce@0+sasrec_ce@1", "--seeds", "42", "43",
                       "--out", "o", "--device", "cuda", "--workers", "4", "--time-budget", "60", "--fresh",
                       "--teacher-set", "lr=0.01", "--teacher-set", "task_schedule=first"])
    run = Run("beauty", "hgn_ce--sasrec_ce@0+sasrec_ce@1", 43)
    cmd = worker_command(args, "cpu", run)
    text = " ".join(cmd[2:])
    assert cmd[2:4] == ["--only", run_key(run)] == ["--only", "beauty/hgn_ce--sasrec_ce@0+sasrec_ce@1/seed43"]
    for part in ("--preset cpu", "--datasets beauty", "--models hgn_ce--sasrec_ce@0+sasrec_ce@1", "--seeds 42 43",
                 "--out o", "--device cuda", "--fresh", "--no-export", "--teacher-set lr=0.01",
                 "--teacher-set task_schedule=first"):
        assert part in text
    assert "--workers" not in cmd and "--time-budget" not in cmd
    again = parse_args(cmd[2:])  # the worker's own parser reads it back
    assert again.only == run_key(run) and again.teacher_set == args.teacher_set and not again.resume


def test_only_names_a_run_of_the_plan(tmp_path) -> None:
    import pytest

    from training.run_all import main

    with pytest.raises(SystemExit, match="--only lastfm/hgn/seed7: not a run of this plan"):
        main(["--preset", "smoke", "--datasets", "lastfm", "--models", "hgn", "--out", str(tmp_path),
              "--only", "lastfm/hgn/seed7"])
    with pytest.raises(SystemExit, match="--time-budget needs --workers"):
        main(["--preset", "smoke", "--datasets", "lastfm", "--out", str(tmp_path), "--time-budget", "5"])
