"""bench/defects.py's defect sets with known defect pixels, and bench/map_metrics.py's scores for anomaly maps."""

import numpy as np
import pytest
from scipy import ndimage

from bench import defects, map_metrics
from tests.conftest import synthetic_images


def garments(count: int, size: int = 28, seed: int = 0) -> np.ndarray:
    """Bright rectangles on black, (N, 1, size, size) in [0, 1]: Fashion-MNIST's layout without its files."""
    return synthetic_images(count, size, seed)[:, None].astype(np.float32) / 255


BACKGROUNDS = {
    "black": lambda: np.zeros((1, 28, 28), dtype=np.float32),
    "white": lambda: np.ones((1, 28, 28), dtype=np.float32),
    "grey": lambda: np.full((1, 28, 28), 0.5, dtype=np.float32),
    "garment": lambda: garments(1)[0],
    "brick": lambda: defects.texture_crops("brick", 32, 1, "test", 0)[0],
    "three_channels": lambda: np.random.default_rng(0).uniform(0, 1, (3, 32, 32)).astype(np.float32),
}


@pytest.mark.parametrize("background", BACKGROUNDS)
@pytest.mark.parametrize("kind", defects.KINDS)
def test_a_defect_changes_exactly_its_mask_and_each_pixel_by_a_visible_amount(kind, background):
    image = BACKGROUNDS[background]()
    rng = np.random.default_rng(1)
    for _ in range(10):
        defective, mask = defects.add_defect(image, rng, kind)
        change = np.abs(defective - image).max(axis=0)  # (H, W)
        assert defective.dtype == np.float32 and defective.shape == image.shape
        assert defective.min() >= 0 and defective.max() <= 1
        assert np.array_equal(mask, change > 0) and change[mask].min() >= defects.VISIBLE
        assert defects.MIN_AREA <= mask.mean() <= defects.MAX_AREA


def test_scratches_are_thin_and_blobs_are_filled():
    rng = np.random.default_rng(2)
    image = np.full((1, 28, 28), 0.5, dtype=np.float32)
    for _ in range(30):
        _, scratch = defects.add_defect(image, rng, "scratch")
        _, blob = defects.add_defect(image, rng, "blob")
        assert not ndimage.binary_erosion(scratch, np.ones((3, 3))).any()  # at most 2 px wide
        assert ndimage.binary_erosion(blob, np.ones((3, 3))).any()


def test_a_patch_holds_the_source_images_content():
    image = np.zeros((1, 28, 28), dtype=np.float32)
    source = np.full((1, 40, 40), 0.75, dtype=np.float32)
    defective, mask = defects.add_defect(image, np.random.default_rng(3), "patch", source=source)
    rows, cols = np.nonzero(mask)
    assert mask.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # one full rectangle
    assert np.all(defective[0][mask] == 0.75)


def test_an_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="scratch, blob, patch"):
        defects.add_defect(np.zeros((1, 28, 28), dtype=np.float32), np.random.default_rng(0), "dent")


def test_fashion_defects_are_the_first_n_images_each_with_one_defect_mostly_on_the_garment():
    images = garments(60)
    defective, masks, kinds = defects.fashion_defects(images, 45, seed=4)
    assert defective.shape == (45, 1, 28, 28) and masks.shape == (45, 28, 28) and masks.dtype == bool
    assert all(kinds.count(kind) == 15 for kind in defects.KINDS)
    assert np.array_equal((defective != images[:45]).any(axis=1), masks)
    on_garment = [(masks[i] & (images[i, 0] > defects.OBJECT_LEVEL)).any() for i in range(45)]
    assert np.mean(on_garment) >= 0.6


def test_the_defect_sets_are_the_same_for_a_seed_and_differ_across_seeds():
    images = garments(20)
    first, again, other = (defects.fashion_defects(images, 12, seed) for seed in (5, 5, 6))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert not np.array_equal(first[1], other[1])
    textures = [defects.texture_defects("grass", 32, 6, seed) for seed in (5, 5, 6)]
    assert all(np.array_equal(a, b) for a, b in zip(textures[0][:3], textures[1][:3], strict=True))
    assert not np.array_equal(textures[0][2], textures[2][2])


def rows_in_texture(name: str, crops: np.ndarray) -> np.ndarray:
    """The top row of every place in texture `name` that each crop (N, 1, s, s) matches exactly; each must match."""
    grey = defects.texture(name)
    size = crops.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(grey, (size, size))  # (H-s+1, W-s+1, s, s)
    rows = []
    for crop in crops[:, 0]:
        candidates = np.argwhere((windows[:, :, 0, :] == crop[0]).all(axis=-1))  # by the crop's first row
        found = [row for row, col in candidates if np.array_equal(windows[row, col], crop)]
        assert found, "a crop is not a piece of its texture"
        rows.extend(found)
    return np.array(rows)


@pytest.mark.parametrize("name", defects.TEXTURES)
def test_train_and_test_texture_crops_come_from_disjoint_rows(name):
    assert defects.texture(name).shape == (256, 256)  # 512 halved
    train = defects.texture_crops(name, 32, 20, "train", seed=7)
    test = defects.texture_crops(name, 32, 20, "test", seed=7)
    assert train.shape == test.shape == (20, 1, 32, 32) and train.dtype == np.float32
    assert rows_in_texture(name, train).max() + 32 <= rows_in_texture(name, test).min()


def test_a_crop_larger_than_the_test_rows_is_refused():
    with pytest.raises(ValueError, match="size must be 1 to 77"):
        defects.texture_crops("brick", 100, 1, "test", seed=0)


def test_texture_defects_are_good_test_crops_and_defective_test_crops():
    good, defective, masks, kinds = defects.texture_defects("gravel", 32, 9, seed=8)
    assert good.shape == defective.shape == (9, 1, 32, 32) and masks.shape == (9, 32, 32)
    assert sorted(kinds) == sorted(defects.KINDS * 3)
    assert rows_in_texture("gravel", good).min() >= defects.region_rows(256, "test")[0]
    assert all(defects.MIN_AREA <= mask.mean() <= defects.MAX_AREA for mask in masks)


def square_masks(count: int, seed: int) -> np.ndarray:
    """(count, 32, 32) masks, each with one to three squares of 2-5 px: many regions of several sizes."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, 32, 32), dtype=bool)
    for mask in masks:
        for _ in range(rng.integers(1, 4)):
            side = rng.integers(2, 6)
            top, left = rng.integers(0, 32 - side, 2)
            mask[top : top + side, left : left + side] = True
    return masks


def test_pro_is_one_for_a_perfect_map():
    masks = square_masks(200, seed=9)
    assert map_metrics.pro_score(masks.astype(float), masks) == pytest.approx(1.0)
    noisy = masks + np.random.default_rng(0).uniform(0, 0.9, masks.shape)  # still every defect above the rest
    assert map_metrics.pro_score(noisy, masks, 0.05) == pytest.approx(1.0)


@pytest.mark.parametrize("max_fpr", [0.3, 0.1])
def test_pro_of_a_random_map_is_about_half_the_max_fpr(max_fpr):
    masks = square_masks(500, seed=10)
    maps = np.random.default_rng(11).uniform(0, 1, masks.shape)
    assert map_metrics.pro_score(maps, masks, max_fpr) == pytest.approx(max_fpr / 2, rel=0.1)


def test_pro_for_a_map_that_finds_some_regions_lies_between():
    masks = square_masks(500, seed=12)
    components, count = ndimage.label(masks, structure=map_metrics.EIGHT_NEIGHBOURS_PER_IMAGE)
    found = np.isin(components, np.arange(2, count + 1, 2))  # every other region
    maps = np.where(found, 1.0, np.random.default_rng(13).uniform(0, 0.9, masks.shape))
    share = (count // 2) / count
    # found regions count fully at FPR 0; the others, like the clean pixels, rise with the FPR
    expected = share + (1 - share) * 0.3 / 2
    assert map_metrics.pro_score(maps, masks) == pytest.approx(expected, abs=0.01)
    assert 0.15 < expected < 1


def test_pro_averages_over_regions_joined_by_corners_not_over_pixels():
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # one region under 8-connectivity
    mask[0, 4:, 4:] = True  # a second region, of 16 px
    found = mask.copy()
    found[0, 1, 1] = False
    # at FPR 0, PRO is (1/2 + 1) / 2; it then rises linearly to 1 at FPR 1: 0.825 at 0.3
    assert map_metrics.pro_score(found.astype(float), mask) == pytest.approx((0.75 + 0.825) / 2)


def test_pro_needs_defect_pixels_and_clean_pixels():
    with pytest.raises(ValueError, match="defect pixels"):
        map_metrics.pro_score(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), dtype=bool))


def test_pixel_auroc_is_one_for_the_mask_a_half_for_noise_and_counts_the_good_images():
    masks = square_masks(200, seed=14)
    rng = np.random.default_rng(15)
    assert map_metrics.pixel_auroc(masks.astype(float), masks) == 1.0
    assert map_metrics.pixel_auroc(rng.uniform(0, 1, masks.shape), masks) == pytest.approx(0.5, abs=0.01)
    good = np.ones((100, 32, 32))  # good images lit up everywhere: ties with every defect pixel
    clean, lit = (~masks).sum(), good.size
    expected = (clean + 0.5 * lit) / (clean + lit)
    assert map_metrics.pixel_auroc(masks.astype(float), masks, good) == pytest.approx(expected)


def test_image_auroc_ranks_defective_images_above_good_ones():
    assert map_metrics.image_auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert map_metrics.image_auroc(np.array([0.0, 2.0]), np.array([1.0, 3.0])) == 0.75
