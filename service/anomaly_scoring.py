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

from model.core import anomaly
from model.core.anomaly import Calibration
from model.core.anomaly_map import MAP_NOTE, heatmap_png
from service.errors import ApiError, unprocessable
from service.served import ServedModel


@dataclass(frozen=True)
class AnomalyRequest:
    calibration: Calibration  # this model version's, from its anomaly.json
    fpr: float
    seed: int
    binarize_seed: int
    map: bool = False
    fpr_note: str | None = None  # why a default false-positive rate is coarser than 0.01

    @property
    def map_description(self) -> dict[str, Any] | None:
        maps = self.calibration.map
        if not self.map or maps is None:
            return None
        return {"method": MAP_NOTE, "samples": maps.samples, "smoothing_pixels": maps.smoothing, "seed": self.seed}

    @property
    def threshold(self) -> float:
        return float(self.calibration.threshold(self.fpr))


def prepare(
    served: ServedModel, fpr: float | None, seed: int | None, binarize_seed: int | None, want_map: bool = False
) -> AnomalyRequest:
    """The request's settings, its defaults from the calibration; 409 without one (or without a map
    calibration when a map is asked for), 422 for an fpr the request gives below one reference image.
    A default is never refused: one the references cannot resolve (an export made before defaults
    followed the reference's size) becomes the finest they can, and the answer says so. Checked
    before any image is read: no image can change the answer."""
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
    if want_map and calibration.map is None:
        raise ApiError(
            409,
            "no_anomaly_map",
            f"the model {served.name} {served.version} was calibrated before anomaly maps existed; calibrate it "
            "again with `python -m export.calibrate MODEL_DIR` (or export it again with vae-export), or ask "
            "without map=true",
        )
    references = len(calibration.reference)
    note = None
    if fpr is None:
        spec = served.engine.model.manifest.anomaly
        fpr = spec.fpr_default if spec is not None else anomaly.FPR_CHOICES[0]
        if fpr * references < 1:
            fpr = anomaly.default_fpr(references)
        note = anomaly.fpr_note(references, fpr)
    elif fpr * references < 1:
        raise unprocessable(
            "fpr_out_of_range",
            f"fpr must be at least 1/{references} (one of the model's {references} reference images), not {fpr:g}; "
            "leave it out for the model's default",
        )
    return AnomalyRequest(
        calibration,
        fpr,
        calibration.seed if seed is None else seed,
        calibration.binarize_seed if binarize_seed is None else binarize_seed,
        want_map,
        note,
    )


async def score(served: ServedModel, pixels: np.ndarray, request: AnomalyRequest) -> dict[str, Any]:
    """Per image: score, percentile, is_anomaly, the statistics the score is built from; with a map, the
    per-pixel percentiles (N, H, W) and their heatmaps as PNG bytes."""
    scores, stats = await served.run(
        "anomaly", 2 * len(pixels), served.engine.anomaly, pixels, request.seed, request.binarize_seed
    )
    maps: dict[str, Any] = {}
    if request.map and request.calibration.map is not None:
        rows = (1 + request.calibration.map.samples) * len(pixels)  # an encoder call and the draws' decodes
        percentiles, pngs = await served.run("anomaly_map", rows, _maps, served, pixels, request.seed)
        maps = {"map": percentiles, "map_png": pngs}
    return {
        **maps,
        "score": np.asarray(scores, dtype=np.float64),
        "percentile": np.asarray(request.calibration.percentile(scores), dtype=np.float64),
        "is_anomaly": np.asarray(scores > request.threshold),
        "statistics": {
            name: np.asarray(stats[name], dtype=np.float64) for name in request.calibration.score.statistics
        },
    }


def _maps(served: ServedModel, pixels: np.ndarray, seed: int) -> tuple[np.ndarray, list[bytes]]:
    """The maps (N, H, W) float32 and their heatmaps: in the worker thread with the model calls, as the
    PNG encoding of a large request is work too."""
    percentiles = served.engine.anomaly_map(pixels, seed)
    pngs = [heatmap_png(image, values) for image, values in zip(pixels, percentiles, strict=True)]
    return np.asarray(percentiles, dtype=np.float32), pngs
