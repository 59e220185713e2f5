"""The anomaly request's settings and scores, without HTTP: defaults from the model's calibration, the
checks made before any image is read, and one score per image."""

import numpy as np
import pytest

from model.core import anomaly_map
from service.anomaly_scoring import prepare, score
from service.engine import Engine
from service.errors import ApiError
from service.observability import Metrics
from service.served import ServedModel
from service.settings import Settings
from tests.unit.service.conftest import run_to_completion
from tests.unit.service.fakes import FAKE_FPR_DEFAULT, FakeVAE, in_distribution


def served(calibrated: bool) -> ServedModel:
    return ServedModel.create(Engine.from_model(FakeVAE(calibrated=calibrated)), Settings(), Metrics())


def test_the_defaults_are_the_calibrations_and_the_manifests():
    model = served(calibrated=True)
    request = prepare(model, None, None, None)
    calibration = model.engine.calibration
    assert (request.fpr, request.seed, request.binarize_seed) == (
        FAKE_FPR_DEFAULT,
        calibration.seed,
        calibration.binarize_seed,
    )
    assert request.threshold == float(calibration.threshold(FAKE_FPR_DEFAULT))
    assert prepare(model, 0.5, 7, 8).seed == 7


def test_a_model_without_calibration_is_409_and_an_fpr_below_one_reference_is_422():
    with pytest.raises(ApiError) as uncalibrated:
        prepare(served(calibrated=False), None, None, None)
    assert uncalibrated.value.status == 409 and "python -m export.calibrate" in uncalibrated.value.message
    with pytest.raises(ApiError) as too_small:
        prepare(served(calibrated=True), 1e-6, None, None)
    assert too_small.value.status == 422 and too_small.value.code == "fpr_out_of_range"


def test_each_image_gets_a_score_a_percentile_a_verdict_and_its_statistics():
    model = served(calibrated=True)
    request = prepare(model, None, None, None)
    images = np.concatenate([in_distribution(3, 9), np.zeros((1, *in_distribution(1, 0).shape[1:]), np.float32)])
    result = run_to_completion(score(model, images, request))
    assert result["score"].shape == result["percentile"].shape == result["is_anomaly"].shape == (4,)
    assert set(result["statistics"]) == set(request.calibration.score.statistics)
    assert result["is_anomaly"].tolist() == (result["score"] > request.threshold).tolist()
    assert result["is_anomaly"][-1]  # a blank image is nothing like the fake's bright-centred training data


def test_a_default_the_references_cannot_resolve_is_raised_to_one_they_can_and_said():
    # An export from before the default followed the reference's size: 0.01 over 36 reference images.
    model = ServedModel.create(
        Engine.from_model(FakeVAE(calibrated=True, references=36, fpr_default=0.01)), Settings(), Metrics()
    )
    request = prepare(model, None, None, None)  # never refused: the server chose the default itself
    assert request.fpr == 0.05 and request.threshold == float(request.calibration.threshold(0.05))
    assert request.fpr_note is not None and "36 reference images" in request.fpr_note
    assert prepare(model, 0.5, None, None).fpr_note is None  # the request's own rate needs no note
    with pytest.raises(ApiError) as asked:  # but a rate the request asks for is checked
        prepare(model, 0.01, None, None)
    assert asked.value.code == "fpr_out_of_range" and "leave it out for the model's default" in asked.value.message


def test_a_map_is_refused_409_before_any_image_for_a_calibration_without_one():
    model = ServedModel.create(Engine.from_model(FakeVAE(calibrated=True, maps=False)), Settings(), Metrics())
    assert prepare(model, None, None, None).map is False  # the score alone still works
    with pytest.raises(ApiError) as refused:
        prepare(model, None, None, None, want_map=True)
    assert refused.value.status == 409 and refused.value.code == "no_anomaly_map"
    assert "python -m export.calibrate" in refused.value.message


def test_the_map_is_the_calibrations_percentiles_of_the_models_per_pixel_terms():
    # The fake is a random linear model, so its maps mark nothing in particular: where a real model's map
    # points is tested in tests/integration/test_your_images.py and measured by bench/anomaly_maps.py.
    model = served(calibrated=True)
    request = prepare(model, None, None, None, want_map=True)
    images = in_distribution(2, 11)
    images[1, :, 0:2, 5:8] = 1.0
    result = run_to_completion(score(model, images, request))
    maps = result["map"]
    calibration = request.calibration.map
    expected = calibration(anomaly_map.pixel_terms(model.engine.model, model.engine.likelihood, images, 0))
    assert maps.shape == (2, *images.shape[2:]) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert ((maps >= 0) & (maps <= 1)).all() and maps.std() > 0.05
    assert [png[:8] for png in result["map_png"]] == [b"\x89PNG\r\n\x1a\n"] * 2
    alone = run_to_completion(score(model, images[1:], request))
    # an image's map does not depend on its batch (beyond the last bits of float32 matrix products)
    np.testing.assert_allclose(alone["map"][0], maps[1], atol=1e-6)
