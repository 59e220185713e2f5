"""The protocol's checks of a model's outputs before they are encoded."""

from __future__ import annotations

import numpy as np
import pytest

from service.v2 import protocol
from service.v2.protocol import all_finite


@pytest.mark.parametrize("size", [1, protocol.SMALL_ARRAY, protocol.SMALL_ARRAY + 1, 4096])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_non_finite_element_on_either_side_of_its_small_array_path(size, dtype, bad):
    data = np.random.default_rng(size).standard_normal(size).astype(dtype).reshape(1, size)
    assert all_finite(data)
    data[0, size // 2] = bad
    assert not all_finite(data)
    assert not all_finite(data[:, ::-1])  # a view in another order


@pytest.mark.parametrize("size", [2, protocol.SMALL_ARRAY, 4096])
def test_all_finite_takes_the_largest_floats_as_finite_without_overflowing(size):
    for dtype in (np.float16, np.float32):
        assert all_finite(np.full((size,), np.finfo(dtype).max, dtype))
    huge = np.full((size,), np.finfo(np.float64).max)
    assert all_finite(huge) and all_finite(-huge)
