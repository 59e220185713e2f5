"""Fuzz every operation of the OpenAPI document with schemathesis: no 5xx, and every response
matches the schema. The operations come from the served document itself, so a new route is fuzzed
without a list to keep in sync.

Driven through hypothesis directly: schemathesis' pytest plugin does not run under pytest 9.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CORE = {
    "POST /encode",
    "POST /elbo",
    "POST /reconstruct",
    "POST /anomaly",
    "POST /decode",
    "GET /sample",
    "GET /healthz",
    "GET /readyz",
    "GET /v1/model",
    "GET /metrics",
    "POST /v1/models/{name}/versions/{version}/encode",
    "POST /v2/repository/index",
}


@pytest.fixture(scope="module")
def operations(base_url):
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        found[f"{operation.method.upper()} {operation.path}"] = operation
    return found


def test_the_document_has_the_core_operations(operations):
    assert set(operations) >= CORE


def test_every_operation_conforms_to_its_schema(operations, base_url):
    failures = []
    for name, operation in sorted(operations.items()):
        try:
            statuses = fuzz_operation(operation, base_url)
        except AssertionError as exc:  # schemathesis' checks raise AssertionError subclasses
            failures.append(f"{name}: {str(exc)[:400]}")
            continue
        if not statuses or any(status >= 500 for status in statuses):
            failures.append(f"{name}: statuses {sorted(set(statuses))}")
    assert not failures, "\n".join(failures)


def fuzz_operation(operation, base_url) -> list[int]:
    calls = []

    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def fuzz(case):
        calls.append(case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=60).status_code)

    fuzz()
    return calls
