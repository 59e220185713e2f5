"""What a v2 model is here. Each repository model M is served as several v2 models:

- `M.encoder`, `M.decoder`: the two ONNX graphs as they are, described from the onnxruntime session
  (names, datatypes, shapes with -1 for variable dimensions, platform `onnx_onnxv1`), so a client
  written for Triton serving those two files works unchanged.
- `M.encode`, `M.elbo`, `M.reconstruct`, `M.decode`, `M.sample`: the service's own operations, with
  their knobs in the request's `parameters`. They call the same engine functions, through the same
  `ServedModel.run` (in-flight limit, worker threads), as the native routes, so the numbers are equal.

An operation's image input is `image`, FP32 [-1, C, H, W] in the model's input scale, or
`image_bytes`, BYTES [-1] of encoded images (PNG, JPEG, ...), which go through `state.decoder`:
the preprocessing contract and decoding limits of the image routes. Exactly one of the two is sent.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np
from pydantic import BaseModel, ValidationError

from model.core.preprocess import array_to_png
from service.schemas import ElboQuery, EncodeQuery, SampleQuery
from service.v2.codec import BYTES, ProtocolError, Tensor

# ONNX tensor element types (as onnxruntime names them) -> protocol datatypes.
ONNX_DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
                  "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16", "tensor(int8)": "INT8",
                  "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
                  "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL", "tensor(string)": "BYTES"}
# Request parameters the protocol or its clients define; an operation ignores them.
PROTOCOL_PARAMETERS = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
OPERATION_PLATFORM = "vae-service_operation"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: variable

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Call:
    """What an operation gets: the served version, the app state, the inputs by name, its parameters."""

    state: Any  # service.state.AppState
    served: Any  # service.served.ServedModel
    inputs: dict[str, Tensor]
    parameters: dict[str, Any]


Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class V2Model:
    suffix: str
    platform: str
    inputs: Callable[[Any], list[TensorSpec]]  # served -> specs
    outputs: Callable[[Any], list[TensorSpec]]
    run: Callable[[Call], Awaitable[tuple[Outputs, dict[str, Any]]]]  # outputs, response parameters
    description: str = ""
    parameters: type[BaseModel] | None = None  # the knobs, validated as the native route's query

    def metadata(self, name: str, versions: list[str], served: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "versions": versions, "platform": self.platform,
                                "inputs": [t.as_dict() for t in self.inputs(served)],
                                "outputs": [t.as_dict() for t in self.outputs(served)]}
        if self.description:
            body["description"] = self.description
        if self.parameters is not None:
            body["parameters"] = describe_parameters(self.parameters)
        return body


def describe_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()["properties"]
    return [{"name": name, "type": _type_name(schema[name]), "default": field.default,
             "description": field.description or ""} for name, field in model.model_fields.items()]


def _type_name(prop: dict[str, Any]) -> str:
    types = [p.get("type") for p in prop.get("anyOf", [prop])]
    return "|".join(t for t in types if t) or "any"


def knobs(model: type[BaseModel], parameters: dict[str, Any], name: str) -> Any:
    """The request's parameters as the native route's query model: the same defaults and ranges."""
    own = {k: v for k, v in parameters.items() if k not in PROTOCOL_PARAMETERS}
    unknown = sorted(set(own) - set(model.model_fields))
    if unknown:
        raise ProtocolError(f"model '{name}' has no parameter {', '.join(map(repr, unknown))}; it takes "
                            f"{', '.join(model.model_fields)}")
    try:
        return model.model_validate(own)
    except ValidationError as exc:
        parts = [f"parameter {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]]
        raise ProtocolError(f"model '{name}': " + "; ".join(parts)) from None


# ---- shapes and checks ----

_SPECS: weakref.WeakKeyDictionary[Any, tuple[list[TensorSpec], list[TensorSpec]]] = weakref.WeakKeyDictionary()


def _graph_specs(session: Any, outputs: bool) -> list[TensorSpec]:
    """A session's (inputs, outputs), read once per session: onnxruntime builds them anew on each call,
    about 18 us for the encoder's three tensors."""
    specs = _SPECS.get(session)
    if specs is None:
        specs = tuple([TensorSpec(a.name, ONNX_DATATYPES.get(a.type, a.type),
                                  tuple(d if isinstance(d, int) and d >= 0 else -1 for d in a.shape)) for a in args]
                      for args in (session.get_inputs(), session.get_outputs()))
        _SPECS[session] = specs
    return specs[outputs]


def check_tensor(tensor: Tensor, spec: TensorSpec, max_rows: int) -> None:
    """Datatype, rank, fixed dimensions, and the row limit on the first variable dimension."""
    if tensor.datatype != spec.datatype:
        raise ProtocolError(f"input '{spec.name}' must be {spec.datatype}, not {tensor.datatype}")
    shape = tensor.data.shape
    if len(shape) != len(spec.shape) or any(want not in (-1, got) for want, got in zip(spec.shape, shape)):
        raise ProtocolError(f"input '{spec.name}' has shape {list(shape)}; the model takes {list(spec.shape)} "
                            "(-1: any size)")
    rows = shape[0] if shape else 1
    if not 1 <= rows <= max_rows:
        raise ProtocolError(f"input '{spec.name}' has {rows} rows; 1 to {max_rows} are accepted (VAE_MAX_BATCH)")


def _only(call: Call, specs: list[TensorSpec], name: str) -> dict[str, Tensor]:
    """The inputs, each checked against its spec; none unknown, none missing."""
    wanted = {s.name: s for s in specs}
    unknown = sorted(set(call.inputs) - set(wanted))
    if unknown:
        raise ProtocolError(f"model '{name}' has no input {', '.join(map(repr, unknown))}; its inputs are "
                            f"{', '.join(wanted) or 'none'}")
    for spec in specs:
        if spec.name in call.inputs:
            check_tensor(call.inputs[spec.name], spec, call.state.settings.max_batch)
    return call.inputs


def image_shape(served: Any) -> tuple[int, ...]:
    return (-1, *served.engine.model.manifest.input.shape)


def latent_shape(served: Any) -> tuple[int, ...]:
    return (-1, served.engine.latent_dim)


def image_inputs(served: Any) -> list[TensorSpec]:
    return [TensorSpec("image", "FP32", image_shape(served)), TensorSpec("image_bytes", BYTES, (-1,))]


async def read_pixels(call: Call, name: str) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1], from `image` as it is or `image_bytes` decoded as the image routes do."""
    inputs = _only(call, image_inputs(call.served), name)
    if ("image" in inputs) == ("image_bytes" in inputs):
        raise ProtocolError(f"model '{name}' takes exactly one of 'image' (FP32) and 'image_bytes' (BYTES, "
                            "encoded images)")
    if "image_bytes" in inputs:
        blobs = list(inputs["image_bytes"].data.reshape(-1))
        return await call.state.decoder.decode(blobs, call.served.engine.contract)
    pixels = inputs["image"].data
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise ProtocolError(f"input 'image' of '{name}' must hold finite values in [0, 1], the model's input scale")
    return np.ascontiguousarray(pixels, dtype=np.float32)


def read_latents(call: Call, name: str) -> np.ndarray:
    specs = [TensorSpec("z", "FP32", latent_shape(call.served))]
    inputs = _only(call, specs, name)
    if "z" not in inputs:
        raise ProtocolError(f"model '{name}' needs input 'z'")
    z = inputs["z"].data
    if not np.isfinite(z).all():
        raise ProtocolError(f"input 'z' of '{name}' must hold finite values")
    return np.ascontiguousarray(z, dtype=np.float32)


def png_tensor(images: np.ndarray) -> np.ndarray:
    """One PNG per image, the bytes the native routes send (base64 in JSON there)."""
    array = np.empty(len(images), dtype=object)
    array[:] = [array_to_png(x) for x in images]
    return array


# ---- the graphs ----

def graph_model(suffix: str) -> V2Model:
    def session(served: Any) -> Any:
        return getattr(served.engine.model, suffix)

    async def run(call: Call) -> tuple[Outputs, dict[str, Any]]:
        name = f"{call.served.name}.{suffix}"
        specs = _graph_specs(session(call.served), outputs=False)
        inputs = _only(call, specs, name)
        missing = [s.name for s in specs if s.name not in inputs]
        if missing:
            raise ProtocolError(f"model '{name}' needs input {', '.join(map(repr, missing))}")
        feeds = {s.name: np.ascontiguousarray(inputs[s.name].data) for s in specs}
        rows = max(len(x) for x in feeds.values()) if feeds else 1
        names = [s.name for s in _graph_specs(session(call.served), outputs=True)]
        results = await call.served.run(suffix, rows, session(call.served).run, None, feeds)
        return dict(zip(names, results)), {}

    return V2Model(suffix, "onnx_onnxv1", lambda served: _graph_specs(session(served), outputs=False),
                   lambda served: _graph_specs(session(served), outputs=True), run,
                   f"the {suffix} ONNX graph as exported, run by onnxruntime")


# ---- the operations ----

def _specs(*entries: tuple[str, str, Callable[[Any], tuple[int, ...]]]) -> Callable[[Any], list[TensorSpec]]:
    return lambda served: [TensorSpec(name, datatype, shape(served)) for name, datatype, shape in entries]


def rows(_: Any) -> tuple[int, ...]:
    return (-1,)


async def _encode(call: Call) -> tuple[Outputs, dict[str, Any]]:
    name = f"{call.served.name}.encode"
    query = knobs(EncodeQuery, call.parameters, name)
    pixels = await read_pixels(call, name)
    mean, logvar, z = await call.served.encode(pixels, query.sample, query.seed)
    return {"mean": mean, "logvar": logvar, **({"z": z} if z is not None else {})}, {}


async def _elbo(call: Call) -> tuple[Outputs, dict[str, Any]]:
    name, state, engine = f"{call.served.name}.elbo", call.state, call.served.engine
    query = knobs(ElboQuery, call.parameters, name)
    if query.k > state.settings.max_k:
        raise ProtocolError(f"k must be between 1 and {state.settings.max_k}, not {query.k}")
    pixels = await read_pixels(call, name)
    binarize = engine.default_binarize_seed if query.binarize_seed is None else query.binarize_seed
    scores = await call.served.run("elbo", len(pixels) * (query.k + 1), engine.score, pixels, query.k, query.seed,
                                   binarize)
    outputs = {"elbo": scores.elbo, "reconstruction": scores.reconstruction, "kl": scores.kl,
               "bits_per_dim": scores.bits_per_dim}
    if scores.log_likelihood is not None:
        outputs["log_likelihood"] = scores.log_likelihood
        outputs["log_likelihood_bits_per_dim"] = scores.log_likelihood_bits_per_dim
    return ({k: np.asarray(v, dtype=np.float64) for k, v in outputs.items()},
            {"k": query.k, "seed": query.seed, "binarize_seed": binarize, "data_space": engine.data_space(binarize)})


async def _reconstruct(call: Call) -> tuple[Outputs, dict[str, Any]]:
    name = f"{call.served.name}.reconstruct"
    knobs(_NoKnobs, call.parameters, name)
    pixels = await read_pixels(call, name)
    images = await call.served.run("reconstruct", len(pixels), call.served.engine.reconstruct, pixels)
    return {"images": images, "png": png_tensor(images)}, {}


async def _decode(call: Call) -> tuple[Outputs, dict[str, Any]]:
    name = f"{call.served.name}.decode"
    knobs(_NoKnobs, call.parameters, name)
    z = read_latents(call, name)
    images = await call.served.run("decode", len(z), call.served.engine.decode, z)
    return {"images": images, "png": png_tensor(images)}, {}


async def _sample(call: Call) -> tuple[Outputs, dict[str, Any]]:
    name, state, engine = f"{call.served.name}.sample", call.state, call.served.engine
    query = knobs(_SampleKnobs, call.parameters, name)
    _only(call, [], name)
    if query.n > state.settings.max_batch:
        raise ProtocolError(f"n must be between 1 and {state.settings.max_batch}, not {query.n}")
    seed = int(np.random.default_rng().integers(0, 2**31)) if query.seed is None else query.seed
    z = engine.prior_latents(query.n, seed, query.temperature)
    images = await call.served.run("sample", query.n, engine.decode, z)
    return {"images": images, "png": png_tensor(images), "z": z}, {"seed": seed}


class _NoKnobs(BaseModel):
    pass


class _SampleKnobs(BaseModel):
    """/sample's query without its response format: the tensors are the format here."""

    n: int = SampleQuery.model_fields["n"]
    seed: int | None = SampleQuery.model_fields["seed"]
    temperature: float = SampleQuery.model_fields["temperature"]


IMAGES = ("images", "FP32", image_shape)
PNG = ("png", BYTES, rows)
SCORES = tuple((score, "FP64", rows) for score in ("elbo", "reconstruction", "kl", "bits_per_dim",
                                                    "log_likelihood", "log_likelihood_bits_per_dim"))

MODELS: dict[str, V2Model] = {model.suffix: model for model in (
    graph_model("encoder"),
    graph_model("decoder"),
    V2Model("encode", OPERATION_PLATFORM, image_inputs, _specs(("mean", "FP32", latent_shape),
            ("logvar", "FP32", latent_shape), ("z", "FP32", latent_shape)), _encode,
            "POST /encode: the posterior q(z|x); z only with sample=true", EncodeQuery),
    V2Model("elbo", OPERATION_PLATFORM, image_inputs, _specs(*SCORES), _elbo,
            "POST /elbo: ELBO and its terms in nats; log_likelihood (IWAE) only with k > 1. The response "
            "parameters give binarize_seed and data_space", ElboQuery),
    V2Model("reconstruct", OPERATION_PLATFORM, image_inputs, _specs(IMAGES, PNG), _reconstruct,
            "POST /reconstruct: E[x | z = mean of q(z|x)], as pixels and as the PNGs the native route sends"),
    V2Model("decode", OPERATION_PLATFORM, _specs(("z", "FP32", latent_shape)), _specs(IMAGES, PNG), _decode,
            "POST /decode: E[x|z] as pixels and PNGs"),
    V2Model("sample", OPERATION_PLATFORM, lambda served: [], _specs(IMAGES, PNG, ("z", "FP32", latent_shape)),
            _sample, "GET /sample: z ~ N(0, t^2 I), decoded; no inputs. The response parameters give the seed",
            _SampleKnobs),
)}


def split_name(v2_name: str) -> tuple[str, V2Model] | None:
    """'M.encoder' -> ('M', the encoder model); None when the suffix names no v2 model."""
    model, dot, suffix = v2_name.rpartition(".")
    if not dot or not model or suffix not in MODELS:
        return None
    return model, MODELS[suffix]


def v2_names(model: str) -> list[str]:
    return [f"{model}.{suffix}" for suffix in MODELS]
