"""POST /anomaly in-process, with a fake model calibrated on its own "training data" (tests/unit/service/fakes.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from model.core import anomaly
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
