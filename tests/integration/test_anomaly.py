"""POST /anomaly over real HTTP against the shipped, calibrated model; and an export without calibration."""

from __future__ import annotations

import io
import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import MODEL_DIR, Server


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(pixels[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def transparent_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (28, 28), (255, 255, 255, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def anomaly_of(http, images: list[bytes], query: str = "") -> dict:
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    response = http.post(f"/anomaly{query}", files=files)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_same_image_gets_the_same_score_at_any_position(http, test_images):
    images = [png(x) for x in test_images[:5]]
    forward = anomaly_of(http, images)["results"]
    shuffled = anomaly_of(http, [images[3], images[0], images[4], images[1], images[2]])["results"]
    alone = anomaly_of(http, [images[4]])["results"][0]
    by_image = {3: shuffled[0], 0: shuffled[1], 4: shuffled[2], 1: shuffled[3], 2: shuffled[4]}
    for i, result in enumerate(forward):
        assert by_image[i]["score"] == pytest.approx(result["score"], rel=1e-5, abs=1e-6)
        assert by_image[i]["percentile"] == pytest.approx(result["percentile"], abs=1e-3)
    assert alone["score"] == pytest.approx(forward[4]["score"], rel=1e-5, abs=1e-6)


def test_test_images_are_mostly_typical_and_the_known_failures_are_anomalies(http, test_images):
    body = anomaly_of(http, [png(x) for x in test_images[:32]])
    assert body["model"]["name"] == "fashion-mnist-vae" and body["fpr"] == 0.01
    assert body["method"] == json.loads((MODEL_DIR / "manifest.json").read_text())["anomaly"]["method"]
    flagged = sum(r["is_anomaly"] for r in body["results"])
    assert flagged <= 3 and 0.2 < np.median([r["percentile"] for r in body["results"]]) < 0.8
    odd = anomaly_of(http, [transparent_png(), png(1.0 - test_images[0])])
    for result in odd["results"]:  # a blank image and an inverted garment: far "more likely" or far less
        assert result["is_anomaly"] and result["percentile"] == 1.0
        assert set(result["statistics"]) == set(body["results"][0]["statistics"])


def test_a_lenient_fpr_flags_more_test_images(http, test_images):
    images = [png(x) for x in test_images[:32]]
    strict, lenient = anomaly_of(http, images), anomaly_of(http, images, "?fpr=0.5")
    assert lenient["threshold"] < strict["threshold"]
    assert sum(r["is_anomaly"] for r in lenient["results"]) > sum(r["is_anomaly"] for r in strict["results"])


@pytest.fixture(scope="module")
def uncalibrated_server(tmp_path_factory):
    """The shipped model as exported before anomaly calibration: no anomaly.json, no manifest entry."""
    root = tmp_path_factory.mktemp("uncalibrated")
    model = root / "model"
    shutil.copytree(MODEL_DIR, model, ignore=shutil.ignore_patterns("report", "checkpoint.pt", "anomaly.json"))
    raw = json.loads((model / "manifest.json").read_text())
    raw.pop("anomaly", None)
    (model / "manifest.json").write_text(json.dumps(raw))
    server = Server(root, VAE_MODEL_DIR=str(model))
    try:
        server.wait()
        yield server.url
    finally:
        server.stop()


def test_a_model_without_calibration_serves_and_answers_anomaly_with_409(uncalibrated_server, test_images):
    image = png(test_images[0])
    with httpx.Client(base_url=uncalibrated_server, timeout=60) as client:
        for path in ("/anomaly", "/v1/models/fashion-mnist-vae/anomaly"):
            response = client.post(path, content=image, headers={"content-type": "image/png"})
            assert response.status_code == 409
            error = response.json()["error"]
            assert error["code"] == "no_anomaly_calibration" and "export.calibrate" in error["message"]
        scored = client.post("/elbo", content=image, headers={"content-type": "image/png"})
        assert scored.status_code == 200 and scored.json()["results"][0]["elbo"] < 0
