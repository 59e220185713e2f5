"""Query parameters as one pydantic model per route: unknown names refused, errors that say where,
and the same model documented as OpenAPI query parameters."""

import pytest
from pydantic import Field
from starlette.requests import Request

from service.errors import ApiError
from service.params import QueryModel, openapi_parameters, parse_query


class Knobs(QueryModel):
    k: int = Field(5, ge=1, description="samples")
    seed: int | None = None


def request(query: bytes) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/elbo", "query_string": query, "headers": []})


def test_no_query_gives_the_defaults():
    assert parse_query(request(b""), Knobs) == Knobs(k=5, seed=None)


def test_values_are_parsed_from_the_query_string():
    assert parse_query(request(b"k=7&seed=3"), Knobs) == Knobs(k=7, seed=3)


def test_a_misspelt_name_is_422_naming_what_is_accepted():
    with pytest.raises(ApiError) as caught:
        parse_query(request(b"kk=10"), Knobs)
    assert caught.value.status == 422 and caught.value.code == "unknown_parameter"
    assert "'kk'" in caught.value.message and "k, seed" in caught.value.message


def test_an_invalid_value_is_422_saying_where():
    with pytest.raises(ApiError) as caught:
        parse_query(request(b"k=0"), Knobs)
    assert caught.value.code == "invalid_request" and caught.value.message.startswith("k:")


def test_the_model_documents_itself_as_query_parameters():
    parameters = {p["name"]: p for p in openapi_parameters(Knobs)["parameters"]}
    assert parameters["k"]["in"] == "query" and parameters["k"]["description"] == "samples"
    assert parameters["k"]["schema"]["minimum"] == 1 and not parameters["k"]["required"]
