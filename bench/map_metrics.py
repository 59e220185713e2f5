"""Scores for per-pixel anomaly maps against known defect masks (bench/defects.py): pixel AUROC, image AUROC and
the per-region overlap (PRO) of Bergmann et al., "The MVTec Anomaly Detection Dataset" (IJCV 2021), section 4.2.

Maps are (N, H, W) floats, higher meaning more anomalous; masks are (N, H, W) bool, True on defect pixels.
`good_maps` are the maps of defect-free images: their pixels count as negatives.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

# Components join pixels that touch by an edge or a corner, within one image only (never across the N axis).
EIGHT_NEIGHBOURS_PER_IMAGE = np.zeros((3, 3, 3), dtype=bool)
EIGHT_NEIGHBOURS_PER_IMAGE[1] = True


def pixel_auroc(maps: np.ndarray, masks: np.ndarray, good_maps: np.ndarray | None = None) -> float:
    """The ROC AUC of the map values as a per-pixel classifier of the masks, over every pixel of every image."""
    scores, labels = pixels(maps, masks, good_maps)
    return float(roc_auc_score(labels, scores))


def image_auroc(scores_good: np.ndarray, scores_bad: np.ndarray) -> float:
    """The ROC AUC of one score per image, defective images being the positives."""
    labels = np.r_[np.zeros(len(scores_good)), np.ones(len(scores_bad))]
    return float(roc_auc_score(labels, np.r_[scores_good, scores_bad]))


def pixels(maps: np.ndarray, masks: np.ndarray, good_maps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's map value and label (True on a defect), the good images' pixels last, all labelled False."""
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must have the same shape")
    scores, labels = maps.ravel(), masks.ravel().astype(bool)
    if good_maps is not None:
        scores = np.r_[scores, good_maps.ravel()]
        labels = np.r_[labels, np.zeros(good_maps.size, dtype=bool)]
    return scores, labels


def pro_curve(
    maps: np.ndarray, masks: np.ndarray, good_maps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve at every threshold t the map values take, from the highest down: (fpr, pro), both rising.

    PRO(t) = mean over the connected components C_k of the masks (8-connectivity, within one image) of
    |{p in C_k : map(p) >= t}| / |C_k|; FPR(t) = the share of non-defect pixels with map >= t.
    PRO(t) is a sum over defect pixels above t of 1 / (K |C_k(p)|), so one sort gives it at every threshold.
    The curve starts at (0, 0) (a threshold above every value) and ends at (1, 1).
    """
    scores, labels = pixels(maps, masks, good_maps)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    components, count = ndimage.label(masks.astype(bool), structure=EIGHT_NEIGHBOURS_PER_IMAGE)  # (N, H, W), 0..K
    if count == 0 or labels.all():
        raise ValueError("PRO needs defect pixels and defect-free pixels")
    region = components.ravel()[masks.ravel().astype(bool)]  # (P,) component id of each defect pixel, 1..K
    weight = 1.0 / (count * np.bincount(region)[region])  # (P,)
    order = np.argsort(scores[labels])
    defect_values, defect_weights = scores[labels][order], weight[order]
    above = np.r_[np.cumsum(defect_weights[::-1])[::-1], 0.0]  # above[i]: the weight of defect_values[i:]
    clean_values = np.sort(scores[~labels])
    thresholds = np.unique(scores)[::-1]  # (T,) from the highest
    pro = above[np.searchsorted(defect_values, thresholds, side="left")]
    fpr = 1.0 - np.searchsorted(clean_values, thresholds, side="left") / len(clean_values)
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def pro_score(
    maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3, *, good_maps: np.ndarray | None = None
) -> float:
    """The area under the PRO curve for FPR in [0, max_fpr], divided by max_fpr (MVTec AD uses 0.3).

    1.0 for a map that puts every defect pixel above every other pixel; about max_fpr / 2 for a random map,
    whose PRO equals its FPR. The curve is cut at max_fpr by linear interpolation, then integrated by trapezoids.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = pro_curve(maps, masks, good_maps)
    inside = int(np.searchsorted(fpr, max_fpr, side="right"))  # points with fpr <= max_fpr; fpr[-1] == 1
    fpr_cut, pro_cut = fpr[:inside], pro[:inside]
    if fpr_cut[-1] < max_fpr:  # interpolate the point at max_fpr between the last point inside and the next
        share = (max_fpr - fpr[inside - 1]) / (fpr[inside] - fpr[inside - 1])
        fpr_cut = np.r_[fpr_cut, max_fpr]
        pro_cut = np.r_[pro_cut, pro[inside - 1] + share * (pro[inside] - pro[inside - 1])]
    return float(np.trapezoid(pro_cut, fpr_cut) / max_fpr)
