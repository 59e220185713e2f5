"""The protocol's error shape: which paths are the protocol's, and how each error it raises is answered."""

import json

import pytest
from starlette.exceptions import HTTPException

from service.errors import ApiError, ErrorShape
from service.v2.codec import ProtocolError
from service.v2.errors import as_v2_error, error_shape, protocol_errors

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v2", ErrorShape.V2),
        ("/v2/models/m/infer", ErrorShape.V2),
        ("/v2x", ErrorShape.NATIVE),
        ("/encode", ErrorShape.NATIVE),
        ("/v1/models/v2/encode", ErrorShape.NATIVE),
    ],
)
def test_only_the_protocols_own_paths_get_its_shape(path, shape):
    assert error_shape(path) is shape


@pytest.mark.parametrize(
    ("error", "status", "message", "headers"),
    [
        (ProtocolError("bad tensor"), 400, "bad tensor", {}),
        (ProtocolError("no such model", status=404), 404, "no such model", {}),
        (ApiError(422, "k_out_of_range", "k too large"), 400, "k too large", {}),  # the protocol has no 422
        (ApiError(429, "overloaded", "busy", headers={"Retry-After": "1"}), 429, "busy", {"retry-after": "1"}),
        (HTTPException(408, "too slow", headers={"Connection": "close"}), 408, "too slow", {"connection": "close"}),
    ],
)
def test_each_error_is_answered_as_a_message_with_its_status_and_headers(error, status, message, headers):
    response = as_v2_error(error)
    assert response.status_code == status and json.loads(response.body) == {"error": message}
    assert {k: v for k, v in response.headers.items() if k in headers} == headers


async def test_a_protocol_route_answers_its_errors_and_lets_others_through():
    @protocol_errors
    async def refuses(request):
        raise ProtocolError("refused")

    @protocol_errors
    async def breaks(request):
        raise RuntimeError("a bug")

    assert json.loads((await refuses(None)).body) == {"error": "refused"}
    with pytest.raises(RuntimeError):  # left to the generic 500, which logs it
        await breaks(None)
