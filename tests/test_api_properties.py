"""Hostile requests, found by a tool: schemathesis drives a real `bentoml serve` from the service's
one OpenAPI document (GET /docs.json, where BentoML users look; chexops.serving.openapi) with schema-valid and
schema-violating requests. No answer may be a 5xx; every 4xx is JSON with an `error` string; every
answer keeps to the document (status, content type, body schema).

CHEXOPS_API_EXAMPLES sets the examples per operation and mode (default 25: a few seconds).
"""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow


EXAMPLES = int(os.environ.get("CHEXOPS_API_EXAMPLES", "25"))
OPERATIONS = [("/predict", "POST"), ("/explain", "POST"), ("/feedback", "POST"), ("/model", "GET")]
LISTED = [*OPERATIONS, ("/", "GET"), ("/livez", "GET"), ("/readyz", "GET"), ("/metrics", "GET")]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api(service):
    response = httpx.get(f"{service.url}/docs.json", timeout=30)
    assert response.status_code == 200 and response.json()["openapi"].startswith("3.1")
    return schemathesis.openapi.from_url(f"{service.url}/docs.json")


def test_the_document_lists_the_routes(api):
    listed = {(op.path, op.method.upper()) for op in (result.ok() for result in api.get_all_operations())}
    assert listed == set(LISTED)  # the clinic API, the page, health and metrics; not the internal /infer


# GET /model takes no input: nothing to negate
CASES = [
    (path, method, mode)
    for path, method in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if not (method == "GET" and mode == GenerationMode.NEGATIVE)
]


@pytest.mark.parametrize("path, method, mode", CASES, ids=[f"{p}-{m.value}" for p, _, m in CASES])
def test_the_service_keeps_to_its_openapi_document(api, service, path, method, mode):
    operation = api[path][method]
    seen: dict[int, int] = {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def exchange(case):
        headers = {**(case.headers or {}), **service.headers}
        response = case.call(base_url=service.url, headers=headers, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        if 400 <= response.status_code < 500:
            body = response.json()  # JSON, or this raises
            assert isinstance(body.get("error"), str) and body["error"], (response.status_code, response.text[:300])
        case.validate_response(response, checks=CHECKS, headers=headers)

    exchange()
    assert sum(seen.values()) >= (1 if method == "GET" else min(EXAMPLES, 5)), seen  # it really exchanged requests
    assert not any(code >= 500 for code in seen), seen
    assert "Traceback" not in service.logs()[-200_000:]
