"""The anomaly benchmark's outlier sets, its split and its docs table (no model, no scikit packages)."""

import numpy as np

from bench import anomaly as bench
from model.core.preprocess import PreprocessContract

CONTRACT = PreprocessContract()


def test_tuning_and_held_out_sets_are_disjoint_and_cover_every_set():
    assert not set(bench.TUNING) & set(bench.HELD_OUT)
    assert set(bench.TUNING) | set(bench.HELD_OUT) == set(bench.SETS) == set(bench.DESCRIPTIONS)
    assert set(bench.EXEMPT) <= set(bench.SETS) and "digits" not in bench.EXEMPT and "constant" not in bench.EXEMPT


def test_constant_images_cover_every_grey_level():
    images = bench.constant(CONTRACT, np.random.default_rng(0), None)
    assert images.shape == (256, 1, 28, 28)
    assert np.array_equal(np.rint(images[:, 0, 0, 0] * 255), np.arange(256))
    assert np.all(images.min(axis=(1, 2, 3)) == images.max(axis=(1, 2, 3)))


def test_a_shift_moves_the_content_and_blackens_the_border():
    image = np.zeros((1, 1, 28, 28), dtype=np.float32)
    image[0, 0, 10:18, 10:18] = 1.0
    shifted = bench.shift(CONTRACT, np.random.default_rng(3), image)[0, 0]
    assert shifted.sum() == image.sum()  # 8 + 8 px from the edge: nothing falls off
    rows, cols = np.nonzero(shifted)
    dy, dx = rows.min() - 10, cols.min() - 10
    assert 4 <= max(abs(dy), abs(dx)) <= 8


def test_an_occlusion_paints_one_square_black_or_white():
    image = np.full((1, 1, 28, 28), 0.5, dtype=np.float32)
    changed = bench.occlusion(CONTRACT, np.random.default_rng(1), image)[0, 0] != 0.5
    rows, cols = np.nonzero(changed)
    side = rows.max() - rows.min() + 1
    assert 8 <= side <= 14 and cols.max() - cols.min() + 1 == side and changed.sum() == side * side


def results(chosen_auroc: float, exempt_auroc: float, test_fpr: float) -> dict:
    def row(part, exempt, raw, chosen):
        scores = {
            "likelihood": {"auroc": raw, "auprc": 0.5, "fpr_at_95_tpr": 0.9},
            "typicality": {"auroc": chosen, "auprc": 0.9, "fpr_at_95_tpr": 0.1},
        }
        return {
            "part": part,
            "images": 10,
            "description": part + (" exempt" if exempt else ""),
            "exempt": exempt,
            "scores": scores,
        }

    calibration = {
        key: {"test_all": test_fpr, "test_held_out": test_fpr}
        for key in ("fpr_10permil", "fpr_50permil", "fpr_1permil")
    }
    return {
        "chosen": "typicality",
        "baseline": "likelihood",
        "target_auroc": 0.95,
        "model": {"name": "m", "version": "1"},
        "machine": {"time": "now"},
        "selection": "by test",
        "inliers": {"held_out": "test[5000:]", "tuning": "test[:5000]"},
        "sets": {"a": row("held_out", False, 0.2, chosen_auroc), "b": row("held_out", True, 0.6, exempt_auroc)},
        "calibration": {**calibration, "baseline_fpr_10permil_test_all": 0.03},
        "cost": {"anomaly_s_per_image": 1e-4, "elbo_k1_s_per_image": 8e-5, "ratio": 1.25, "batch": 16},
    }


def test_the_table_says_which_targets_are_met():
    text = bench.anomaly_section(results(chosen_auroc=0.97, exempt_auroc=0.7, test_fpr=0.012))
    assert "| 0.200 / 0.970 |" in text and "AUROC >= 0.95: yes" in text and "beat raw: yes" in text
    assert "is 1.20% (target 0.5-2%: yes)" in text and "1.25x" in text and "**no**" not in text


def test_the_table_prints_its_misses_in_bold():
    text = bench.anomaly_section(results(chosen_auroc=0.9, exempt_auroc=0.5, test_fpr=0.03))
    assert "AUROC >= 0.95: **no**" in text and "beat raw: **no**" in text and "(target 0.5-2%: **no**)" in text


def test_vae_export_calibrates_with_the_score_the_benchmark_chose():
    import json

    from export import calibrate

    recorded = json.loads((bench.RESULTS / "anomaly.json").read_text())
    chosen = recorded["candidates"][recorded["chosen"]]
    assert chosen == bench.CANDIDATES[recorded["chosen"]] | {"statistics": list(chosen["statistics"])}
    assert (calibrate.METHOD, calibrate.ESTIMATOR, list(calibrate.STATISTICS)) == (
        chosen["method"],
        chosen["estimator"],
        chosen["statistics"],
    )
