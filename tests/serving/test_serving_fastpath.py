"""The /recommend fast path (serving/fastpath.py) answers exactly as FastAPI's typed routes would: same bodies,
same status codes and error bodies, answers valid under the response model."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serving_factory import NUM_ITEMS

from serving.schemas import RecommendBatchResponse, RecommendResponse

BODIES: list[Any] = [
    {"history": [3, 7, 11, 20], "k": 10}, {"history": [3, 7], "k": 5, "exclude_seen": False},
    {"history": [1, 2], "k": 3, "user_id": 4}, {"history": [], "k": 4}, {"history": [5], "candidates": [1, 2, 3, 9]},
    {"history": [1, 999, 2], "k": 5, "unknown_items": "ignore"}, {"history": list(range(1, 120)), "k": 40},
    {"history": [1, 0, NUM_ITEMS + 1]}, {"history": [1], "k": 0}, {"history": "1 2"}, {"history": [1], "extra": 1},
    {"history": [1], "k": 101}, [1, 2, 3], "text", None, {}, {"history": [1.0, 2], "k": 5.0},
]


@pytest.fixture
def pair(make_client: Callable[..., TestClient], artifact_root: Path) -> tuple[TestClient, TestClient]:
    """(the app with the fast path, the same app answering through FastAPI's typed routes)."""
    fast = make_client(artifact_root)
    typed = make_client(artifact_root)
    typed.app.fast_path = None
    return fast, typed


@pytest.mark.parametrize("body", BODIES)
def test_same_answer_as_the_typed_route(pair: tuple[TestClient, TestClient], body: Any) -> None:
    fast, typed = pair
    a, b = fast.post("/recommend", json=body), typed.post("/recommend", json=body)
    assert (a.status_code, a.json()) == (b.status_code, b.json()), body
    assert a.headers["content-type"] == "application/json"
    if a.status_code == 200:
        RecommendResponse.model_validate_json(a.content)  # what the fast path writes is a valid response


def test_batch_same_answer_as_the_typed_route(pair: tuple[TestClient, TestClient]) -> None:
    fast, typed = pair
    good = {"requests": [b for b in BODIES[:7]]}
    a, b = fast.post("/recommend/batch", json=good), typed.post("/recommend/batch", json=good)
    assert a.status_code == 200 and a.json() == b.json()
    RecommendBatchResponse.model_validate_json(a.content)
    for bad in ({"requests": [{"history": [1]}, {"history": [1, 5000]}]}, {"requests": []}, {"requests": [{}]}):
        a, b = fast.post("/recommend/batch", json=bad), typed.post("/recommend/batch", json=bad)
        assert (a.status_code, a.json()) == (b.status_code, b.json()), bad


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json; charset=utf-8",
                                          "application/vnd.ssi+json", "application/x-www-form-urlencoded",
                                          "APPLICATION/JSON"])
@pytest.mark.parametrize("raw", [b'{"history": [1, 2], "k": 3}', b"", b"{", b'{"history": [1]} trailing', b"\xff"])
def test_bodies_and_content_types_as_fastapi_reads_them(pair: tuple[TestClient, TestClient], content_type: str | None,
                                                        raw: bytes) -> None:
    fast, typed = pair
    headers = {} if content_type is None else {"content-type": content_type}
    a = fast.post("/recommend", content=raw, headers=headers)
    b = typed.post("/recommend", content=raw, headers=headers)
    assert a.status_code in (200, 400, 422) and a.json()["message" if a.status_code != 200 else "items"]
    if raw == b"\xff" and b.status_code == 400:  # FastAPI: "error parsing the body"; here: not valid JSON
        assert a.status_code == 400
        return
    assert (a.status_code, a.json()) == (b.status_code, b.json()), (content_type, raw)


def test_get_and_unknown_paths_fall_through_to_fastapi(pair: tuple[TestClient, TestClient]) -> None:
    fast, _ = pair
    assert fast.get("/recommend").status_code == 405
    assert fast.post("/recommend/").status_code in (307, 404, 405, 422)  # FastAPI redirects to /recommend
    assert fast.post("/recommend/batchx", json={}).status_code == 404


def test_root_path_prefix_is_served(client: TestClient) -> None:
    """Behind a proxy that mounts the app under a prefix (uvicorn --root-path /api): /api/recommend is served."""
    app = client.app
    body = b'{"history": [1, 2], "k": 3}'
    sent: list[dict] = []

    async def call() -> None:
        scope = {"type": "http", "method": "POST", "path": "/api/recommend", "root_path": "/api",
                 "headers": [(b"content-type", b"application/json")], "query_string": b""}
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(call())
    assert sent[0]["status"] == 200 and b'"items"' in sent[1]["body"]


def test_unexpected_errors_are_a_json_500_and_counted(client: TestClient) -> None:
    service = client.app.state.service
    inner = service.recommend_many

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("bug")

    service.recommend_many = broken
    try:
        r = client.post("/recommend", json={"history": [1]})
    finally:
        service.recommend_many = inner
    assert r.status_code == 500 and r.json()["error"] == "internal_error" and "bug" not in r.text
    assert 'ssi_requests_total{endpoint="/recommend",method="POST",status="500"} 1.0' in client.get("/metrics").text
