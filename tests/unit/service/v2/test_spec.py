"""The checks every v2 model applies: its input tensors against their specs, its parameters as the
native route's query model."""

from __future__ import annotations

import numpy as np
import pytest

from service.schemas import ElboQuery
from service.v2.codec import ProtocolError, Tensor
from service.v2.spec import TensorSpec, check_tensor, knobs

SPEC = TensorSpec("image", "FP32", (-1, 1, 28, 28))


def test_a_tensor_fits_its_spec():
    check_tensor(Tensor("image", "FP32", np.zeros((3, 1, 28, 28), np.float32)), SPEC, max_rows=64)


@pytest.mark.parametrize(
    "datatype, shape, message",
    [
        ("FP64", (1, 1, 28, 28), "must be FP32, not FP64"),
        ("FP32", (1, 28, 28), r"has shape \[1, 28, 28\]; the model takes \[-1, 1, 28, 28\]"),
        ("FP32", (1, 3, 28, 28), "has shape"),
        ("FP32", (65, 1, 28, 28), "65 rows; 1 to 64 are accepted"),
        ("FP32", (0, 1, 28, 28), "0 rows"),
    ],
)
def test_a_tensor_that_does_not_fit_says_how(datatype, shape, message):
    with pytest.raises(ProtocolError, match=message):
        check_tensor(Tensor("image", datatype, np.zeros(shape)), SPEC, max_rows=64)


def test_parameters_take_the_native_routes_defaults_and_ranges():
    assert knobs(ElboQuery, {"binary_data_output": True}, "m.elbo") == ElboQuery()
    assert knobs(ElboQuery, {"k": 5, "seed": 3}, "m.elbo").k == 5
    with pytest.raises(ProtocolError, match="parameter k: Input should be greater than or equal to 1"):
        knobs(ElboQuery, {"k": 0}, "m.elbo")
    with pytest.raises(ProtocolError, match="model 'm.elbo' has no parameter 'temperature'; it takes k, seed"):
        knobs(ElboQuery, {"temperature": 1.0}, "m.elbo")
