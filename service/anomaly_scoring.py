"""The anomaly score of a request's images, shared by POST /anomaly and the v2 `M.anomaly` model.

The score, its reference scores and the default false-positive rate come from the model's own
calibration (anomaly.json, hashed in the manifest; model/core/anomaly.py). A model exported without
one answers 409: the request is well formed, but the model version it addressed cannot answer it
until it is calibrated, and retrying will not change that (503 would invite retries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.core.anomaly import Calibration
from service.errors import ApiError, unprocessable
from service.served import ServedModel


@dataclass(frozen=True)
class AnomalyRequest:
    calibration: Calibration  # this model version's, from its anomaly.json
    fpr: float
    seed: int
    binarize_seed: int

    @property
    def threshold(self) -> float:
        return float(self.calibration.threshold(self.fpr))


def prepare(served: ServedModel, fpr: float | None, seed: int | None, binarize_seed: int | None) -> AnomalyRequest:
    """The request's settings, its defaults from the calibration; 409 without one, 422 for an fpr below
    one reference image. Checked before any image is read: no image can change the answer."""
    served.engine.require_likelihood("the anomaly score (POST /anomaly)")
    calibration = served.engine.calibration
    if calibration is None:
        raise ApiError(
            409,
            "no_anomaly_calibration",
            f"the model {served.name} {served.version} has no anomaly "
            "calibration; calibrate it with `python -m export.calibrate MODEL_DIR` or export it again "
            "with vae-export; for an imported model, import it again with --calibrate-dir (a folder of "
            "in-distribution images)",
        )
    spec = served.engine.model.manifest.anomaly
    fpr = fpr if fpr is not None else (spec.fpr_default if spec is not None else 0.01)
    references = len(calibration.reference)
    if fpr * references < 1:
        raise unprocessable(
            "fpr_out_of_range",
            f"fpr must be at least 1/{references} (one of the model's {references} reference images), not {fpr:g}",
        )
    return AnomalyRequest(
        calibration,
        fpr,
        calibration.seed if seed is None else seed,
        calibration.binarize_seed if binarize_seed is None else binarize_seed,
    )


async def score(served: ServedModel, pixels: np.ndarray, request: AnomalyRequest) -> dict[str, Any]:
    """Per image: score, percentile, is_anomaly, and the statistics the score is built from."""
    scores, stats = await served.run(
        "anomaly", 2 * len(pixels), served.engine.anomaly, pixels, request.seed, request.binarize_seed
    )
    return {
        "score": np.asarray(scores, dtype=np.float64),
        "percentile": np.asarray(request.calibration.percentile(scores), dtype=np.float64),
        "is_anomaly": np.asarray(scores > request.threshold),
        "statistics": {
            name: np.asarray(stats[name], dtype=np.float64) for name in request.calibration.score.statistics
        },
    }
