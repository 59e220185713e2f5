"""bench/autoencoder_cost.py's parts on the shipped autoencoder, at the smallest size only."""

from bench import autoencoder_cost as bench
from model.core.manifest import Manifest

MODEL_DIR = bench.MODEL_ROOT / "1.0.0"


def test_the_cells_leave_out_batches_too_large_for_the_machine():
    keys = {c.key for c in bench.cells()}
    assert "decode/512px/b1" in keys and "decode/512px/b4" not in keys and "encode/256px/b4" in keys


def test_inputs_are_images_in_minus_1_1_or_latents_of_the_downsampled_size():
    manifest = Manifest.read(MODEL_DIR / "manifest.json")
    (image,) = bench.feed(manifest, bench.Cell("encode", 64, 4)).values()
    (latent,) = bench.feed(manifest, bench.Cell("decode", 64, 4)).values()
    assert image.shape == (4, 1, 64, 64) and image.min() >= -1 and image.max() <= 1
    assert latent.shape == (4, 4, 16, 16)
    assert bench.attention_scores_mib(manifest, bench.Cell("decode", 512, 1)) == 1024


def test_one_cells_memory_is_measured_from_the_peak_over_the_call():
    figures = bench.one_cell_memory(MODEL_DIR, bench.Cell("decode", 28, 1), threads=1)
    assert figures["rss_before_mib"] > 0 and 0 <= figures["peak_growth_mib"] < 100
    assert figures["peak_growth_mib"] >= figures["rss_kept_mib"]
