"""bench/anomaly_maps.py's pure parts: the figures per set and per defect kind, its docs table, the training cache."""

import json

import numpy as np

from bench import anomaly_maps as bench

SIZE = 8


def synthetic(kinds: list[str], good: int = 4, seed: int = 0) -> bench.Maps:
    """Defective images with a 2x2 defect each; the served map finds scratches and blobs exactly and puts a
    patch's pixels below everything else; the baseline is noise with the defect pixels a little higher."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((len(kinds), SIZE, SIZE), dtype=bool)
    for i in range(len(kinds)):
        r, c = rng.integers(0, SIZE - 1, 2)
        masks[i, r : r + 2, c : c + 2] = True
    served_bad = np.where(masks, 1.0, 0.5)
    for i, kind in enumerate(kinds):
        if kind == "patch":
            served_bad[i] = np.where(masks[i], 0.0, 0.5)
    served_good = np.full((good, SIZE, SIZE), 0.5)
    base_bad = rng.uniform(0, 1, masks.shape) + 0.2 * masks
    base_good = rng.uniform(0, 1, (good, SIZE, SIZE))
    images = np.zeros((len(kinds), 1, SIZE, SIZE), dtype=np.float32)
    return bench.Maps(
        served_good,
        served_bad,
        base_good,
        base_bad,
        np.arange(good, dtype=float),  # every good image scores below every defective one
        np.arange(good, good + len(kinds), dtype=float),
        masks,
        list(kinds),
        images[:good],
        images,
    )


KINDS = ["scratch", "blob", "patch"] * 4


def test_per_kind_scores_each_kind_against_every_good_image():
    maps = synthetic(KINDS)
    table = bench.per_kind(maps.served_bad, maps.served_good, maps.masks, maps.kinds)
    assert list(table) == ["scratch", "blob", "patch"]
    assert table["scratch"] == {"images": 4, "pixel_auroc": 1.0} and table["blob"]["pixel_auroc"] == 1.0
    assert table["patch"]["pixel_auroc"] == 0.0  # its defect pixels below every other pixel


def test_figures_of_the_served_map_and_the_baseline():
    fig = bench.figures(synthetic(["scratch", "blob"] * 5))
    served, base = fig["served"], fig["baseline"]
    assert served["pixel_auroc"] == 1.0 and abs(served["pro"] - 1.0) < 1e-9 and fig["pixel_target_met"]
    assert served["image_auroc"] == {"score": 1.0, "map_max": 1.0}
    assert 0.5 < base["pixel_auroc"] < 1.0 and set(base["image_auroc"]) == {"sum"}
    assert (fig["good_images"], fig["defective_images"]) == (4, 10)
    missed = bench.figures(synthetic(KINDS))
    assert missed["served"]["pixel_auroc"] < bench.TARGET_PIXEL_AUROC and not missed["pixel_target_met"]


def results() -> dict:
    model = {"name": "fake-vae", "version": "1.2.3"}
    textures = {
        name: {
            "model": {"name": f"texture-{name}", "version": "1.0.0"},
            "train": {"command": f"vae-train --data-dir {name}", "seconds": 61.4},
            "export": {"command": f"vae-export {name}", "seconds": 9.0},
        }
        for name in ("brick", "grass")
    }
    return {
        "command": "python -m bench.anomaly_maps",
        "machine": {"time": "2026-01-01 00:00 UTC"},
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "target_pixel_auroc": bench.TARGET_PIXEL_AUROC,
        "pro_max_fpr": bench.PRO_MAX_FPR,
        "model": model,
        "sets": {
            bench.FASHION_SET: {"model": model, "figures": bench.figures(synthetic(["scratch", "blob"] * 3))},
            bench.TEXTURE_SET: {
                "textures": textures,
                "figures": {
                    "brick": bench.figures(synthetic(KINDS)),
                    "grass": bench.figures(synthetic(KINDS, seed=1)),
                    bench.POOLED: bench.figures(synthetic(KINDS * 2, seed=2)),
                },
            },
        },
    }


def test_the_docs_table_marks_a_missed_target_and_lists_every_kind():
    text = bench.maps_section(json.loads(json.dumps(results())))  # as read back from the results file
    lines = text.splitlines()
    fashion = next(line for line in lines if line.startswith(f"| {bench.FASHION_SET} | 4 / 6 | `fake-vae` 1.2.3 |"))
    assert "| served | 1.000 | 1.000 | score 1.000, map max 1.000 | yes |" in fashion
    brick = next(line for line in lines if line.startswith(f"| {bench.TEXTURE_SET}: brick |"))
    assert brick.endswith("| **no** |")
    assert f"| {bench.TEXTURE_SET}: pooled | 4 / 24 | the three above | served |" in text
    assert "| set | scratch | blob | patch |" in text
    assert f"| {bench.FASHION_SET} | 1.000 / " in text and " | - |" in text  # no patches in that set
    assert "`vae-train --data-dir grass` 61 s" in text


def test_a_training_is_reused_only_when_completed_by_the_same_command_on_the_same_images(tmp_path):
    command = ["-m", "model.train", "--seed", "0"]
    assert bench.cached_training(tmp_path, command, "abc") is None  # nothing there
    (tmp_path / "best.pt").write_bytes(b"weights")
    stamp = {"command": command, "data_sha256": "abc", "seconds": 12.0, "completed": True}
    (tmp_path / bench.STAMP).write_text(json.dumps(stamp))
    assert bench.cached_training(tmp_path, command, "abc") == stamp
    assert bench.cached_training(tmp_path, [*command, "--epochs", "3"], "abc") is None
    assert bench.cached_training(tmp_path, command, "other images") is None
    (tmp_path / bench.STAMP).write_text(json.dumps({**stamp, "completed": False}))
    assert bench.cached_training(tmp_path, command, "abc") is None


def test_images_are_measured_as_an_upload_delivers_them():
    values = np.array([0.0, 0.5, 1.0 / 255 + 1e-4, 1.2, -0.1], dtype=np.float32)
    assert np.array_equal(bench.as_uploaded(values) * 255, [0, 128, 1, 255, 0])
