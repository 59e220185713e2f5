"""The ONNX graphs as v2 models: their tensors read from a session's own description, once per session."""

from types import SimpleNamespace

from service.v2.graphs import graph_specs
from service.v2.spec import TensorSpec


class Session:
    """What graph_specs reads of an onnxruntime session, counting how often it is asked."""

    def __init__(self) -> None:
        self.asked = 0

    def get_inputs(self):
        self.asked += 1
        return [SimpleNamespace(name="z", type="tensor(float)", shape=["batch", 32])]

    def get_outputs(self):
        self.asked += 1
        return [
            SimpleNamespace(name="logits", type="tensor(float)", shape=["batch", 1, 28, 28]),
            SimpleNamespace(name="ids", type="tensor(int64)", shape=[None, -1]),
            SimpleNamespace(name="odd", type="tensor(complex64)", shape=[2]),
        ]


def test_dimensions_without_a_size_are_minus_one_and_types_are_the_protocols():
    session = Session()
    assert graph_specs(session, outputs=False) == [TensorSpec("z", "FP32", (-1, 32))]
    assert graph_specs(session, outputs=True) == [
        TensorSpec("logits", "FP32", (-1, 1, 28, 28)),
        TensorSpec("ids", "INT64", (-1, -1)),
        TensorSpec("odd", "tensor(complex64)", (2,)),  # a type the protocol has no name for keeps ONNX's
    ]


def test_a_session_is_described_once():
    session = Session()
    for _ in range(5):
        graph_specs(session, outputs=False)
        graph_specs(session, outputs=True)
    assert session.asked == 2
