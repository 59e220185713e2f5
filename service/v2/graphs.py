"""The ONNX graphs as v2 models, described from their onnxruntime sessions: names, datatypes, shapes
(-1 for variable dimensions), platform `onnx_onnxv1`; run as they are."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from service.routes.remote import Geometry
from service.served import ServedModel
from service.v2.codec import ProtocolError
from service.v2.spec import Call, Outputs, TensorSpec, V2Model, checked_inputs

# ONNX tensor element types (as onnxruntime names them) -> protocol datatypes.
ONNX_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
_SPECS: weakref.WeakKeyDictionary[Any, tuple[list[TensorSpec], list[TensorSpec]]] = weakref.WeakKeyDictionary()


def graph_specs(session: Any, outputs: bool) -> list[TensorSpec]:
    """A session's (inputs, outputs), read once per session: onnxruntime builds them anew on each
    call, a cost per request that nothing about them justifies (they never change)."""
    specs = _SPECS.get(session)
    if specs is None:
        specs = (_tensor_specs(session.get_inputs()), _tensor_specs(session.get_outputs()))
        _SPECS[session] = specs
    return specs[1] if outputs else specs[0]


def _tensor_specs(args: Any) -> list[TensorSpec]:
    """onnxruntime's NodeArgs as specs; a symbolic or unknown dimension is -1."""
    return [
        TensorSpec(
            a.name,
            ONNX_DATATYPES.get(a.type, a.type),
            tuple(d if isinstance(d, int) and d >= 0 else -1 for d in a.shape),
        )
        for a in args
    ]


def checked_sizes(call: Call, suffix: str, feeds: dict[str, np.ndarray], name: str) -> int:
    """A fully convolutional model's graphs take images of many sizes: only those its manifest's `sizes` allow
    (the memory of its attention grows with the fourth power of the side), within the request pixel limit, as
    the remote VAE protocol's routes (their `Geometry`). Returns the work in rows of the model's own image size.
    Graphs of one size are held to it by their shapes."""
    manifest = call.served.engine.model.manifest
    if manifest.sizes is None or len(manifest.latent) != 3:
        return 0
    geometry = Geometry.of(manifest)
    work = 0
    for array in feeds.values():
        if array.ndim != 4:
            continue
        scale = geometry.factor if suffix == "decoder" else 1
        image_h, image_w = array.shape[2] * scale, array.shape[3] * scale
        if not geometry.allows(image_h, image_w):
            raise ProtocolError(
                f"model '{name}' takes images of {geometry.low} to {geometry.high} pixels a side, multiples of "
                f"{geometry.multiple} (a latent of 1/{geometry.factor} of that); this input means {image_h} x {image_w}"
            )
        pixels = len(array) * image_h * image_w
        if pixels > call.state.settings.max_request_pixels:
            raise ProtocolError(
                f"model '{name}': {len(array)} images of {image_h} x {image_w} are {pixels} pixels, over "
                f"VAE_MAX_REQUEST_PIXELS ({call.state.settings.max_request_pixels}); send fewer or smaller"
            )
        work = max(work, geometry.rows(len(array), image_h, image_w))
    return work


def graph_model(suffix: str) -> V2Model:
    def session(served: ServedModel) -> Any:  # an onnxruntime InferenceSession
        return getattr(served.engine.model, suffix)

    async def run(call: Call) -> tuple[Outputs, dict[str, Any]]:
        name = f"{call.served.name}.{suffix}"
        specs = graph_specs(session(call.served), outputs=False)
        inputs = checked_inputs(call, specs, name)
        missing = [s.name for s in specs if s.name not in inputs]
        if missing:
            raise ProtocolError(f"model '{name}' needs input {', '.join(map(repr, missing))}")
        feeds = {s.name: np.ascontiguousarray(inputs[s.name].data) for s in specs}
        sized = checked_sizes(call, suffix, feeds, name)
        outputs = graph_specs(session(call.served), outputs=True)
        engine = call.served.engine
        if suffix == "encoder" and call.served.batcher is not None and engine.model.io.native and engine.levels is None:
            # Through the micro-batcher, as /encode: the same onnxruntime call (OnnxVAE.encode feeds
            # `image` and returns the graph's outputs in order), shared with concurrent requests. Only for
            # vae-export's graphs: an imported graph's own names and values are not /encode's, and a
            # two-level model's batches run its `features` graph, not this one.
            mean, logvar, _, _ = await call.served.encode(feeds["image"], sample=False, seed=0)
            results = [mean, logvar]
        else:
            rows = max(max((len(x) for x in feeds.values()), default=1), sized)
            results = await call.served.run(suffix, rows, session(call.served).run, None, feeds)
        return {spec.name: result for spec, result in zip(outputs, results, strict=False)}, {}

    return V2Model(
        suffix,
        "onnx_onnxv1",
        lambda served: graph_specs(session(served), outputs=False),
        lambda served: graph_specs(session(served), outputs=True),
        run,
        f"the {suffix} ONNX graph as exported, run by onnxruntime",
    )
