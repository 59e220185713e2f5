import json
import math

import pytest

from bench import gaussian_scales


def run(tmp_path, name, test_elbos):
    folder = tmp_path / name
    folder.mkdir()
    folder.joinpath("metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": i + 1, "test_elbo": e, "lr": 1e-3}) + "\n" for i, e in enumerate(test_elbos))
    )
    return folder


def test_the_curve_is_the_8_bit_images_elbo_in_bits():
    (point,) = gaussian_scales.eight_bit_curve([{"epoch": 1, "test_elbo": 100.0, "lr": 1e-3}], dims=2)
    assert point["test_elbo_nats"] == pytest.approx(100.0 - 2 * math.log(256))
    assert point["test_bits_per_dim"] == pytest.approx((2 * math.log(256) - 100.0) / (2 * math.log(2)))


def test_runs_are_compared_at_the_last_epoch_both_reached(tmp_path):
    shared = run(tmp_path, "shared", [300.0, 400.0])
    per_pixel = run(tmp_path, "per_pixel", [350.0, 500.0, 900.0])  # ran on: its third epoch is not compared
    result = gaussian_scales.compare({"shared": shared, "per_pixel": per_pixel})
    assert result["compared_at_epoch"] == 2 and result["better"] == "per_pixel"
    text = gaussian_scales.section(result)
    assert "| 3 |  | " in text and "per-pixel sigma is shipped" in text


def test_the_main_writes_the_json(tmp_path):
    out = tmp_path / "out.json"
    assert (
        gaussian_scales.main(
            [f"a={run(tmp_path, 'a', [500.0])}", f"b={run(tmp_path, 'b', [400.0])}", "--out", str(out)]
        )
        == 0
    )
    assert json.loads(out.read_text())["better"] == "a"
