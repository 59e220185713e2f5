"""What a v2 model is here, and its name. Each repository model M is served as these v2 models,
with every version of M:

- `M.encoder`, `M.decoder`: the two ONNX graphs as they are (service/v2/graphs.py), so a client
  written for Triton serving those two files works unchanged;
- `M.encode`, `M.elbo`, `M.reconstruct`, `M.decode`, `M.sample`: the service's own operations
  (service/v2/operations.py), equal to the native routes for the same images and seeds.
"""

from __future__ import annotations

from service.v2.graphs import graph_model
from service.v2.operations import OPERATIONS
from service.v2.spec import V2Model

MODELS: dict[str, V2Model] = {
    model.suffix: model for model in (graph_model("encoder"), graph_model("decoder"), *OPERATIONS)
}


def split_name(v2_name: str) -> tuple[str, V2Model] | None:
    """'M.encoder' -> ('M', the encoder model); None when the suffix names no v2 model."""
    model, dot, suffix = v2_name.rpartition(".")
    if not dot or not model or suffix not in MODELS:
        return None
    return model, MODELS[suffix]


def v2_names(model: str) -> list[str]:
    return [f"{model}.{suffix}" for suffix in MODELS]
