"""GET /health/live, /health/ready, /model, /metrics."""
from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from serving_factory import NUM_ITEMS, V1, make_settings

from serving.app import create_app


def test_live_and_ready(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    r = client.get("/health/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready", "model": V1}


def test_not_ready_before_the_model_is_loaded(artifact_root: Path, data_dir: Path) -> None:
    c = TestClient(create_app(make_settings(artifact_root, data_dir)))  # lifespan not started: nothing loaded
    assert c.get("/health/live").status_code == 200
    r = c.get("/health/ready")
    assert r.status_code == 503 and r.json()["error"] == "not_ready" and r.headers["retry-after"]
    assert c.post("/recommend", json={"history": [1]}).status_code == 503


def test_model_describes_what_really_runs(client: TestClient) -> None:
    client.post("/recommend", json={"history": [1, 2]})
    m = client.get("/model").json()
    assert m["model"]["version"] == V1 and m["model"]["items"] == {"count": NUM_ITEMS, "dim": 13}
    assert m["model"]["metrics"]["test"]["full"]["ndcg@10"] >= 0
    assert m["encoder"]["providers"] == ["CPUExecutionProvider"]
    # a 150-item catalogue: scoring=auto takes the matmul + top-k path in ONNX Runtime, and /model says why
    assert m["index"]["type"] == "exact-ort" and m["device"] == "cpu"
    assert m["index"]["chosen_because"].startswith("scoring=auto: 150 items <= matmul_max_items")
    assert m["batching"]["idle_dispatch"] is True and m["batching"]["idle_dispatches"] >= 1
    assert m["batching"]["inference_count"] >= 1 and m["batching"]["average_batch_size"] >= 1
    assert m["limits"]["max_k"] == 100


def test_metrics_cover_requests_errors_timings_and_batches(client: TestClient) -> None:
    for _ in range(3):
        client.post("/recommend", json={"history": [1, 2], "k": 5})
    client.post("/recommend", json={"history": [1, 99999]})
    client.post("/recommend", json={"history": [], "k": 5})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in [
        'ssi_requests_total{endpoint="/recommend",method="POST",status="200"} 4.0',
        'ssi_requests_total{endpoint="/recommend",method="POST",status="422"} 1.0',
        'ssi_request_errors_total{endpoint="/recommend",status="422"} 1.0',
        "ssi_inference_count_total 3.0",
        f'ssi_model_info{{backend="ort-cpu+onnxruntime-cpu",name="tiny",version="{V1}"}} 1.0',
        "ssi_queue_depth 0.0",
    ]:
        assert line in text, line
    for hist in ("ssi_queue_seconds_count", "ssi_encode_seconds_count", "ssi_search_seconds_count",
                 "ssi_batch_size_count", 'ssi_request_seconds_count{endpoint="/recommend"}'):
        value = next(float(x.split()[-1]) for x in text.splitlines() if x.startswith(hist))
        assert value >= 1, hist
    execs = next(float(x.split()[-1]) for x in text.splitlines() if x.startswith("ssi_execution_count_total"))
    avg = next(float(x.split()[-1]) for x in text.splitlines() if x.startswith("ssi_average_batch_size"))
    assert avg == 3.0 / execs


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/recommend", "/recommend/batch", "/eval", "/admin/reload", "/health/ready", "/model", "/metrics"):
        assert path in spec["paths"], path
    assert client.get("/docs").status_code == 200


def _sample(text: str, name: str) -> float | None:
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(name + " ")), None)


def test_metrics_time_parse_and_serialise_of_each_answered_request(client: TestClient) -> None:
    before = client.get("/metrics").text
    client.post("/recommend", json={"history": [1, 2], "k": 5})
    client.post("/recommend/batch", json={"requests": [{"history": [1]}, {"history": [2]}]})
    client.post("/recommend", json={"history": "1, 2"})  # schema error: 422 before the handler, no stage
    client.post("/recommend", json={"history": [1, 99999]})  # unknown id: parsed, then 422 from the handler
    after = client.get("/metrics").text

    def grew(name: str) -> float:
        return (_sample(after, name) or 0) - (_sample(before, name) or 0)

    assert grew("ssi_parse_seconds_count") == 3 and grew("ssi_serialize_seconds_count") == 2
    assert _sample(after, "ssi_serialize_seconds_sum") > 0


def test_metrics_include_process_cpu_and_memory(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert _sample(text, "process_resident_memory_bytes") > 10 * 2**20
    assert _sample(text, "process_cpu_seconds_total") > 0


def test_dependencies_are_coroutines() -> None:
    """A sync dependency costs a thread-pool hop on every request (FastAPI runs it in a worker thread)."""
    import inspect

    from serving.routes import get_service, require_admin

    assert inspect.iscoroutinefunction(get_service) and inspect.iscoroutinefunction(require_admin)
