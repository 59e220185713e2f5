"""Fuzz the OpenAPI schema with schemathesis: no 5xx, and every response matches the schema.

Driven through hypothesis directly: schemathesis' pytest plugin does not run under pytest 9.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
OPERATIONS = ["POST /encode", "POST /elbo", "POST /reconstruct", "POST /anomaly", "POST /decode", "GET /sample",
              "GET /healthz", "GET /readyz", "GET /v1/model", "GET /metrics"]


@pytest.fixture(scope="module")
def operations(base_url):
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        found[f"{operation.method.upper()} {operation.path}"] = operation
    return found


@pytest.mark.parametrize("name", OPERATIONS)
def test_operation_conforms_to_its_schema(operations, base_url, name):
    operation = operations[name]
    calls = []

    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def fuzz(case):
        calls.append(case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=60).status_code)

    fuzz()
    assert calls and all(status < 500 for status in calls)
