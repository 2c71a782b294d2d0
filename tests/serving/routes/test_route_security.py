"""The admin rule (key, else loopback-only, else 403), no server paths in any response body, strict types."""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serving_factory import DATASET, V1, make_settings, rewrite_manifest

from serving.app import create_app
from serving.security import PathRedactor, is_loopback

ADMIN_CALLS = [("/admin/reload", None), ("/eval", {"dataset": DATASET, "limit_users": 2})]


def _client(artifact_root: Path, data_dir: Path, url: str, **settings: Any) -> TestClient:
    c = TestClient(create_app(make_settings(artifact_root, data_dir, **settings)), base_url=url,
                   raise_server_exceptions=False)
    c.__enter__()
    return c


@pytest.fixture
def clients(artifact_root: Path, data_dir: Path):
    made: list[TestClient] = []

    def make(url: str = "http://127.0.0.1", **settings: Any) -> TestClient:
        root, data = settings.pop("artifact_root", artifact_root), settings.pop("data_dir", data_dir)
        made.append(_client(root, data, url, **settings))
        return made[-1]

    yield make
    for c in made:
        c.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------ admin rule


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "recommender.internal"])
def test_admin_refused_without_a_key_on_a_public_bind(clients, host: str) -> None:
    c = clients(host=host)
    for path, body in ADMIN_CALLS:
        r = c.post(path, json=body)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"] == "admin_disabled" and "SSI_API_KEY" in r.json()["message"]
        assert host in r.json()["message"]
    assert c.post("/recommend", json={"history": [1]}).status_code == 200  # the API itself stays open
    assert c.get("/health/ready").status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_admin_open_to_local_requests_on_a_loopback_bind(clients, host: str) -> None:
    c = clients(host=host)
    assert c.post("/admin/reload").status_code == 200
    assert c.post("/eval", json={"dataset": DATASET, "limit_users": 2}).status_code == 200


def test_loopback_bind_still_refuses_requests_that_are_not_local(clients) -> None:
    """``uvicorn serving.app:app --host 0.0.0.0`` binds what uvicorn is told, whatever SSI_HOST says: a
    request that reached a public address, or came through a proxy, is not a local one."""
    remote = clients("http://10.0.0.7", host="127.0.0.1")
    assert remote.post("/admin/reload").status_code == 403
    local = clients(host="127.0.0.1")
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        r = local.post("/admin/reload", headers={header: "203.0.113.9"})
        assert r.status_code == 403 and "proxy" in r.json()["message"], header


def test_with_a_key_the_key_is_needed_on_any_bind(clients) -> None:
    for host in ("127.0.0.1", "0.0.0.0"):
        c = clients(host=host, api_key="k3y")
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"X-API-Key": "nope"}).status_code == 401
        assert c.post("/admin/reload", headers={"X-API-Key": "k3y"}).status_code == 200


@pytest.mark.parametrize(("settings", "level", "words"), [
    ({"host": "0.0.0.0"}, logging.WARNING, "are disabled (403): SSI_API_KEY is not set and host 0.0.0.0"),
    ({"host": "127.0.0.1"}, logging.WARNING, "are OPEN without a key to local requests"),
    ({"host": "0.0.0.0", "api_key": "k"}, logging.INFO, "need the X-API-Key header (SSI_API_KEY is set)"),
])
def test_the_rule_is_shown_at_startup(clients, caplog: pytest.LogCaptureFixture, settings: dict, level: int,
                                      words: str) -> None:
    with caplog.at_level(logging.INFO, logger="serving"):
        clients(**settings)
    lines = [r for r in caplog.records if "admin endpoints" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == level and words in lines[0].getMessage(), caplog.text


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LOCALHOST",
                                 "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "10.0.0.1", "localhost.example.com", "example.com"]))


# ------------------------------------------------------------------------------------------ no paths


def _no_server_path(text: str, *folders: Path) -> None:
    for folder in folders:
        for spelling in {str(folder), str(folder.resolve())}:
            assert spelling not in text, (spelling, text)
    assert not re.search(r"(?<![\w.])/(tmp|root|home|work|private|var)/", text), text


def test_reload_bodies_name_files_relative_to_the_artifact_root(clients, artifact_root: Path,
                                                                artifact_v1: Path) -> None:
    c = clients()
    version = "20270101T000000Z-newer"
    shutil.copytree(artifact_v1, artifact_root / "tiny" / version)
    rewrite_manifest(artifact_root / "tiny" / version, lambda m: m["model"].update(version=version))
    (artifact_root / "latest").write_text(f"tiny/{version}\n")
    ok = c.post("/admin/reload")
    assert ok.status_code == 200 and ok.json()["path"] == f"tiny/{version}", ok.text
    _no_server_path(ok.text, artifact_root)

    broken = "20270202T000000Z-broken"
    shutil.copytree(artifact_v1, artifact_root / "tiny" / broken)
    with open(artifact_root / "tiny" / broken / "items.npy", "ab") as f:
        f.write(b"junk")
    (artifact_root / "latest").write_text(f"tiny/{broken}\n")
    bad = c.post("/admin/reload")
    assert bad.status_code == 422 and f"tiny/{broken}/items.npy: checksum mismatch" in bad.json()["message"]
    _no_server_path(bad.text, artifact_root)

    (artifact_root / "latest").write_text("nothing/here\n")
    gone = c.post("/admin/reload")
    assert "latest: points to nothing/here, which does not exist" in gone.json()["message"], gone.text
    _no_server_path(gone.text, artifact_root)

    shutil.rmtree(artifact_root)
    root_gone = c.post("/admin/reload")
    assert "<artifact root>: artifact root does not exist" in root_gone.json()["message"], root_gone.text
    _no_server_path(root_gone.text, artifact_root)
    _no_server_path(c.get("/model").text, artifact_root)
    _no_server_path(c.get("/health/ready").text, artifact_root)


def test_eval_errors_name_no_data_folder(clients, tmp_path: Path) -> None:
    data = tmp_path / "secretdata"
    data.mkdir()
    (data / "broken.txt").write_text("1 2 3 4\n2 x y\n")
    c = clients(data_dir=data)
    r = c.post("/eval", json={"dataset": "broken"})
    assert r.status_code == 422 and "broken.txt" in r.json()["message"], r.text
    _no_server_path(r.text, data)


def test_artifact_path_outside_the_root_is_named_by_its_folder(clients, artifact_v1: Path, tmp_path: Path) -> None:
    c = clients(artifact_root=tmp_path / "elsewhere", artifact_path=artifact_v1)
    r = c.post("/admin/reload")
    assert r.status_code == 200 and r.json()["path"] == V1
    _no_server_path(r.text, artifact_v1)


def test_redactor_rewrites_only_whole_folders(tmp_path: Path) -> None:
    root = tmp_path / "serving"
    redact = PathRedactor([(root, "<artifact root>")])
    assert redact(f"{root}/hgn/v1/items.npy: bad") == "hgn/v1/items.npy: bad"
    assert redact(f"{root}: artifact root does not exist") == "<artifact root>: artifact root does not exist"
    assert redact(f"{root}-old/x and /admin/reload") == f"{root}-old/x and /admin/reload"


# ------------------------------------------------------------------------------------------ strict types


@pytest.mark.parametrize("body", [
    {"history": [1], "k": "5"}, {"history": [1], "k": True}, {"history": [1], "k": 5.5}, {"history": [1], "k": None},
    {"history": [1], "exclude_seen": "yes"}, {"history": [1], "exclude_seen": 1}, {"history": [1], "exclude_seen": None},
    {"history": [1], "user_id": "3"}, {"history": [1], "user_id": False}, {"history": [True, 2]},
    {"history": [2**53]}, {}, {"k": 5}, {"history": None}, {"history": [1], "candidates": []},
])
def test_loose_types_are_refused(client: TestClient, body: dict) -> None:
    r = client.post("/recommend", json=body)
    assert r.status_code == 422 and r.json()["error"] == "validation_error", (body, r.text)
    assert "Traceback" not in r.text


def test_integral_numbers_are_integers(client: TestClient) -> None:
    """JSON Schema (and so the OpenAPI schema) calls 5.0 an integer: the server must not refuse it."""
    a = client.post("/recommend", json={"history": [1, 2], "k": 5}).json()
    b = client.post("/recommend", json={"history": [1.0, 2], "k": 5.0}).json()
    assert a == b and len(a["items"]) == 5


def test_eval_types_are_strict(client: TestClient) -> None:
    for body in ({"dataset": DATASET, "limit_users": "5"}, {"dataset": DATASET, "limit_users": True}):
        assert client.post("/eval", json=body).status_code == 422, body


def test_openapi_states_the_server_limits(make_client, artifact_root: Path) -> None:
    spec = make_client(artifact_root, max_k=7, max_candidates=9).get("/openapi.json").json()
    rec = spec["components"]["schemas"]["RecommendRequest"]
    assert rec["properties"]["k"]["maximum"] == 7 and rec["required"] == ["history"]
    (array,) = [s for s in rec["properties"]["candidates"]["anyOf"] if s.get("type") == "array"]
    assert (array["minItems"], array["maxItems"]) == (1, 9)
    admin = spec["paths"]["/admin/reload"]["post"]["responses"]
    assert {"401", "403"} <= set(admin)
