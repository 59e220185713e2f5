"""The v2 routes in-process with a fake model: the operations equal the native routes, and every
error, whatever raised it, is the protocol's {"error": "<message>"}."""

import json
import struct

import numpy as np
import pytest

from service.v2.models import MODELS
from tests.unit.service.conftest import build, client_for, png_bytes, v2_error
from tests.unit.service.fakes import FakeVAE

pytestmark = pytest.mark.anyio
MODEL = "fake-vae"


def bytes_request(blobs: list[bytes], **parameters) -> tuple[bytes, dict[str, str]]:
    data = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
    header = json.dumps(
        {
            "id": "r",
            "parameters": parameters,
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [len(blobs)],
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
        }
    ).encode()
    return header + data, {"inference-header-content-length": str(len(header))}


async def test_encode_over_the_protocol_equals_the_encode_route(client):
    pngs = [png_bytes(1), png_bytes(2)]
    native = (
        await client.post(
            "/encode?sample=true&seed=4", files=[("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(pngs)]
        )
    ).json()
    body, headers = bytes_request(pngs, sample=True, seed=4)
    response = await client.post(f"/v2/models/{MODEL}.encode/infer", content=body, headers=headers)
    answer = response.json()
    assert response.status_code == 200 and (answer["model_name"], answer["id"]) == (f"{MODEL}.encode", "r")
    outputs = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in answer["outputs"]}
    for key in ("mean", "logvar", "z"):
        np.testing.assert_array_equal(outputs[key], np.array([r[key] for r in native["results"]], np.float32))


async def test_operation_limits_are_the_native_ones_as_400(client):
    body, headers = bytes_request([png_bytes(1)], k=101)
    message = v2_error(await client.post(f"/v2/models/{MODEL}.elbo/infer", content=body, headers=headers), 400)
    assert message == "k must be between 1 and 100, not 101"
    sample = await client.post(f"/v2/models/{MODEL}.sample/infer", json={"inputs": []})
    assert v2_error(sample, 400) == "n must be between 1 and 8, not 16"
    both = await client.post(f"/v2/models/{MODEL}.encode/infer", json={"inputs": []})
    assert "exactly one of 'image'" in v2_error(both, 400)


async def test_an_undecodable_image_is_the_decoders_message_as_400(client):
    body, headers = bytes_request([b"not an image"])
    message = v2_error(await client.post(f"/v2/models/{MODEL}.encode/infer", content=body, headers=headers), 400)
    assert message.startswith("the image")


async def test_out_of_range_pixels_are_refused(client):
    request = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [2.0] * 64}]}
    response = await client.post(f"/v2/models/{MODEL}.encode/infer", json=request)
    assert "finite values in [0, 1]" in v2_error(response, 400)


async def test_unknown_models_versions_and_paths_are_404_in_the_protocols_shape(client):
    assert (
        v2_error(await client.get("/v2/models/nope.encode"), 404)
        == "model 'nope' is not loaded; the models served are: fake-vae (GET /v1/models)"
    )
    assert "no v2 model 'x.nope'" in v2_error(await client.get("/v2/models/x.nope"), 404)
    repository_model = (await client.get(f"/v2/models/{MODEL}")).json()  # the index lists it: it answers
    assert repository_model["platform"] == "vae-service_repository_model" and repository_model["inputs"] == []
    assert f"v2 models {MODEL}.encoder, {MODEL}.decoder" in repository_model["description"]
    infer = await client.post(f"/v2/models/{MODEL}/infer", json={"inputs": []})
    assert "infer on its v2 models fake-vae.encoder" in v2_error(infer, 404)
    assert "1.0" in v2_error(await client.get(f"/v2/models/{MODEL}.encode/versions/1.0"), 404)
    assert v2_error(await client.get("/v2/nothing"), 404) == "no route /v2/nothing"


async def test_before_the_model_loads_ready_and_infer_answer_503():
    app, _ = build(ready=False)
    async with client_for(app) as client:
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        ready = await client.get("/v2/health/ready")
        assert "loading" in v2_error(ready, 503) and ready.headers["retry-after"] == "1"
        v2_error(await client.post(f"/v2/models/{MODEL}.encode/infer", json={"inputs": []}), 503)


async def test_a_body_over_the_upload_limit_is_413_in_the_protocols_shape():
    app, _ = build(max_upload_bytes=1000)
    async with client_for(app) as client:
        response = await client.post(f"/v2/models/{MODEL}.encode/infer", content=b"x" * 1001)
        assert "exceeds the limit of 1000 bytes" in v2_error(response, 413)


async def test_the_in_flight_limit_is_429_in_the_protocols_shape():
    app, _ = build(max_in_flight=1)
    served = app.state.vae.resolve()
    served.in_flight = 1  # a model call of another request holds the only slot
    async with client_for(app) as client:
        body, headers = bytes_request([png_bytes(1)])
        response = await client.post(f"/v2/models/{MODEL}.encode/infer", content=body, headers=headers)
        assert "more than 1 model calls in flight" in v2_error(response, 429)
        assert response.headers["retry-after"] == "1"
    served.in_flight = 0


async def test_a_wrong_method_is_405_in_the_protocols_shape(client):
    assert (
        v2_error(await client.get(f"/v2/models/{MODEL}.encode/infer"), 405)
        == f"GET is not allowed on /v2/models/{MODEL}.encode/infer; use POST"
    )


async def test_an_unexpected_error_is_a_generic_500_in_the_protocols_shape():
    app, _ = build(FakeVAE(broken=True))
    async with client_for(app) as client:
        body, headers = bytes_request([png_bytes(1)])
        response = await client.post(f"/v2/models/{MODEL}.encode/infer", content=body, headers=headers)
    message = v2_error(response, 500)
    assert "secret" not in message and "X-Request-ID" in message


async def test_the_index_lists_the_v2_models_and_their_names_load_and_unload_the_model():
    app, _ = build(repository_control="open")
    async with client_for(app) as client:
        index = (await client.post("/v2/repository/index")).json()
        assert [row["name"] for row in index][:3] == [MODEL, f"{MODEL}.encoder", f"{MODEL}.decoder"]
        assert {row["state"] for row in index} == {"READY"} and len(index) == 1 + len(MODELS)
        assert (await client.get(f"/v2/models/{MODEL}.elbo/ready")).json() == {"name": f"{MODEL}.elbo", "ready": True}
        assert (await client.post(f"/v2/repository/models/{MODEL}.encoder/unload")).status_code == 200
        assert "is not ready" in v2_error(await client.get(f"/v2/models/{MODEL}.elbo/ready"), 400)
        assert (await client.post(f"/v2/repository/models/{MODEL}.elbo/load", json={})).status_code == 200
        assert (await client.get(f"/v2/models/{MODEL}.encode/versions/9.9.9/ready")).status_code == 200


async def test_an_empty_admin_token_keeps_the_control_routes_off():
    app, _ = build(admin_token="")
    async with client_for(app) as client:
        response = await client.post("/v2/repository/index", headers={"authorization": "Bearer "})
    assert response.status_code == 403 and "VAE_ADMIN_TOKEN" in response.json()["error"]
