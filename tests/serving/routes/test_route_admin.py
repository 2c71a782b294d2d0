"""POST /admin/reload: swap to the newest artifact, keep serving on failure, auth, no failed requests."""
from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from serving_factory import V1, V2, rewrite_manifest

import serving.service


def add_version(root: Path, source: Path, name: str, version: str, point: bool = True) -> Path:
    """Copy an artifact into ``root/name/version`` (renaming its version) and point ``latest`` at it."""
    dest = root / name / version
    shutil.copytree(source, dest)
    rewrite_manifest(dest, lambda m: m["model"].update(version=version, name=name))
    if point:
        (root / "latest").write_text(f"{name}/{version}\n")
    return dest


def test_reload_swaps_to_the_newest_artifact(client: TestClient, artifact_root: Path, artifact_v2: Path) -> None:
    assert client.post("/recommend", json={"history": [1, 2]}).json()["model"] == V1
    add_version(artifact_root, artifact_v2, "tiny2", V2)
    r = client.post("/admin/reload")
    assert r.status_code == 200, r.text
    assert r.json()["previous"] == V1 and r.json()["model"] == V2 and r.json()["reloaded"] is True
    body = client.post("/recommend", json={"history": ["sku-0001", 777]}).json()
    assert body["model"] == V2 and all(isinstance(i, (str, int)) for i in body["items"])
    assert client.get("/model").json()["model"]["version"] == V2
    assert f'version="{V2}"' in client.get("/metrics").text
    assert 'ssi_reloads_total{result="ok"} 1.0' in client.get("/metrics").text


def test_failed_reload_keeps_the_old_version(client: TestClient, artifact_root: Path, artifact_v1: Path) -> None:
    broken = add_version(artifact_root, artifact_v1, "tiny", "20270101T000000Z-broken")
    with open(broken / "items.npy", "ab") as f:
        f.write(b"junk")
    r = client.post("/admin/reload")
    assert r.status_code == 422
    msg = r.json()["message"]
    assert f"still serving {V1}" in msg and "items.npy" in msg and "checksum mismatch" in msg
    assert client.post("/recommend", json={"history": [1]}).json()["model"] == V1
    assert client.get("/health/ready").status_code == 200
    (artifact_root / "latest").write_text("nothing/here\n")
    assert "does not exist" in client.post("/admin/reload").json()["message"]


def test_reload_needs_the_api_key_when_configured(make_client, artifact_root: Path) -> None:
    c = make_client(artifact_root, api_key="k3y")
    r = c.post("/admin/reload")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert c.post("/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.post("/admin/reload", headers={"X-API-Key": "k3y"}).status_code == 200
    assert c.post("/recommend", json={"history": [1]}).status_code == 200  # /recommend stays open


def test_concurrent_reloads_are_refused(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = serving.service.load_state

    def slow_load(*args, **kwargs):
        time.sleep(0.5)
        return inner(*args, **kwargs)

    monkeypatch.setattr(serving.service, "load_state", slow_load)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/admin/reload")
        time.sleep(0.15)
        second = client.post("/admin/reload")
        assert second.status_code == 409 and second.json()["error"] == "reload_in_progress"
        assert first.result(10).status_code == 200


def _hammer(post, stop: threading.Event, out: list, errors: list) -> None:
    rng = np.random.default_rng(threading.get_ident() % 2**32)
    while not stop.is_set():
        hist = rng.integers(1, 100, size=int(rng.integers(1, 12))).tolist()
        try:
            r = post("/recommend", json={"history": hist, "k": 5})
        except Exception as e:  # noqa: BLE001 - a dropped connection counts as a failure too
            errors.append(repr(e))
            continue
        if r.status_code != 200:
            errors.append((r.status_code, r.text[:200]))
        else:
            out.append(r.json()["model"])


def _reload_under_load(post, root: Path, source: Path, threads: int = 4) -> tuple[list, list]:
    stop, versions, errors = threading.Event(), [], []
    workers = [threading.Thread(target=_hammer, args=(post, stop, versions, errors)) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.3)
        for i in range(3):
            version = f"2027010{i + 1}T000000Z-load{i}"
            add_version(root, source, "tiny", version)
            r = post("/admin/reload")
            assert r.status_code == 200 and r.json()["model"] == version, r.text
            time.sleep(0.2)
        broken = add_version(root, source, "tiny", "20270201T000000Z-broken")
        (broken / "encoder.onnx").write_bytes(b"garbage")
        assert post("/admin/reload").status_code == 422
        time.sleep(0.2)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    return versions, errors


def test_no_request_fails_during_reloads_testclient(client: TestClient, artifact_root: Path,
                                                    artifact_v1: Path) -> None:
    versions, errors = _reload_under_load(client.post, artifact_root, artifact_v1)
    assert errors == []
    assert len(versions) > 10 and V1 in versions and "20270103T000000Z-load2" in versions


def test_no_request_fails_during_reloads_real_uvicorn(live_server, artifact_root: Path, artifact_v1: Path) -> None:
    server = live_server(artifact_root)
    local = threading.local()

    def post(path: str, **kw):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server.url, timeout=30)
        return local.client.post(path, **kw)

    versions, errors = _reload_under_load(post, artifact_root, artifact_v1)
    assert errors == []
    assert len(versions) > 10 and V1 in versions and "20270103T000000Z-load2" in versions
    assert httpx.get(f"{server.url}/health/ready").json()["model"] == "20270103T000000Z-load2"
