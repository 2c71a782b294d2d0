"""``python -m serving``: --help, clean one-line failures on bad artifacts/settings, and a real start."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serving_factory import V1

from protocol.data import resolve_data_dir
from serving.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def run_main(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SSI_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "serving", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env, check=False)


def test_help() -> None:
    out = run_main("--help")
    assert out.returncode == 0
    for flag in ("--artifact-root", "--max-batch-size", "--max-queue-delay-ms", "--device", "--api-key", "--max-k"):
        assert flag in out.stdout, flag


def _one_clean_line(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_missing_artifact_root_fails_cleanly(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    _one_clean_line(run_main("--artifact-root", str(missing)), str(missing), "does not exist")


def test_corrupt_artifact_fails_cleanly(artifact_root: Path) -> None:
    items = artifact_root / "tiny" / V1 / "items.npy"
    items.write_bytes(items.read_bytes()[:-8] + b"\0" * 8)
    _one_clean_line(run_main("--artifact-root", str(artifact_root)), str(items), "checksum mismatch")


def test_corrupt_artifact_via_env_fails_cleanly(artifact_root: Path) -> None:
    (artifact_root / "tiny" / V1 / "encoder.onnx").unlink()
    out = run_main(env={"SSI_ARTIFACT_ROOT": str(artifact_root)})
    _one_clean_line(out, "encoder.onnx", "missing file")


UVICORN_ENTRY_POINTS = [["--factory", "serving.app:create_app"], ["serving.app:app"]]


@pytest.mark.parametrize("entry", UVICORN_ENTRY_POINTS, ids=["factory", "app"])
def test_uvicorn_entry_point_fails_cleanly(tmp_path: Path, entry: list[str]) -> None:
    missing = tmp_path / "nothing-here"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSI_")}
    env["SSI_ARTIFACT_ROOT"] = str(missing)
    out = subprocess.run([sys.executable, "-m", "uvicorn", *entry, "--port", "0"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"cannot start: {missing}: artifact root does not exist" in out.stderr


def test_importing_the_app_module_builds_no_app() -> None:
    """``serving.app`` builds nothing at import (no settings read, no metrics registry); ``app`` is made on
    first access, once."""
    code = ("import serving.app as m, sys; built = 'app' in vars(m); a = m.app; "
            "sys.stdout.write(f'{built} {a is m.app} {type(a).__name__}')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSI_")}
    env["SSI_ARTIFACT_ROOT"] = "/nonexistent"  # building the app must not need the artifact (lifespan does)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "False True ServingApp"  # FastAPI with the /recommend fast path


def test_uvicorn_factory_serves(artifact_root: Path, data_dir: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSI_")}
    env.update({"SSI_DATA_DIR": str(data_dir), "SSI_ARTIFACT_ROOT": str(artifact_root), "SSI_LOG_LEVEL": "warning"})
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "serving.app:create_app", "--port",
                             str(port), "--log-level", "warning"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}")
        r = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"history": [1, 2, 3], "k": 5})
        assert r.status_code == 200 and r.json()["model"] == V1 and len(r.json()["items"]) == 5
    finally:
        proc.terminate()
        proc.wait(15)


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.1)


def test_invalid_setting_fails_cleanly() -> None:
    out = run_main("--max-k", "5000")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "max_k" in out.stderr


def test_settings_from_env_and_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSI_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("SSI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SSI_API_KEY", "abc")
    s = Settings(_cli_parse_args=["--port", "9001", "--device", "cpu"])
    assert (s.max_batch_size, s.port, s.device, s.data_dir) == (7, 9001, "cpu", tmp_path)
    assert s.api_key is not None and s.api_key.get_secret_value() == "abc"
    monkeypatch.delenv("SSI_DATA_DIR")
    monkeypatch.setenv("SSI_API_KEY", "")
    s = Settings()
    assert s.data_dir is None and s.data_folder == resolve_data_dir() and s.api_key is None  # the one rule
    with pytest.raises(ValueError):
        Settings(max_k=1001)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_start_serves_and_reports_ready(artifact_root: Path, data_dir: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSI_")}
    env.update({"SSI_DATA_DIR": str(data_dir), "SSI_LOG_LEVEL": "warning"})
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--artifact-root", str(artifact_root), "--port",
                             str(port), "--device", "cpu"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.1)
        r = httpx.post(f"{url}/recommend", json={"history": [1, 2, 3], "k": 5})
        assert r.status_code == 200 and r.json()["model"] == V1 and len(r.json()["items"]) == 5
        assert httpx.get(f"{url}/model").json()["encoder"]["providers"] == ["CPUExecutionProvider"]
        # `make run` binds 127.0.0.1 without a key: admin endpoints work for the local user, with a warning
        assert httpx.post(f"{url}/eval", json={"dataset": "tiny", "protocol": "full"}).json()["matches"] is True
        assert httpx.post(f"{url}/admin/reload", timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
    assert "admin endpoints (POST /admin/reload and POST /eval) are OPEN without a key" in proc.stderr.read()
