"""POST /anomaly: is each image like the model's training data? A calibrated score per image
(the computation is service/anomaly_scoring.py, shared with the v2 protocol's `M.anomaly`)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import anomaly_scoring as scoring
from service import responses
from service.params import openapi_parameters
from service.routes.addressing import add_model_route
from service.routes.images import IMAGE_BODY, IMAGE_ERRORS, read_model_images
from service.schemas import AnomalyQuery, AnomalyResponse, error_responses
from service.state import model_route

router = APIRouter(tags=["images"])


async def anomaly(request: Request) -> Response:
    state, served, query = model_route(request, AnomalyQuery)
    prepared = scoring.prepare(served, query.fpr, query.seed, query.binarize_seed, query.map)
    pixels = await read_model_images(request, state, served)
    out = await scoring.score(served, pixels, prepared)
    results = [
        {
            "index": i,
            "score": float(out["score"][i]),
            "percentile": float(out["percentile"][i]),
            "is_anomaly": bool(out["is_anomaly"][i]),
            "statistics": {name: float(values[i]) for name, values in out["statistics"].items()},
            **(
                {"map": _rounded(out["map"][i]), "map_png": responses.base64_text(out["map_png"][i])}
                if "map" in out
                else {}
            ),
        }
        for i in range(len(pixels))
    ]
    return responses.json_response(
        {
            "model": served.ref,
            "method": prepared.calibration.score.name,
            "fpr": prepared.fpr,
            "threshold": prepared.threshold,
            "reference_images": len(prepared.calibration.reference),
            "seed": prepared.seed,
            "binarize_seed": prepared.binarize_seed,
            "data_space": served.engine.data_space(prepared.binarize_seed),
            **({"fpr_note": prepared.fpr_note} if prepared.fpr_note else {}),
            **({"map": prepared.map_description} if prepared.map else {}),
            "results": results,
        }
    )


def _rounded(values: np.ndarray) -> list[list[float]]:
    """A map as JSON rows, to 4 decimals: a percentile finer than 1e-4 says nothing, and the body stays small."""
    rows: list[list[float]] = np.round(values.astype(np.float64), 4).tolist()
    return rows


add_model_route(
    router,
    "POST",
    "/anomaly",
    anomaly,
    response_model=AnomalyResponse,
    responses={**IMAGE_ERRORS, **error_responses(409)},
    openapi_extra={**IMAGE_BODY, **openapi_parameters(AnomalyQuery)},
    summary="Anomaly score per image: how unlike the training data, with its calibrated percentile",
)
