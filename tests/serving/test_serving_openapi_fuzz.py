"""Property run against the OpenAPI schema (Schemathesis + Hypothesis) on a real uvicorn server.

No 5xx, ever; and schema and server agree both ways:
- a request the schema allows (positive case) is never refused as malformed: no 400 and no 422
  ``validation_error`` (a 422 ``invalid_request`` about ids the catalogue does not hold, or a 413 for a
  body over the byte limit, are limits of the data and of the transport, not of the schema);
- a request the schema forbids (negative case) is never accepted (Schemathesis' own
  ``negative_data_rejection`` check, which knows which mutations stay valid once serialised);
- every answer's status code and body are the ones the schema documents.

Valid cases for every operation, invalid ones for every operation with a body; bounded by
``max_examples`` to stay well under a minute on 2 cores.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

BODY_EXAMPLES = 30  # per operation with a request body, per mode
OTHER_EXAMPLES = 3
MAX_K = 37  # not the default: the schema must carry the server's own limits
DATA_LIMITS = {"invalid_request", "dataset_not_found", "dataset_mismatch", "negatives_mismatch", "eval_in_progress",
               "reload_in_progress"}


@pytest.fixture
def schema(live_server, artifact_root: Path):
    server = live_server(artifact_root, max_body_bytes=64 * 1024, max_queue_size=4096, max_k=MAX_K,
                         max_history_len=500, max_candidates=300, max_batch_requests=20)
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json"), server.url


def test_schema_states_the_server_limits(schema) -> None:
    loaded, _ = schema
    spec = loaded.raw_schema["components"]["schemas"]
    rec = spec["RecommendRequest"]
    assert rec["properties"]["k"]["maximum"] == MAX_K and "history" in rec["required"]
    assert rec["properties"]["history"]["maxItems"] == 500
    (array,) = [s for s in rec["properties"]["candidates"]["anyOf"] if s.get("type") == "array"]
    assert array["minItems"] == 1 and array["maxItems"] == 300
    assert spec["RecommendBatchRequest"]["properties"]["requests"]["maxItems"] == 20


def _check(case, url: str, session: requests.Session, mode: GenerationMode) -> None:
    response = case.call(base_url=url, session=session, timeout=30)
    where = (case.operation.label, case.body, response.status_code, response.text[:500])
    assert response.status_code < 500, where
    if response.status_code >= 400:
        assert response.json().get("message"), where
        assert "Traceback" not in response.text
    if mode is GenerationMode.POSITIVE and response.status_code in (400, 422):
        assert response.json()["error"] in DATA_LIMITS, where
    if response.status_code == 413:  # over the byte limit: refused before parsing, whatever the schema says
        assert response.json()["error"] == "body_too_large", where
        return
    case.validate_response(response, checks=[negative_data_rejection, status_code_conformance,
                                             content_type_conformance, response_schema_conformance])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_and_server_agree(schema, mode: GenerationMode) -> None:
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
            _check(case, url, session, mode)

        run()
        tested.append(op.label)
    assert {"POST /recommend", "POST /recommend/batch", "POST /eval"} <= set(tested), tested
