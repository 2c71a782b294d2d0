"""Property run against the OpenAPI schema (Schemathesis + Hypothesis) on a real uvicorn server: no 5xx, ever.

Valid (positive) cases for every operation, invalid (negative) cases for every operation with a body;
bounded by ``max_examples`` to stay well under a minute on 2 cores.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

BODY_EXAMPLES = 30  # per operation with a request body, per mode
OTHER_EXAMPLES = 3


@pytest.fixture
def schema(live_server, artifact_root: Path):
    server = live_server(artifact_root, max_body_bytes=64 * 1024, max_queue_size=4096)
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json"), server.url


def _check(case, url: str, session: requests.Session) -> None:
    response = case.call(base_url=url, session=session, timeout=30)
    assert response.status_code < 500, (case.operation.label, case.body, response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.json().get("message"), response.text[:300]
        assert "Traceback" not in response.text


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(schema, mode: GenerationMode) -> None:
    loaded, url = schema
    session = requests.Session()
    tested = []
    for result in loaded.get_all_operations():
        op = result.ok()
        has_body = bool(op.body)
        if mode is GenerationMode.NEGATIVE and not has_body:
            continue

        @settings(max_examples=BODY_EXAMPLES if has_body else OTHER_EXAMPLES, deadline=None, database=None,
                  derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case) -> None:
            _check(case, url, session)

        run()
        tested.append(op.label)
    assert {"POST /recommend", "POST /recommend/batch", "POST /eval"} <= set(tested), tested
