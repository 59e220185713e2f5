"""Fuzz the open inference protocol's routes with schemathesis: no 5xx, every response as documented.
The infer routes are fuzzed twice: at generated model names (mostly 404) and at the real v2 models,
whose bodies then reach the codec and the models' checks."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from service.v2.models import MODELS
from tests.integration.test_fuzz import CHECKS

OPERATIONS = [
    "GET /v2",
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /v2/models/{name}",
    "GET /v2/models/{name}/versions/{version}",
    "GET /v2/models/{name}/ready",
    "GET /v2/models/{name}/versions/{version}/ready",
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
    "POST /v2/repository/index",
]


@pytest.fixture(scope="module")
def operations(base_url):
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    return {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in schema.get_all_operations())}


@pytest.fixture(scope="module")
def served(http) -> tuple[str, str]:
    model = http.get("/v1/model").json()["model"]
    return model["name"], model["version"]


def fuzz(operation, base_url, path_parameters=None, examples=30) -> list[int]:
    calls = []

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
    )
    def run(case):
        if path_parameters:
            case.path_parameters = {**(case.path_parameters or {}), **path_parameters}
        calls.append(case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=60).status_code)

    run()
    return calls


@pytest.mark.parametrize("name", OPERATIONS)
def test_v2_operation_conforms_to_its_schema(operations, base_url, name):
    calls = fuzz(operations[name], base_url)
    assert calls and all(status < 500 for status in calls)


@pytest.mark.parametrize("suffix", sorted(MODELS))
@pytest.mark.parametrize("versioned", [False, True], ids=["latest", "version"])
def test_infer_on_each_real_v2_model_never_fails_the_server(operations, base_url, served, suffix, versioned):
    name, version = served
    path = "/v2/models/{name}/versions/{version}/infer" if versioned else "/v2/models/{name}/infer"
    parameters = {"name": f"{name}.{suffix}", **({"version": version} if versioned else {})}
    calls = fuzz(operations[f"POST {path}"], base_url, parameters, examples=25)
    assert calls and all(status < 500 for status in calls)
    assert any(status == 400 for status in calls)  # the bodies reached the model's own checks
