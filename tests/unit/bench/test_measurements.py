"""The measurements that are pure arithmetic over the rounds."""

from __future__ import annotations

import pytest

from bench.measurements import efficiency
from bench.plan import PLANS, Bench


def test_efficiency_is_taken_per_round_against_that_rounds_ceiling():
    # Ceiling 1000 rps is 1 ms a request; with 1 ms of in-process work the ideal is 500 rps.
    bench = Bench(
        PLANS["full"],
        servers={},
        pngs=[],
        routes={},
        windows={
            "product/encode_1_raw/c32": [{"rps": 250.0}, {"rps": 300.0}],
            "ceiling/encode_1_raw/c32": [{"rps": 1000.0}, {"rps": 500.0}],
        },
    )
    out = efficiency(bench, {"in_process": {"work_per_encode_request_us": 1000.0}})
    assert out["ideal_rps_c32"]["rounds"] == pytest.approx([500.0, 1000.0 / 3])
    assert out["encode_efficiency_c32"]["rounds"] == pytest.approx([0.5, 0.9])
    assert out["encode_efficiency_c32"]["median"] == pytest.approx(0.7)
