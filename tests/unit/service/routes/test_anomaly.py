"""POST /anomaly in-process, with a fake model calibrated on its own "training data" (tests/unit/service/fakes.py)."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from model.core import anomaly, anomaly_map
from model.core.preprocess import PreprocessContract, bytes_to_array
from tests.unit.service.conftest import PNG, build, client_for, png_bytes
from tests.unit.service.conftest import error_with_message as error_of
from tests.unit.service.fakes import FAKE_FPR_DEFAULT, SHAPE, FakeVAE, in_distribution

pytestmark = pytest.mark.anyio


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(pixels[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(images: list[bytes]):
    return [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


@pytest.fixture
async def calibrated():
    app, fake = build(FakeVAE(calibrated=True))
    async with client_for(app) as client:
        yield client, fake


async def test_a_model_without_calibration_answers_409_and_says_how_to_calibrate(client):
    status, code, message = error_of(await client.post("/anomaly", content=png_bytes(0), headers=PNG))
    assert (status, code) == (409, "no_anomaly_calibration")
    assert "fake-vae 9.9.9" in message and "export.calibrate" in message
    assert (await client.post("/elbo", content=png_bytes(0), headers=PNG)).status_code == 200  # it still serves


async def test_scores_are_the_calibrations_on_the_models_statistics(calibrated):
    client, fake = calibrated
    images = [png_of(in_distribution(1, 7)[0]), png_bytes(3)]
    body = (await client.post("/anomaly", files=multipart(images))).json()
    pixels = np.stack([bytes_to_array(data, PreprocessContract(input_shape=SHAPE)) for data in images])
    stats = anomaly.statistics(fake, fake.likelihood, pixels, 0, 0)
    expected = fake.anomaly.score(stats)
    assert body["model"] == {"name": "fake-vae", "version": "9.9.9"} and body["method"] == "typicality"
    assert body["reference_images"] == 400 and body["seed"] == 0 and body["binarize_seed"] == 0
    for i, result in enumerate(body["results"]):
        assert result["index"] == i
        assert result["score"] == pytest.approx(expected[i], rel=1e-9)
        assert result["percentile"] == pytest.approx(float(fake.anomaly.percentile(expected[i : i + 1])[0]))
        assert result["statistics"] == pytest.approx({name: stats[name][i] for name in fake.anomaly.score.statistics})
        assert result["is_anomaly"] == (result["score"] > body["threshold"])


async def test_an_in_distribution_image_is_typical_and_a_blank_one_is_an_anomaly(calibrated):
    client, _ = calibrated
    typical = [png_of(image) for image in in_distribution(7, 11)]  # max_batch is 8
    blank = png_of(np.ones(SHAPE, dtype=np.float32))
    body = (await client.post("/anomaly", files=multipart([*typical, blank]))).json()
    *inliers, outlier = body["results"]
    assert np.median([r["percentile"] for r in inliers]) < 0.9 and not all(r["is_anomaly"] for r in inliers)
    assert outlier["is_anomaly"] and outlier["percentile"] == 1.0


async def test_the_same_image_scores_the_same_at_any_position_and_alone(calibrated):
    client, _ = calibrated
    images = [png_bytes(seed) for seed in range(4)]
    forward = (await client.post("/anomaly", files=multipart(images))).json()["results"]
    backward = (await client.post("/anomaly", files=multipart(images[::-1]))).json()["results"]
    alone = (await client.post("/anomaly", content=images[2], headers=PNG)).json()["results"][0]
    # Equal up to float32 rounding: the graphs' arithmetic may differ with the batch, the noise may not.
    assert [r["score"] for r in forward] == pytest.approx([r["score"] for r in backward[::-1]], rel=1e-6)
    assert alone["score"] == pytest.approx(forward[2]["score"], rel=1e-6)
    assert alone["statistics"] == pytest.approx(forward[2]["statistics"], rel=1e-6)


async def test_the_default_fpr_is_the_manifests_and_a_query_overrides_it(calibrated):
    client, fake = calibrated
    default = (await client.post("/anomaly", content=png_bytes(0), headers=PNG)).json()
    strict = (await client.post("/anomaly?fpr=0.25", content=png_bytes(0), headers=PNG)).json()
    assert default["fpr"] == FAKE_FPR_DEFAULT and default["threshold"] == fake.anomaly.threshold(FAKE_FPR_DEFAULT)
    assert strict["fpr"] == 0.25 and strict["threshold"] == fake.anomaly.threshold(0.25) < default["threshold"]


@pytest.mark.parametrize(
    "query, code",
    [
        ("fpr=0", "invalid_request"),
        ("fpr=1", "invalid_request"),
        ("fpr=abc", "invalid_request"),
        ("fpr=0.001", "fpr_out_of_range"),
        ("seed=-1", "invalid_request"),
    ],
)
async def test_bad_parameters_are_422_with_a_reason(calibrated, query, code):
    client, _ = calibrated
    status, got, message = error_of(await client.post(f"/anomaly?{query}", content=png_bytes(0), headers=PNG))
    assert (status, got) == (422, code) and message
    if code == "fpr_out_of_range":
        assert "1/400" in message


async def test_a_seed_changes_the_draws_and_is_echoed(calibrated):
    client, _ = calibrated
    zero = (await client.post("/anomaly", content=png_bytes(1), headers=PNG)).json()
    other = (await client.post("/anomaly?seed=9&binarize_seed=4", content=png_bytes(1), headers=PNG)).json()
    assert (other["seed"], other["binarize_seed"]) == (9, 4)
    assert other["results"][0]["statistics"] != zero["results"][0]["statistics"]


async def test_each_model_and_version_answers_at_its_own_address(calibrated):
    client, _ = calibrated
    paths = ["/anomaly", "/v1/models/fake-vae/anomaly", "/v1/models/fake-vae/versions/9.9.9/anomaly"]
    bodies = [(await client.post(path, content=png_bytes(2), headers=PNG)).json() for path in paths]
    assert all(body["results"] == bodies[0]["results"] for body in bodies)
    missing = await client.post("/v1/models/nope/anomaly", content=png_bytes(2), headers=PNG)
    assert error_of(missing)[:2] == (404, "model_not_found")


async def test_an_undecodable_image_is_400(calibrated):
    client, _ = calibrated
    status, code, _ = error_of(await client.post("/anomaly", content=b"not an image", headers=PNG))
    assert status == 400 and code


async def test_the_model_card_states_the_method_and_its_cost(calibrated, client):
    calibrated_client, _ = calibrated
    card = (await calibrated_client.get("/v1/model")).json()["anomaly"]
    assert card["method"] == "typicality" and card["fpr_default"] == FAKE_FPR_DEFAULT and card["cost"]
    assert (await client.get("/v1/model")).json()["anomaly"] is None


async def test_map_true_adds_each_images_map_and_heatmap_and_says_how_they_were_made(calibrated):
    client, fake = calibrated
    images = [png_of(in_distribution(1, 7)[0]), png_bytes(3)]
    plain = (await client.post("/anomaly", files=multipart(images))).json()
    body = (await client.post("/anomaly?map=true", files=multipart(images))).json()
    assert "map" not in plain and all("map" not in r and "map_png" not in r for r in plain["results"])
    assert body["map"]["samples"] == fake.anomaly.map.samples and body["map"]["seed"] == 0
    assert "percentile among in-distribution pixels" in body["map"]["method"]
    pixels = np.stack([bytes_to_array(data, PreprocessContract(input_shape=SHAPE)) for data in images])
    expected = fake.anomaly.map(anomaly_map.pixel_terms(fake, fake.likelihood, pixels, 0, fake.anomaly.map.samples))
    for i, result in enumerate(body["results"]):
        assert result["score"] == plain["results"][i]["score"]  # the map adds to the answer, changes nothing
        assert np.asarray(result["map"]).shape == SHAPE[1:]
        np.testing.assert_allclose(result["map"], expected[i], atol=1e-4)  # sent to 4 decimals
        heatmap = Image.open(io.BytesIO(base64.b64decode(result["map_png"])))
        assert heatmap.format == "PNG" and heatmap.mode == "RGB" and heatmap.size == (SHAPE[2], SHAPE[1])


async def test_v2_anomaly_returns_the_map_when_asked_by_parameter_or_by_output_name(calibrated):
    client, _ = calibrated
    uploads = [png_of(p) for p in in_distribution(2, 5)]
    # the draws follow the exact floats: send v2 the pixels the server decodes from the uploads
    pixels = np.stack([bytes_to_array(data, PreprocessContract(input_shape=SHAPE)) for data in uploads])
    image = {"name": "image", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.reshape(-1).tolist()}
    meta = (await client.get("/v2/models/fake-vae.anomaly")).json()
    assert {"name": "map", "datatype": "FP32", "shape": [-1, *SHAPE[1:]]} in meta["outputs"]
    plain = (await client.post("/v2/models/fake-vae.anomaly/infer", json={"inputs": [image]})).json()
    assert "map" not in {o["name"] for o in plain["outputs"]}
    native = (await client.post("/anomaly?map=true", files=multipart(uploads))).json()
    for request in (
        {"inputs": [image], "parameters": {"map": True}},
        {"inputs": [image], "outputs": [{"name": "map"}, {"name": "score"}]},
    ):
        response = await client.post("/v2/models/fake-vae.anomaly/infer", json=request)
        # map_png is BYTES, which goes as binary data after the JSON header: read the header alone
        length = int(response.headers.get("inference-header-content-length", len(response.content)))
        outputs = {o["name"]: o for o in json.loads(response.content[:length])["outputs"]}
        assert ("map_png" in outputs) == ("parameters" in request)
        assert outputs["map"]["shape"] == [2, *SHAPE[1:]] and outputs["map"]["datatype"] == "FP32"
        maps = np.asarray(outputs["map"]["data"]).reshape(2, *SHAPE[1:])
        np.testing.assert_allclose(maps, [r["map"] for r in native["results"]], atol=1e-4)
