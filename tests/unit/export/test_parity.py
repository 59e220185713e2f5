"""export/parity.py: the check fails beyond the tolerance (NaN included), and the figures an export
records are within it."""

import pytest

from export import parity
from model.core.manifest import Manifest


def test_parity_check_fails_beyond_tolerance():
    with pytest.raises(parity.ParityError, match="decoder.logits"):
        parity.check({"decoder.logits": 2e-4}, {"encoder": 0.0})
    with pytest.raises(parity.ParityError, match="batch.encoder nan"):
        parity.check({"decoder.logits": 0.0}, {"encoder": float("nan")})
    parity.check({"decoder.logits": 5e-5}, {"encoder": 0.0})


def test_parity_figures_are_recorded_and_within_tolerance(exported):
    manifest = Manifest.read(exported / "manifest.json")
    assert manifest.parity["images"] == 64
    assert max(manifest.parity["max_abs_diff"].values()) <= 1e-4
    assert max(manifest.parity["batch_max_abs_diff"].values()) <= 1e-4
    assert set(manifest.int8.speed) and set(manifest.int8.parity) == set(manifest.parity["max_abs_diff"])
