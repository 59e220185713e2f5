"""The anomaly request's settings and scores, without HTTP: defaults from the model's calibration, the
checks made before any image is read, and one score per image."""

import numpy as np
import pytest

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
