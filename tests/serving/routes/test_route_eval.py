"""POST /eval: the served path reproduces the artifact's training-time metrics; guards and concurrency."""
from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_factory import DATASET, V1, rewrite_manifest, write_dataset

TOL = 1e-4


def _check_equal(client: TestClient, folder: Path, split: str, protocol: str) -> None:
    r = client.post("/eval", json={"dataset": DATASET, "split": split, "protocol": protocol})
    assert r.status_code == 200, r.text
    body = r.json()
    want = json.loads((folder / "manifest.json").read_text())["metrics"][split][protocol]
    assert set(body["metrics"]) == set(want)
    for key, value in want.items():
        assert abs(body["metrics"][key] - value) <= TOL, (key, body["metrics"][key], value)
    assert body["matches"] is True and body["max_abs_diff"] <= TOL and body["expected"] == want
    assert any(v > 0 for v in body["metrics"].values())  # not a degenerate all-zero comparison


@pytest.mark.parametrize("split", ["test", "valid"])
@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_eval_equals_manifest_metrics_user_model(client: TestClient, artifact_v1: Path, split: str,
                                                 protocol: str) -> None:
    _check_equal(client, artifact_v1, split, protocol)


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_eval_equals_manifest_metrics_id_map_model(client_v2: TestClient, artifact_v2: Path, protocol: str) -> None:
    _check_equal(client_v2, artifact_v2, "test", protocol)


def test_eval_detects_wrong_manifest_metrics(make_client, artifact_root: Path) -> None:
    folder = artifact_root / "tiny" / V1
    rewrite_manifest(folder, lambda m: m["metrics"]["test"]["full"].update({"ndcg@10": 0.9}))
    c = make_client(artifact_root)
    body = c.post("/eval", json={"dataset": DATASET, "protocol": "full"}).json()
    assert body["matches"] is False and body["max_abs_diff"] > 0.5


def test_eval_limit_users(client: TestClient) -> None:
    body = client.post("/eval", json={"dataset": DATASET, "limit_users": 10}).json()
    assert body["users"] == 10 and body["expected"] is None and body["matches"] is None


@pytest.mark.parametrize("name", ["../data/tiny", "/etc/passwd", "tiny.txt", "tiny/..", "", "a" * 65, "~root"])
def test_eval_never_takes_a_path(client: TestClient, name: str) -> None:
    r = client.post("/eval", json={"dataset": name})
    assert r.status_code == 422 and r.json()["message"]


def test_eval_unknown_dataset(client: TestClient) -> None:
    r = client.post("/eval", json={"dataset": "beauty"})
    assert r.status_code == 404 and "beauty" in r.json()["message"]
    # the data folder (a temporary folder here, outside the working folder) is named by its label, with
    # the datasets that are there
    assert "data folder <data folder>" in r.json()["message"] and f"datasets there: {DATASET}" in r.json()["message"]


def test_eval_404_names_a_relative_data_folder(make_client, artifact_root: Path, data_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder it looked in, as the operator spelled it (relative to the working folder): ``data``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    shutil.copy(data_dir / f"{DATASET}.txt", tmp_path / "data")
    c = make_client(artifact_root, data_dir=Path("data"))
    body = c.post("/eval", json={"dataset": "beauty"}).json()
    assert body["error"] == "dataset_not_found"
    assert "in the server's data folder data; datasets there: tiny" in body["message"], body
    assert str(tmp_path) not in body["message"]
    empty = make_client(artifact_root, data_dir=Path("nowhere"))
    body = empty.post("/eval", json={"dataset": DATASET}).json()
    assert "data folder nowhere, which does not exist" in body["message"], body


@pytest.mark.parametrize("body", [{"dataset": DATASET, "split": "train"}, {"dataset": DATASET, "protocol": "all"},
                                  {"dataset": DATASET, "limit_users": 0}, {"dataset": 5}, {}])
def test_eval_bad_fields(client: TestClient, body: dict) -> None:
    assert client.post("/eval", json=body).status_code == 422


def test_eval_dataset_checksum_mismatch(make_client, artifact_root: Path, tmp_path: Path) -> None:
    other = tmp_path / "otherdata"
    other.mkdir()
    write_dataset(other, seed=99)  # same name, different content
    c = make_client(artifact_root, data_dir=other)
    r = c.post("/eval", json={"dataset": DATASET})
    assert r.status_code == 409 and r.json()["error"] == "dataset_mismatch" and "sha256" in r.json()["message"]


def test_eval_negatives_checksum_mismatch(make_client, artifact_root: Path, data_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "copy"
    other.mkdir()
    shutil.copy(data_dir / f"{DATASET}.txt", other)
    lines = (data_dir / f"{DATASET}_sample.txt").read_text().splitlines()
    a, b = lines[0].split(), lines[1].split()
    lines[0], lines[1] = " ".join([a[0]] + a[2:] + a[1:2]), " ".join([b[0]] + b[2:] + b[1:2])  # reorder negatives
    (other / f"{DATASET}_sample.txt").write_text("\n".join(lines) + "\n")
    c = make_client(artifact_root, data_dir=other)
    r = c.post("/eval", json={"dataset": DATASET, "protocol": "sampled"})
    assert r.status_code == 409 and r.json()["error"] == "negatives_mismatch"


def _slow_jobs(client: TestClient, seconds: float) -> None:
    """Make every worker job (an /eval chunk) take ``seconds`` longer."""
    batcher = client.app.state.service.batcher
    inner = batcher.run_job

    def slow(fn):
        return inner(lambda: (time.sleep(seconds), fn())[1])

    batcher.run_job = slow


def test_one_eval_at_a_time_and_recommend_keeps_flowing(make_client, artifact_root: Path) -> None:
    c = make_client(artifact_root, eval_chunk_users=4)
    _slow_jobs(c, 0.1)  # 61 users / 4 per job -> about 1.6 s of eval jobs
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(c.post, "/eval", json={"dataset": DATASET})
        time.sleep(0.15)
        second = c.post("/eval", json={"dataset": DATASET})
        assert second.status_code == 409 and second.json()["error"] == "eval_in_progress"
        latencies = []
        while not running.done():
            t0 = time.perf_counter()
            assert c.post("/recommend", json={"history": [1, 2]}).status_code == 200
            latencies.append(time.perf_counter() - t0)
        first = running.result(30)
    assert first.status_code == 200 and first.json()["matches"] is True
    assert len(latencies) >= 3 and max(latencies) < 0.6, latencies  # never waits for the whole eval
    assert c.post("/eval", json={"dataset": DATASET, "limit_users": 3}).status_code == 200  # lock released


def test_eval_needs_the_api_key_when_configured(make_client, artifact_root: Path) -> None:
    c = make_client(artifact_root, api_key="s3cret")
    assert c.post("/eval", json={"dataset": DATASET}).status_code == 401
    assert c.post("/eval", json={"dataset": DATASET}, headers={"X-API-Key": "nope"}).status_code == 401
    r = c.post("/eval", json={"dataset": DATASET, "limit_users": 5}, headers={"X-API-Key": "s3cret"})
    assert r.status_code == 200


def test_eval_runs_in_a_thread_not_on_the_loop(client: TestClient) -> None:
    seen: list[str] = []
    evaluator = client.app.state.evaluator
    inner = evaluator._evaluate

    def spy(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return inner(*args, **kwargs)

    evaluator._evaluate = spy
    assert client.post("/eval", json={"dataset": DATASET, "limit_users": 2}).status_code == 200
    assert seen and seen[0] != threading.main_thread().name and seen[0] != "serving-worker"
