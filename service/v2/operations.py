"""The service's own operations as v2 models: the native routes' engine calls, through the same
`ServedModel.run` (in-flight limit, worker threads), with the routes' knobs in the request's `parameters`.

An image input is `image`, FP32 [-1, C, H, W] in the model's input scale, or `image_bytes`, BYTES [-1]
of encoded images (PNG, JPEG, ...), which go through `state.decoder`: the preprocessing contract and
decoding limits of the image routes. Exactly one of the two is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel

from model.core.preprocess import array_to_png
from service import anomaly_scoring
from service.schemas import AnomalyQuery, ElboQuery, EncodeQuery, SampleQuery
from service.served import ServedModel
from service.v2.codec import BYTES, ProtocolError
from service.v2.spec import Call, Outputs, TensorSpec, V2Model, checked_inputs, knobs

OPERATION_PLATFORM = "vae-service_operation"


def image_shape(served: ServedModel) -> tuple[int, ...]:
    return (-1, *served.engine.model.manifest.input.shape)


def latent_shape(served: ServedModel) -> tuple[int, ...]:
    """[-1, D], or [-1, C, h, w] for a spatial latent: the v2 operations take and give latents in their shape."""
    return (-1, *served.engine.model.manifest.latent)


def shaped(served: ServedModel, latents: np.ndarray) -> np.ndarray:
    """(N, D) latents from the engine in the model's latent shape."""
    return latents.reshape(len(latents), *served.engine.model.manifest.latent)


def image_inputs(served: ServedModel) -> list[TensorSpec]:
    return [TensorSpec("image", "FP32", image_shape(served)), TensorSpec("image_bytes", BYTES, (-1,))]


async def read_pixels(call: Call, name: str) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1], from `image` as it is or `image_bytes` decoded as the image routes do."""
    inputs = checked_inputs(call, image_inputs(call.served), name)
    if ("image" in inputs) == ("image_bytes" in inputs):
        raise ProtocolError(
            f"model '{name}' takes exactly one of 'image' (FP32) and 'image_bytes' (BYTES, encoded images)"
        )
    if "image_bytes" in inputs:
        blobs = list(inputs["image_bytes"].data.reshape(-1))
        decoded: np.ndarray = await call.state.decoder.decode(blobs, call.served.engine.contract)
        return decoded
    pixels = inputs["image"].data
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise ProtocolError(f"input 'image' of '{name}' must hold finite values in [0, 1], the model's input scale")
    return np.ascontiguousarray(pixels, dtype=np.float32)


def read_latents(call: Call, name: str) -> np.ndarray:
    specs = [TensorSpec("z", "FP32", latent_shape(call.served))]
    inputs = checked_inputs(call, specs, name)
    if "z" not in inputs:
        raise ProtocolError(f"model '{name}' needs input 'z'")
    z = inputs["z"].data
    if not np.isfinite(z).all():
        raise ProtocolError(f"input 'z' of '{name}' must hold finite values")
    return np.ascontiguousarray(z, dtype=np.float32).reshape(len(z), -1)


def png_tensor(images: np.ndarray) -> np.ndarray:
    """One PNG per image, the bytes the native routes send (base64 in JSON there)."""
    array = np.empty(len(images), dtype=object)
    array[:] = [array_to_png(x) for x in images]
    return array


def _specs(
    *entries: tuple[str, str, Callable[[ServedModel], tuple[int, ...]]],
) -> Callable[[ServedModel], list[TensorSpec]]:
    return lambda served: [TensorSpec(name, datatype, shape(served)) for name, datatype, shape in entries]


def rows(_: ServedModel) -> tuple[int, ...]:
    return (-1,)


async def _encode(call: Call) -> tuple[Outputs, dict[str, Any]]:
    name = f"{call.served.name}.encode"
    query = knobs(EncodeQuery, call.parameters, name)
    pixels = await read_pixels(call, name)
    mean, logvar, z, lower = await call.served.encode(pixels, query.sample, query.seed)
    served = call.served
    outputs = {
        "mean": shaped(served, mean),
        "logvar": shaped(served, logvar),
        **({"z": shaped(served, z)} if z is not None else {}),
    }
    if lower is not None:  # a two-level VAE: q(z1 | x, z2) at each image's z2
        outputs.update({"lower_mean": lower[0], "lower_logvar": lower[1]})
        if lower[2] is not None:
            outputs["lower_z"] = lower[2]
    return outputs, {}


def encode_outputs(served: ServedModel) -> list[TensorSpec]:
    """mean, logvar and z of q(z|x); for a two-level VAE also lower_mean, lower_logvar and lower_z of
    q(z1 | x, z2), FP32 [-1, D1]."""
    shape = latent_shape(served)
    specs = [TensorSpec(name, "FP32", shape) for name in ("mean", "logvar", "z")]
    levels = served.engine.model.manifest.levels if served.engine.levels is not None else None
    if levels is not None:
        specs += [TensorSpec(f"lower_{n}", "FP32", (-1, levels.lower_latent_dim)) for n in ("mean", "logvar", "z")]
    return specs


async def _elbo(call: Call) -> tuple[Outputs, dict[str, Any]]:
    name, state, engine = f"{call.served.name}.elbo", call.state, call.served.engine
    query = knobs(ElboQuery, call.parameters, name)
    engine.require_likelihood(f"model '{name}'")
    if query.k > state.settings.max_k:
        raise ProtocolError(f"k must be between 1 and {state.settings.max_k}, not {query.k}")
    pixels = await read_pixels(call, name)
    binarize = engine.default_binarize_seed if query.binarize_seed is None else query.binarize_seed
    scores = await call.served.run(
        "elbo", len(pixels) * (query.k + 1), engine.score, pixels, query.k, query.seed, binarize, query.estimator
    )
    outputs: dict[str, Any] = {  # arrays; the optional ones only when the estimator computed them
        "elbo": scores.elbo,
        "reconstruction": scores.reconstruction,
        "kl": scores.kl,
        "bits_per_dim": scores.bits_per_dim,
    }
    if scores.log_likelihood is not None:
        outputs["log_likelihood"] = scores.log_likelihood
        outputs["log_likelihood_bits_per_dim"] = scores.log_likelihood_bits_per_dim
        outputs["log_likelihood_standard_error"] = scores.standard_error
        outputs["effective_sample_size"] = scores.effective_sample_size
    return (
        {k: np.asarray(v, dtype=np.float64) for k, v in outputs.items()},
        {
            "k": query.k,
            "seed": query.seed,
            "binarize_seed": binarize,
            "data_space": engine.data_space(binarize),
            "estimator": scores.estimator,
        },
    )


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
    checked_inputs(call, [], name)
    if query.n > state.settings.max_batch:
        raise ProtocolError(f"n must be between 1 and {state.settings.max_batch}, not {query.n}")
    seed = int(np.random.default_rng().integers(0, 2**31)) if query.seed is None else query.seed
    z = engine.prior_latents(query.n, seed, query.temperature)
    images = await call.served.run("sample", query.n, engine.decode, z)
    return {"images": images, "png": png_tensor(images), "z": shaped(call.served, z)}, {"seed": seed}


async def _anomaly(call: Call) -> tuple[Outputs, dict[str, Any]]:
    name = f"{call.served.name}.anomaly"
    query = knobs(AnomalyQuery, call.parameters, name)
    want_map = query.map or bool({"map", "map_png"} & set(call.requested))  # asked for by parameter or by name
    prepared = anomaly_scoring.prepare(call.served, query.fpr, query.seed, query.binarize_seed, want_map)
    pixels = await read_pixels(call, name)
    out = await anomaly_scoring.score(call.served, pixels, prepared)
    statistics = {f"statistic_{key}": values for key, values in out["statistics"].items()}
    maps = {"map": out["map"], "map_png": np.array(out["map_png"], dtype=object)} if "map" in out else {}
    return (
        {
            "score": out["score"],
            "percentile": out["percentile"],
            "is_anomaly": out["is_anomaly"],
            **statistics,
            **maps,
        },
        {
            "method": prepared.calibration.score.name,
            "fpr": prepared.fpr,
            "threshold": prepared.threshold,
            "seed": prepared.seed,
            "binarize_seed": prepared.binarize_seed,
            **({"fpr_note": prepared.fpr_note} if prepared.fpr_note else {}),
        },
    )


def anomaly_outputs(served: ServedModel) -> list[TensorSpec]:
    """score, percentile, is_anomaly, one statistic_<name> per statistic of the model's calibration, and for
    a calibration with maps the map, FP32 [-1, H, W], and its heatmap, map_png, BYTES [-1] (produced when
    the parameter map is true or the request names them)."""
    calibration = served.engine.calibration
    names = calibration.score.statistics if calibration is not None else ()
    _, height, width = served.engine.model.manifest.input.shape
    maps = (
        [TensorSpec("map", "FP32", (-1, height, width)), TensorSpec("map_png", BYTES, (-1,))]
        if calibration is not None and calibration.map is not None
        else []
    )
    return [
        TensorSpec("score", "FP64", (-1,)),
        TensorSpec("percentile", "FP64", (-1,)),
        TensorSpec("is_anomaly", "BOOL", (-1,)),
        *(TensorSpec(f"statistic_{name}", "FP64", (-1,)) for name in names),
        *maps,
    ]


class _NoKnobs(BaseModel):
    pass


class _SampleKnobs(BaseModel):
    """/sample's query without its response format: the tensors are the format here. Each field is the
    native query's own FieldInfo (default, range, description), which pydantic takes as the default;
    the type checker sees a FieldInfo where an int is declared, hence the ignores."""

    n: int = SampleQuery.model_fields["n"]  # type: ignore[assignment]
    seed: int | None = SampleQuery.model_fields["seed"]  # type: ignore[assignment]
    temperature: float = SampleQuery.model_fields["temperature"]  # type: ignore[assignment]


IMAGES = ("images", "FP32", image_shape)
PNG = ("png", BYTES, rows)
SCORES = tuple(
    (score, "FP64", rows)
    for score in (
        "elbo",
        "reconstruction",
        "kl",
        "bits_per_dim",
        "log_likelihood",
        "log_likelihood_bits_per_dim",
        "log_likelihood_standard_error",
        "effective_sample_size",
    )
)

OPERATIONS = (
    V2Model(
        "encode",
        OPERATION_PLATFORM,
        image_inputs,
        encode_outputs,
        _encode,
        "POST /encode: the posterior q(z|x); z only with sample=true; a two-level VAE's q(z1 | x, z2) as "
        "lower_mean, lower_logvar (and lower_z with sample=true)",
        EncodeQuery,
    ),
    V2Model(
        "elbo",
        OPERATION_PLATFORM,
        image_inputs,
        _specs(*SCORES),
        _elbo,
        "POST /elbo: ELBO and its terms in nats; log_likelihood (the estimator's: importance, IWAE, by default), "
        "its standard error and the effective sample size only with k > 1. The response parameters give "
        "binarize_seed, data_space and estimator",
        ElboQuery,
    ),
    V2Model(
        "reconstruct",
        OPERATION_PLATFORM,
        image_inputs,
        _specs(IMAGES, PNG),
        _reconstruct,
        "POST /reconstruct: E[x | z = mean of q(z|x)], as pixels and as the PNGs the native route sends",
    ),
    V2Model(
        "decode",
        OPERATION_PLATFORM,
        _specs(("z", "FP32", latent_shape)),
        _specs(IMAGES, PNG),
        _decode,
        "POST /decode: E[x|z] as pixels and PNGs",
    ),
    V2Model(
        "anomaly",
        OPERATION_PLATFORM,
        image_inputs,
        anomaly_outputs,
        _anomaly,
        "POST /anomaly: higher score = less like the training data; percentile among the calibration's "
        "reference images; is_anomaly at the false-positive rate fpr; map (per-pixel percentiles, H x W) and "
        "map_png (its heatmap) with map=true or when named in outputs. 409 for a model without calibration",
        AnomalyQuery,
    ),
    V2Model(
        "sample",
        OPERATION_PLATFORM,
        lambda served: [],
        _specs(IMAGES, PNG, ("z", "FP32", latent_shape)),
        _sample,
        "GET /sample: z ~ the model's prior at temperature t, decoded; no inputs. The response "
        "parameters give the seed",
        _SampleKnobs,
    ),
)
