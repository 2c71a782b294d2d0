"""POST /recommend and /recommend/batch through TestClient: results, fallbacks, ids, limits, bad input."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from serving_factory import MAX_LEN, NUM_ITEMS, NUM_USERS, V1, V2

from protocol import pad_left


class Reference:
    """Independent top-k: a bare ORT session + numpy over the artifact's files."""

    def __init__(self, folder: Path) -> None:
        self.manifest = json.loads((folder / "manifest.json").read_text())
        self.sess = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
        self.items = np.load(folder / "items.npy")

    def scores(self, history: list[int], user: int = 0) -> np.ndarray:
        feeds: dict[str, Any] = {"history": pad_left([np.asarray(history, dtype=np.int64)], MAX_LEN)}
        if self.manifest["encoder"]["uses_user"]:
            feeds["user"] = np.array([user], dtype=np.int64)
        q = self.sess.run(["query"], feeds)[0][0]
        return self.items @ q  # row i = item i + 1

    def topk(self, history: list[int], k: int, exclude: set[int] = frozenset(), user: int = 0) -> list[int]:
        s = self.scores(history, user)
        order = [int(i) + 1 for i in np.argsort(-s, kind="stable")]
        return [i for i in order if i not in exclude][:k]


@pytest.fixture(scope="module")
def ref(artifact_v1: Path) -> Reference:
    return Reference(artifact_v1)


def post(client: TestClient, body: Any, path: str = "/recommend"):
    return client.post(path, json=body)


# ------------------------------------------------------------------------------------------ results


def test_top_k_matches_reference_and_excludes_seen(client: TestClient, ref: Reference) -> None:
    history = [3, 7, 11, 20]
    r = post(client, {"history": history, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == V1 and body["fallback"] is False and "dropped_unknown" not in body
    assert body["items"] == ref.topk(history, 10, exclude=set(history))
    assert body["scores"] == sorted(body["scores"], reverse=True)
    s = ref.scores(history)
    np.testing.assert_allclose(body["scores"], s[np.array(body["items"]) - 1], rtol=1e-5)


def test_batch_mixing_short_and_long_exclusions_matches_reference(client: TestClient, ref: Reference) -> None:
    """Short exclusions share one index search per batch, long ones get their own deeper one."""
    long_history = list(range(NUM_ITEMS - 89, NUM_ITEMS + 1))  # 90 seen items: fetch 100 > the shared 64
    bodies = [{"history": [3, 7], "k": 10}, {"history": long_history, "k": 10},
              {"history": [5], "k": 4, "exclude_seen": False}, {"history": long_history[-40:], "k": 10}]
    results = client.post("/recommend/batch", json={"requests": bodies}).json()["results"]
    for body, got in zip(bodies, results):
        exclude = set(body["history"]) if body.get("exclude_seen", True) else set()
        assert got["items"] == ref.topk(body["history"], body["k"], exclude=exclude)


def test_exclude_seen_false_may_return_history_items(client: TestClient, ref: Reference) -> None:
    history = ref.topk([5, 6], 3)  # the model's favourite items, put into the history
    r = post(client, {"history": history, "k": 5, "exclude_seen": False})
    assert r.json()["items"] == ref.topk(history, 5)
    r = post(client, {"history": history, "k": 5})
    assert not set(r.json()["items"]) & set(history)


def test_over_fetch_still_returns_k_items_when_history_covers_the_top(client: TestClient, ref: Reference) -> None:
    history = ref.topk([1], 60)  # excludes the model's 60 best items for this history
    r = post(client, {"history": history, "k": 30})
    items = r.json()["items"]
    assert len(items) == 30 and not set(items) & set(history)
    assert items == ref.topk(history, 30, exclude=set(history))


def test_k_larger_than_what_is_left_returns_the_rest(client: TestClient) -> None:
    history = list(range(1, 101))
    r = client.post("/recommend", json={"history": history, "k": 100})
    assert r.status_code == 200
    assert sorted(r.json()["items"]) == list(range(101, NUM_ITEMS + 1))


def test_long_history_uses_the_most_recent_window(client: TestClient, ref: Reference) -> None:
    history = [int(x) for x in np.random.default_rng(0).integers(1, NUM_ITEMS + 1, size=MAX_LEN * 5)]
    a = post(client, {"history": history, "k": 10, "exclude_seen": False}).json()
    b = post(client, {"history": history[-MAX_LEN:], "k": 10, "exclude_seen": False}).json()
    assert a["items"] == b["items"] == ref.topk(history[-MAX_LEN:], 10)


def test_user_id_is_used_by_user_models(client: TestClient, ref: Reference) -> None:
    a = post(client, {"history": [1, 2], "k": 10, "user_id": 3}).json()["items"]
    assert a == ref.topk([1, 2], 10, exclude={1, 2}, user=3)
    b = post(client, {"history": [1, 2], "k": 10, "user_id": 0}).json()["items"]
    assert b == ref.topk([1, 2], 10, exclude={1, 2}, user=0)


def test_user_id_out_of_range(client: TestClient) -> None:
    r = post(client, {"history": [1], "user_id": NUM_USERS + 100})
    assert r.status_code == 422 and "user_id" in r.json()["message"]
    assert post(client, {"history": [1], "user_id": -1}).status_code == 422


def test_empty_history_is_popularity_fallback(client: TestClient, artifact_v1: Path) -> None:
    pop = np.load(artifact_v1 / "popularity.npy").tolist()
    r = post(client, {"history": [], "k": 5})
    body = r.json()
    assert r.status_code == 200 and body["fallback"] is True
    assert body["items"] == pop[:5]
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert post(client, {"history": []}).json()["items"] == pop[:10]  # default k=10
    missing = post(client, {})  # history is required: a body without it is a client bug, not a cold user
    assert missing.status_code == 422 and "history" in missing.json()["message"]


def test_empty_history_with_candidates_ranks_them_by_popularity(client: TestClient, artifact_v1: Path) -> None:
    pop = np.load(artifact_v1 / "popularity.npy").tolist()
    cands = [pop[9], pop[2], pop[5]]
    body = post(client, {"history": [], "candidates": cands, "k": 3}).json()
    assert body["fallback"] and body["items"] == [pop[2], pop[5], pop[9]]


def test_candidates_are_ranked_by_dot_product(client: TestClient, ref: Reference) -> None:
    history, cands = [4, 8, 15], [16, 23, 42, 99, 4, 16]
    r = post(client, {"history": history, "candidates": cands, "k": 10})
    body = r.json()
    s = ref.scores(history)
    want = sorted({16, 23, 42, 99}, key=lambda i: -s[i - 1])  # 4 is seen, 16 duplicated
    assert body["items"] == want
    np.testing.assert_allclose(body["scores"], [s[i - 1] for i in want], rtol=1e-5)
    body = post(client, {"history": history, "candidates": cands, "k": 2, "exclude_seen": False}).json()
    assert body["items"] == sorted({16, 23, 42, 99, 4}, key=lambda i: -s[i - 1])[:2]


# ------------------------------------------------------------------------------------------ unknown ids


def test_unknown_ids_are_named(client: TestClient) -> None:
    r = post(client, {"history": [1, 0, NUM_ITEMS + 1, -4, 2], "k": 5})
    assert r.status_code == 422
    body = r.json()
    assert body["unknown_items"] == [0, NUM_ITEMS + 1, -4]
    assert str(NUM_ITEMS + 1) in body["message"]


def test_unknown_ids_ignored_with_a_count(client: TestClient) -> None:
    a = post(client, {"history": [1, 999, 2, 1000], "k": 5, "unknown_items": "ignore"}).json()
    b = post(client, {"history": [1, 2], "k": 5}).json()
    assert a["dropped_unknown"] == 2 and a["items"] == b["items"] and a["fallback"] is False
    c = post(client, {"history": [999], "k": 5, "unknown_items": "ignore"}).json()
    assert c["fallback"] is True and c["dropped_unknown"] == 1


def test_unknown_candidates(client: TestClient) -> None:
    assert post(client, {"history": [1], "candidates": [2, 5000]}).status_code == 422
    body = post(client, {"history": [1], "candidates": [2, 5000], "unknown_items": "ignore"}).json()
    assert body["items"] == [2] and body["dropped_unknown"] == 1


def test_string_ids_are_unknown_without_id_map(client: TestClient) -> None:
    r = post(client, {"history": ["1", "a"]})
    assert r.status_code == 422 and r.json()["unknown_items"] == ["1", "a"]


def test_raw_ids_with_id_map(client_v2: TestClient, artifact_v2: Path) -> None:
    ref = Reference(artifact_v2)
    raw = json.loads((artifact_v2 / "id_map.json").read_text())["item_ids"]
    r = post(client_v2, {"history": ["sku-0001", 777, "sku-0010"], "k": 8})
    body = r.json()
    assert r.status_code == 200 and body["model"] == V2
    assert body["items"] == [raw[i - 1] for i in ref.topk([1, 5, 10], 8, exclude={1, 5, 10})]
    assert all(isinstance(i, str) for i in body["items"] if i != 777)
    assert post(client_v2, {"history": ["777"], "k": 3}).status_code == 200  # "777" and 777 are one id
    bad = post(client_v2, {"history": ["sku-0001", 3], "k": 3})
    assert bad.status_code == 422 and bad.json()["unknown_items"] == [3]
    pop = post(client_v2, {"history": [], "k": 4, "candidates": [777, "sku-0002"]}).json()
    assert set(pop["items"]) == {777, "sku-0002"}


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("body", [
    {"history": [1], "k": 0}, {"history": [1], "k": -3}, {"history": [1], "k": 10**9}, {"history": [1], "k": "ten"},
    {"history": [1], "k": 1.5}, {"history": "1 2 3"}, {"history": [1.5]}, {"history": [True]}, {"history": [[1]]},
    {"history": [None]}, {"history": [2**70]}, {"history": [1], "exclude_seen": "maybe"}, {"history": [1], "extra": 1},
    {"history": [1], "unknown_items": "drop"}, {"history": [1], "candidates": []}, {"history": [1], "user_id": "x"},
    [1, 2, 3], "hello", None, 12,
])
def test_wrong_types_and_ranges_give_422(client: TestClient, body: Any) -> None:
    r = client.post("/recommend", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["message"] and "Traceback" not in r.text


def test_k_above_server_max_k(client: TestClient) -> None:
    r = post(client, {"history": [1], "k": 101})
    assert r.status_code == 422 and "max_k=100" in r.json()["message"]


@pytest.mark.parametrize("raw", [b"{", b'{"history": [1,2', b"\xff\xfe", b"", b'{"history": [1]} trailing'])
def test_malformed_json(client: TestClient, raw: bytes) -> None:
    r = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert r.json()["message"]


def test_huge_history_is_refused_clearly(client: TestClient) -> None:
    history = list(range(1, 100_001))
    r = client.post("/recommend", json={"history": history, "k": 5})
    assert r.status_code in (413, 422)
    assert "100000" in r.json()["message"] or "larger than" in r.json()["message"]


def test_body_size_limit(make_client, artifact_root: Path) -> None:
    c = make_client(artifact_root, max_body_bytes=2048)
    r = c.post("/recommend", json={"history": list(range(1, 151)) * 5})
    assert r.status_code == 413 and "2048" in r.json()["message"]

    def chunks():  # no Content-Length: the limit is counted while streaming
        yield b'{"history": ['
        for _ in range(1000):
            yield b"1, "
        yield b"1]}"

    r = c.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert c.post("/recommend", json={"history": [1, 2]}).status_code == 200


def test_history_length_limit(make_client, artifact_root: Path) -> None:
    c = make_client(artifact_root, max_history_len=20)
    r = c.post("/recommend", json={"history": list(range(1, 22))})
    assert r.status_code == 422 and "at most 20" in r.json()["message"]


def test_unknown_route_and_method(client: TestClient) -> None:
    assert client.get("/nope").json()["error"] == "not_found"
    r = client.get("/recommend")
    assert r.status_code == 405 and r.json()["message"]


# ------------------------------------------------------------------------------------------ batch


def same_answers(got: list[dict], want: list[dict]) -> bool:
    """The same items in the same order, model and fallback; scores equal up to float32 rounding: a BLAS
    matmul over a batch of 4 and over one row may round the last bits differently (OpenBLAS picks its kernel
    by shape), which changes no ranking here but would fail a bit-for-bit comparison."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k != "scores"} == {k: v for k, v in w.items() if k != "scores"}
        assert g["scores"] == pytest.approx(w["scores"], rel=1e-5, abs=1e-6)
    return True


def test_batch_equals_single_calls(client: TestClient) -> None:
    reqs = [{"history": [1, 2, 3], "k": 5}, {"history": [], "k": 3}, {"history": [7], "k": 4, "candidates": [1, 2, 3]},
            {"history": [9, 999], "k": 2, "unknown_items": "ignore"}]
    r = client.post("/recommend/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert same_answers(results, [post(client, q).json() for q in reqs])


def test_batch_names_the_bad_request(client: TestClient) -> None:
    r = client.post("/recommend/batch", json={"requests": [{"history": [1]}, {"history": [1, 5000]}]})
    assert r.status_code == 422 and r.json()["message"].startswith("requests[1]") and r.json()["index"] == 1
    assert client.post("/recommend/batch", json={"requests": []}).status_code == 422


def test_batch_size_limit(make_client, artifact_root: Path) -> None:
    c = make_client(artifact_root, max_batch_requests=3)
    r = c.post("/recommend/batch", json={"requests": [{"history": [1]}] * 4})
    assert r.status_code == 422 and "at most 3" in r.json()["message"]


# ------------------------------------------------------------------------------------------ back-pressure


def _gate(client: TestClient) -> threading.Event:
    """Hold the worker thread (batching_mode="thread"): every executed batch waits for the returned event."""
    batcher = client.app.state.service.batcher
    gate, inner = threading.Event(), batcher.execute

    def gated(payloads):
        gate.wait(10)
        return inner(payloads)

    batcher.execute = gated
    return gate


def test_full_queue_gives_503_with_retry_after(make_client, artifact_root: Path) -> None:
    c = make_client(artifact_root, max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0, batching_mode="thread")
    gate = _gate(c)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(c.post, "/recommend", json={"history": [1, 2], "k": 3}) for _ in range(8)]
        # at most 1 executing + 2 queued: the other 5 are rejected at once, while the gate is still closed
        deadline = time.time() + 10
        while sum(f.done() for f in futures) < 5 and time.time() < deadline:
            time.sleep(0.02)
        gate.set()
        responses = [f.result(15) for f in futures]
    codes = sorted(r.status_code for r in responses)
    assert codes.count(503) >= 5 and codes.count(200) >= 1 and set(codes) <= {200, 503}, codes
    r503 = next(r for r in responses if r.status_code == 503)
    assert r503.headers["retry-after"] == "1" and "queue is full" in r503.json()["message"]
    assert c.post("/recommend", json={"history": [1]}).status_code == 200  # recovers
    m = c.get("/metrics").text
    assert 'ssi_requests_total{endpoint="/recommend",method="POST",status="503"}' in m


def test_slow_worker_gives_504(make_client, artifact_root: Path) -> None:
    c = make_client(artifact_root, request_timeout_s=0.2, batching_mode="thread")
    gate = _gate(c)
    try:
        r = c.post("/recommend", json={"history": [1]})
    finally:
        gate.set()
    assert r.status_code == 504 and r.json()["error"] == "timeout"


def test_loop_mode_full_queue_gives_503(make_client, artifact_root: Path) -> None:
    c = make_client(artifact_root, max_queue_size=2, batching_mode="loop")
    r = c.post("/recommend/batch", json={"requests": [{"history": [1]}] * 3})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "queue is full" in r.json()["message"]
    assert c.post("/recommend/batch", json={"requests": [{"history": [1]}] * 2}).status_code == 200


@pytest.mark.parametrize("mode", ["loop", "thread"])
def test_both_batching_modes_give_the_same_answers(make_client, artifact_root: Path, client: TestClient,
                                                    mode: str) -> None:
    other = make_client(artifact_root, batching_mode=mode)
    assert client.get("/model").json()["batching"]["mode"] == "loop"  # auto on a CPU backend
    assert other.get("/model").json()["batching"]["mode"] == mode
    bodies = [{"history": [3, 1, 2], "k": 5}, {"history": [4, 5], "k": 3, "exclude_seen": True},
              {"history": [2], "candidates": [1, 2, 3, 4], "k": 2}, {"history": [], "k": 4}]
    for body in bodies:
        assert same_answers([post(other, body).json()], [post(client, body).json()])
    batch = other.post("/recommend/batch", json={"requests": bodies}).json()["results"]
    assert same_answers(batch, [post(client, b).json() for b in bodies])


def test_inference_failure_is_a_json_500_and_the_server_recovers(client: TestClient) -> None:
    backend = client.app.state.service.state.backend
    inner, fused = backend.encode, backend.fused
    assert fused is not None  # the CPU default: encoder + top-k in one ORT call (fuse_topk)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated ORT failure")

    backend.encode = broken
    fused.rank = broken  # the instance attribute hides the method
    try:
        r = post(client, {"history": [1, 2]})
    finally:
        backend.encode = inner
        del fused.rank
    assert r.status_code == 500 and r.json()["error"] == "inference_failed"
    assert "Traceback" not in r.text and "simulated" not in r.text
    assert post(client, {"history": [1, 2]}).status_code == 200
