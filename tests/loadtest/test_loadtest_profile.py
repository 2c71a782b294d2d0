"""``loadtest.profile``'s pure parts: the /proc readers behind its thread table, and the stage rules."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from loadtest.profile import ThreadUsage, classify, main, parse_stat, parse_switches, thread_usage, usage_rows


def test_parse_stat_comm_with_spaces_and_parentheses() -> None:
    # fields 3.. after the comm: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    line = "4242 (a (b) c) S 1 2 3 4 5 6 77 0 0 0 250 50 0 0 20 0 1 0 100"
    name, user, system, faults = parse_stat(line, ticks=100.0)
    assert (name, user, system, faults) == ("a (b) c", 2.5, 0.5, 77)


def test_parse_switches() -> None:
    text = "Name:\tpython\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n"
    assert parse_switches(text) == (12, 3)
    assert parse_switches("Name:\tx\n") == (0, 0)


def test_usage_rows_per_request_busy_threads_first() -> None:
    before = {"1": ThreadUsage("python", 1.0, 0.5, 10, 100, 1), "2": ThreadUsage("pool", 0.0, 0.0, 0, 0, 0)}
    after = {"1": ThreadUsage("python", 1.2, 0.6, 14, 120, 1), "2": ThreadUsage("pool", 0.4, 0.0, 0, 0, 0),
             "3": ThreadUsage("idle", 0.0, 0.0, 0, 0, 0)}
    rows = usage_rows(before, after, requests=1000)
    assert [r["thread"] for r in rows] == ["pool (2)", "python (1)", "all 3 threads"]
    assert rows[0]["cpu_us"] == pytest.approx(400.0)
    assert rows[1]["user_us"] == pytest.approx(200.0) and rows[1]["system_us"] == pytest.approx(100.0)
    assert rows[1]["voluntary_switches"] == pytest.approx(0.02) and rows[1]["minor_faults"] == pytest.approx(0.004)
    assert rows[-1]["cpu_us"] == pytest.approx(700.0)


def test_usage_rows_without_threads() -> None:
    assert usage_rows({}, {}, 10) == [{"thread": "no threads seen"}]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_thread_usage_of_this_process_sees_a_busy_thread() -> None:
    import os

    done = threading.Event()

    def busy() -> None:
        x = 0
        while not done.is_set():
            x += 1

    t = threading.Thread(target=busy, name="busy-test")
    before = thread_usage(os.getpid())
    t.start()
    try:
        done.wait(0.3)
        after = thread_usage(os.getpid())
    finally:
        done.set()
        t.join()
    assert str(threading.get_native_id()) in before  # the main thread is one of the tasks
    rows = usage_rows(before, after, requests=1)
    assert any(r["thread"].endswith(f"({t.native_id})") and r["cpu_us"] > 0 for r in rows)  # the spinning thread


def test_thread_usage_of_a_missing_process(tmp_path: Path) -> None:
    assert thread_usage(999_999_999, proc=tmp_path) == {}


def test_classify_onnx_runtime_under_scoring_is_search() -> None:
    stack = "main (serving/__main__.py:1);rank (serving/scoring.py:386);run (onnxruntime/capi/x.py:1)"
    assert classify(stack).startswith("search")
    assert classify("f (uvicorn/protocols/http/httptools_impl.py:1)").startswith("HTTP protocol")


def test_help_names_the_fixed_rate(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--req-rate" in out and "--server-cpus" in out


def test_negative_rate_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--artifact", sys.executable, "--req-rate", "-1"])
    assert e.value.code == 2
    assert "--req-rate" in capsys.readouterr().err
