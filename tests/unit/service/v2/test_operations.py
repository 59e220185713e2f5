"""The v2 operations (service/v2/operations.py) over the protocol: M.elbo's estimator, outputs and
parameters."""

import json

import numpy as np
import pytest

from model.core.preprocess import PreprocessContract, bytes_to_array
from tests.unit.service.conftest import PNG, png_bytes

pytestmark = pytest.mark.anyio


NEW_FIELDS = ("log_likelihood_standard_error", "effective_sample_size")


def _pixels(fake, body: bytes) -> np.ndarray:
    """(1, C, H, W): the pixels the server decodes from an upload."""
    return bytes_to_array(body, PreprocessContract.from_dict(fake.manifest.preprocessing))[None]


async def test_v2_elbo_takes_the_estimator_and_returns_its_error_and_ess(client, app_and_fake):
    pixels = _pixels(app_and_fake[1], png_bytes(6))  # the noise follows the exact floats: send the decoded ones
    request = {
        "parameters": {"k": 25, "seed": 1, "estimator": "prior"},
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.reshape(-1).tolist()}
        ],
    }
    response = await client.post("/v2/models/fake-vae.elbo/infer", json=request)
    answer = response.json()
    assert response.status_code == 200 and answer["parameters"]["estimator"] == "prior"
    outputs = {o["name"]: o["data"][0] for o in answer["outputs"]}
    native = (await client.post("/elbo?k=25&seed=1&estimator=prior", content=png_bytes(6), headers=PNG)).json()[
        "results"
    ][0]
    for name in ("log_likelihood", *NEW_FIELDS):
        assert outputs[name] == pytest.approx(native[name], rel=1e-9)


async def test_v2_elbo_refuses_an_unknown_estimator_as_the_protocols_400(client):
    request = {
        "parameters": {"k": 2, "estimator": "uniform"},
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}],
    }
    response = await client.post("/v2/models/fake-vae.elbo/infer", json=request)
    body = response.json()
    assert response.status_code == 400 and set(body) == {"error"}
    assert "parameter estimator" in body["error"] and "'importance' or 'prior'" in body["error"]


async def test_v2_elbo_metadata_lists_the_new_outputs_and_the_parameter(client):
    meta = (await client.get("/v2/models/fake-vae.elbo")).json()
    assert {"log_likelihood_standard_error", "effective_sample_size"} <= {o["name"] for o in meta["outputs"]}
    estimator = next(p for p in meta["parameters"] if p["name"] == "estimator")
    assert estimator["default"] == "importance" and "prior" in estimator["description"]
    assert json.dumps(meta)  # plain JSON, no enum objects
