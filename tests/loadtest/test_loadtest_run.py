"""The commands end to end: --help, the loopback guard, short locust runs against a tiny floor server.

The only server is the standalone HTTP floor (no artifact, no model), started on a free loopback port by
the test and stopped by it; each locust run lasts a few seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bench import ManagedServer, ServerSpec

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _run(args: list[str], timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def test_help_entry_point() -> None:
    r = _run(["-m", "loadtest.run", "--help"])
    assert r.returncode == 0, r.stderr
    assert "usage: python -m loadtest.run" in r.stdout and "--soak" in r.stdout


@pytest.mark.parametrize("module", ["loadtest.run", "loadtest.bench", "loadtest.baselines.floor",
                                    "loadtest.baselines.naive", "loadtest.baselines.ours",
                                    "loadtest.baselines.untrained_run"])
def test_help(module: str, capsys: pytest.CaptureFixture) -> None:
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(["--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_refuses_non_loopback_and_bad_bounds(tmp_path: Path) -> None:
    r = _run(["-m", "loadtest.run", "--url", "http://192.0.2.10:8000", "--duration", "1", "--out", str(tmp_path)])
    assert r.returncode == 2 and "only http://127.0.0.1" in r.stderr
    r = _run(["-m", "loadtest.run", "--url", "http://127.0.0.1:9", "--duration", "100000", "--out", str(tmp_path)])
    assert r.returncode == 2 and "duration" in r.stderr
    # nothing listens on port 9: a clear error, quickly
    r = _run(["-m", "loadtest.run", "--url", "http://127.0.0.1:9", "--duration", "1", "--wait-ready", "1",
              "--out", str(tmp_path)])
    assert r.returncode == 2 and "did not answer" in r.stderr


def test_locustfile_imports_with_fast_http_user(tiny_dataset_file: Path) -> None:
    # In a subprocess: importing locust monkey-patches the interpreter (gevent).
    code = ("import loadtest.locustfile as m; from locust import FastHttpUser; "
            "assert issubclass(m.RecommendUser, FastHttpUser); pool = m.ensure_pool(); "
            "print(len(pool), m.CONFIG.rate_per_user, m.RecommendUser.concurrency)")
    r = _run(["-c", code], env={"SSI_DATA_DIR": str(tiny_dataset_file.parent), "SSI_LOADTEST_DATASET": "Tiny",
                                "SSI_LOADTEST_POOL_SIZE": "50", "SSI_LOADTEST_RATE_PER_USER": "4"})
    assert r.returncode == 0, r.stderr
    n, rate, _ = r.stdout.split()[-3:]
    assert int(n) == 50 and float(rate) == 4.0


def _floor(tmp_path: Path, num_items: int) -> ManagedServer:
    spec = ServerSpec(f"floor{num_items}", "floor", [PY, "-m", "loadtest.baselines.floor", "--mode", "standalone",
                                                     "--num-items", str(num_items)])
    return ManagedServer(spec, tmp_path, ready_timeout=30)


def test_short_soak_against_floor(tmp_path: Path, tiny_dataset_file: Path) -> None:
    data = str(tiny_dataset_file.parent)
    with _floor(tmp_path, 40) as srv:
        out = tmp_path / "soak"
        r = _run(["-m", "loadtest.run", "--url", srv.url, "--soak", "--duration", "4", "--users", "4", "--rate", "40",
                  "--rss-slope-limit", "100000", "--sample-interval", "0.5", "--dataset", "Tiny", "--data-dir", data,
                  "--out", str(out)], timeout=90)
        pid = srv.pid
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SOAK PASS" in r.stdout and "target rate: 40 req/s" in r.stdout and "failures 0" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    agg = summary["stats"]["Aggregated"]
    assert summary["pass"] and agg["failures"] == 0 and agg["requests"] > 20
    assert summary["resources"]["rss_end_mib"] > 10  # the floor's own process, via /proc
    for name in ("report.html", "locust_stats.csv", "summary.txt", "resources.csv"):
        assert (out / name).is_file()
    with pytest.raises(OSError):
        os.kill(pid, 0)  # the server is gone


def test_wrong_answers_count_as_failures(tmp_path: Path, tiny_dataset_file: Path) -> None:
    # A server that knows only 5 items cannot return k=10 items: every full-catalogue answer is short.
    with _floor(tmp_path, 5) as srv:
        out = tmp_path / "broken"
        r = _run(["-m", "loadtest.run", "--url", srv.url, "--duration", "3", "--users", "2", "--dataset", "Tiny",
                  "--data-dir", str(tiny_dataset_file.parent), "--out", str(out)], timeout=90)
    assert r.returncode == 1, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stats"]["Aggregated"]["failures"] > 0 and not summary["pass"]
    assert "expected 10" in (out / "summary.txt").read_text()


def test_gpu_check_script_parses_and_uses_existing_options() -> None:
    """The prepared GPU script cannot run here; what it calls must exist (syntax, modules, flags)."""
    script = ROOT / "loadtest" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    bench = _run(["-m", "loadtest.bench", "--help"]).stdout
    for flag in ("--device", "--p99-limit-ms", "--batch-sweep", "--step-seconds", "--no-levers", "--work-dir",
                 "--loadgen-cpus", "--scaling"):
        assert flag in text and flag in bench, flag
    assert "-m gpu" in text and "--device cuda" in text


def test_load_generator_pinning() -> None:
    from loadtest.run import pin_command

    cmd = pin_command(["python", "-m", "locust"], "0")
    assert cmd[1:3] == ["-c", "0"] and cmd[-3:] == ["python", "-m", "locust"] and cmd[0].endswith("taskset")
    with pytest.raises(ValueError, match="bad CPU list"):
        pin_command(["x"], "zero")
    with pytest.raises(ValueError, match="may not use"):
        pin_command(["x"], "4096")
    from loadtest.bench import BenchSettings

    assert BenchSettings(loadgen_cpus="").pinned_cpus() == ""
    assert BenchSettings(loadgen_cpus="1").pinned_cpus() == "1"
    auto = BenchSettings().pinned_cpus()
    assert auto == ("" if len(os.sched_getaffinity(0)) < 2 else str(min(os.sched_getaffinity(0))))
