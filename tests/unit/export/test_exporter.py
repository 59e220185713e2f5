"""export/exporter.py: the graphs it writes are valid ONNX, deterministic, with a dynamic batch axis and
the metadata asked for, and onnxruntime runs them through the service's loader."""

import numpy as np
import onnx

from model.core.artifact import load_model_dir


def test_graphs_are_checked_deterministic_and_batch_dynamic(exported):
    for name, inputs, outputs in (("encoder.onnx", ["image"], ["mean", "logvar"]), ("decoder.onnx", ["z"], ["logits"])):
        proto = onnx.load(exported / name)
        onnx.checker.check_model(proto, full_check=True)
        assert [i.name for i in proto.graph.input] == inputs and [o.name for o in proto.graph.output] == outputs
        assert not [n for n in proto.graph.node if n.op_type.startswith("Random")]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["latent_dim"] == "4" and meta["likelihood"] == "bernoulli"


def test_onnxruntime_runs_the_loaded_graphs(exported):
    model = load_model_dir(exported)
    mean, logvar = model.encode(np.zeros((3, 1, 8, 8), dtype=np.float32))
    assert mean.shape == logvar.shape == (3, 4)
    (logits,) = model.decode(mean)
    assert logits.shape == (3, 1, 8, 8)
