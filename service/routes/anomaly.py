"""POST /anomaly: is each image like the model's training data? A calibrated score per image.

The score, its reference scores and the default false-positive rate come from the model's own
calibration (anomaly.json, hashed in the manifest; model/core/anomaly.py). A model exported without
one answers 409: the request is well formed, but the model version it addressed cannot answer it
until it is calibrated, and retrying will not change that (503 would invite retries).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import responses
from service.errors import ApiError, unprocessable
from service.params import openapi_parameters
from service.routes.addressing import add_model_route
from service.routes.images import IMAGE_BODY, IMAGE_ERRORS, read_model_images
from service.schemas import AnomalyQuery, AnomalyResponse, error_responses
from service.state import model_route

router = APIRouter(tags=["images"])


async def anomaly(request: Request) -> Response:
    state, served, query = model_route(request, AnomalyQuery)
    engine = served.engine
    calibration = engine.calibration
    if calibration is None:  # refused before the upload is read: no image can change the answer
        raise ApiError(409, "no_anomaly_calibration", f"the model {served.name} {served.version} has no anomaly "
                       "calibration; calibrate it with `python -m export.calibrate MODEL_DIR` or export it again "
                       "with vae-export")
    spec = engine.model.manifest.anomaly
    fpr = query.fpr if query.fpr is not None else (spec.fpr_default if spec is not None else 0.01)
    references = len(calibration.reference)
    if fpr * references < 1:
        raise unprocessable("fpr_out_of_range", f"fpr must be at least 1/{references} (one of the model's "
                            f"{references} reference images), not {fpr:g}")
    seed = calibration.seed if query.seed is None else query.seed
    binarize = calibration.binarize_seed if query.binarize_seed is None else query.binarize_seed
    pixels = await read_model_images(request, state, served)
    scores, stats = await served.run("anomaly", 2 * len(pixels), engine.anomaly, pixels, seed, binarize)
    threshold = calibration.threshold(fpr)
    percentiles = calibration.percentile(scores)
    names = calibration.score.statistics
    results = [{"index": i, "score": float(scores[i]), "percentile": float(percentiles[i]),
                "is_anomaly": bool(scores[i] > threshold),
                "statistics": {name: float(stats[name][i]) for name in names}} for i in range(len(pixels))]
    return responses.json_response({"model": served.ref, "method": calibration.score.name, "fpr": fpr,
                                    "threshold": threshold, "reference_images": references, "seed": seed,
                                    "binarize_seed": binarize, "data_space": engine.data_space(binarize),
                                    "results": results})


add_model_route(router, "POST", "/anomaly", anomaly, response_model=AnomalyResponse,
                responses={**IMAGE_ERRORS, **error_responses(409)},
                openapi_extra={**IMAGE_BODY, **openapi_parameters(AnomalyQuery)},
                summary="Anomaly score per image: how unlike the training data, with its calibrated percentile")
