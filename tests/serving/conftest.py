"""Fixtures for the serving tests (builders in serving_factory.py): data, artifacts, clients, live servers."""
from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from fastapi.testclient import TestClient
from serving_factory import NUM_ITEMS, V1, V2, build_artifact, make_settings, write_dataset

from serving.app import create_app

# TestClient requests "arrive" on the URL's host: a loopback one, as for a local user of `make run`
# (the default host 127.0.0.1 then leaves the admin endpoints open; see serving/security.py).
LOCAL_URL = "http://127.0.0.1"

# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_dataset(folder)
    return folder


@pytest.fixture(scope="session")
def artifact_v1(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A user-aware model without id map: ``root/tiny/V1`` with ``root/latest``."""
    return build_artifact(tmp_path_factory.mktemp("art1"), data_dir, V1, seed=1)


@pytest.fixture(scope="session")
def artifact_v2(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A model without users, with an id map of raw ids (strings, one int) for items 1..N."""
    ids: list[Any] = [f"sku-{i:04d}" for i in range(1, NUM_ITEMS + 1)]
    ids[4] = 777  # item 5 has an integer raw id
    return build_artifact(tmp_path_factory.mktemp("art2"), data_dir, V2, seed=2, uses_user=False, id_map=ids)


@pytest.fixture
def artifact_root(tmp_path: Path, artifact_v1: Path) -> Path:
    """A writable artifact root holding a copy of v1 (tests may add versions or break files)."""
    root = tmp_path / "serving"
    shutil.copytree(artifact_v1, root / "tiny" / V1)
    (root / "latest").write_text(f"tiny/{V1}\n")
    return root


@pytest.fixture
def make_client(data_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(root, **settings)`` -> a started TestClient (closed at teardown)."""
    clients: list[TestClient] = []

    def _make(root: Path, **overrides: Any) -> TestClient:
        folder = overrides.pop("data_dir", data_dir)
        client = TestClient(create_app(make_settings(root, folder, **overrides)), raise_server_exceptions=False,
                            base_url=LOCAL_URL)
        client.__enter__()
        clients.append(client)
        return client

    yield _make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient], artifact_root: Path) -> TestClient:
    return make_client(artifact_root)


@pytest.fixture
def client_v2(make_client: Callable[..., TestClient], artifact_v2: Path) -> TestClient:
    return make_client(artifact_v2.parent.parent)


class LiveServer:
    """A real uvicorn server for an app on 127.0.0.1 (random port), in a thread, configured as
    ``python -m serving`` configures it (``serving.server.uvicorn_config``: slow-client timeouts)."""

    def __init__(self, app: Any, **uvicorn_options: Any) -> None:
        import socket

        import uvicorn

        from serving.server import uvicorn_config

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        options = {"log_level": "warning", "lifespan": "on", **uvicorn_options}
        self.server = uvicorn.Server(uvicorn_config(app, app.state.settings, **options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture
def live_server(data_dir: Path) -> Iterator[Callable[..., LiveServer]]:
    """``live_server(root, uvicorn_options=None, **settings)`` -> a started LiveServer (stopped at teardown)."""
    servers: list[LiveServer] = []

    def _start(root: Path, uvicorn_options: dict[str, Any] | None = None, **overrides: Any) -> LiveServer:
        folder = overrides.pop("data_dir", data_dir)
        server = LiveServer(create_app(make_settings(root, folder, **overrides)), **(uvicorn_options or {})).__enter__()
        servers.append(server)
        return server

    yield _start
    for s in servers:
        s.__exit__(None, None, None)
