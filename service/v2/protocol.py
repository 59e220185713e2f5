"""The open inference protocol's logic, once for both transports: REST (service/v2/routes.py,
service/routes/repository.py) and gRPC (service/grpc/). Each transport turns its message into the
codec's `InferRequest` and this module's answers back into its own; every check, limit, error and
statistic is here, so the two cannot drift apart.

Errors are `ProtocolError`s (or the shared code's `ApiError`s) with an HTTP status; the gRPC transport
maps the status to its code (service/grpc/errors.py).
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from service.errors import ApiError
from service.registry import LoadFailed, ModelNotFound
from service.repository_scan import version_key
from service.state import AppState
from service.v2 import statistics
from service.v2.codec import InferRequest, InferResponse, ProtocolError, listed, quoted
from service.v2.models import MODELS, split_name, v2_names
from service.v2.spec import Call, V2Model

T = TypeVar("T")
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
# A request up to this size is parsed on the event loop, where its parse costs less than the hop to a
# thread; a larger one in a worker thread: a large JSON header, BYTES elements split one by one in Python,
# a gRPC message's typed contents copied element by element.
INLINE_PARSE_BYTES = 65_536
REPOSITORY_MODEL_PLATFORM = "vae-service_repository_model"
# The most bytes one element of each kind takes in a JSON response, separator included (orjson writes at
# most 24 characters for a float, 20 for an integer): the response's size is known before it is built.
JSON_ELEMENT_BYTES = {"f": 25, "i": 21, "u": 21, "b": 6}


def resolve(state: AppState, v2_name: str, version: str | None) -> tuple[Any, V2Model]:
    """(the served version, the v2 model) behind a v2 name; 404 or 503 as the native routes answer."""
    found = split_name(v2_name)
    if found is None:
        hint = (
            f"'{v2_name}' is a repository model; infer on its v2 models {', '.join(v2_names(v2_name))}"
            if v2_name in state.registry.served()
            else f"no v2 model {quoted(v2_name)}: v2 models are named <model>.<{'|'.join(MODELS)}> for each model "
            "in GET /v1/models (POST /v2/repository/index lists them)"
        )
        raise ProtocolError(hint, status=404)
    model, kind = found
    return state.resolve(model, version), kind


# --- metadata and readiness ---------------------------------------------------------------------------


def model_metadata(state: AppState, name: str, version: str | None) -> dict[str, Any]:
    """A v2 model's metadata, or a repository model's (the index lists both kinds of names)."""
    if split_name(name) is None and name in state.registry.known():
        return repository_model_metadata(state, name, version)
    served, kind = resolve(state, name, version)
    versions = sorted(state.registry.served().get(served.name, [served.version]), key=version_key)
    return kind.metadata(name, versions, served)


def repository_model_metadata(state: AppState, name: str, version: str | None) -> dict[str, Any]:
    """A repository model M as the index lists it: it takes no tensors itself; its v2 models do. So
    that a client walking the index gets an answer for every entry (503 while nothing of M serves)."""
    served = state.resolve(name, version)
    return {
        "name": name,
        "versions": state.registry.served().get(name, [served.version]),
        "platform": REPOSITORY_MODEL_PLATFORM,
        "inputs": [],
        "outputs": [],
        "description": f"a repository model: load and unload act on it, inference on its v2 models "
        f"{', '.join(v2_names(name))}",
    }


def repository_model(name: str) -> str:
    """The repository model behind a name: M itself, or M for a v2 model M.<kind>."""
    found = split_name(name)
    return found[0] if found is not None else name


def model_ready(state: AppState, name: str, version: str | None) -> None:
    """Returns when the model (or version) serves; else 404 for an unknown model, 400 for one not ready."""
    registry = state.registry
    model = repository_model(name)
    if registry.is_ready(model, version):
        return
    which = f"model {quoted(name)}" + (f" version {quoted(version)}" if version else "")
    if model not in registry.known():
        raise ProtocolError(
            f"{which} does not exist: no such model was found in the repository (POST "
            "/v2/repository/index lists them; POST /v2/repository/models/<name>/load loads one added "
            "since)",
            status=404,
        )
    if version is not None and registry.is_ready(model):
        raise ProtocolError(
            f"{which} is not ready: that version is not loaded (loaded: {', '.join(registry.served().get(model, []))})"
        )
    raise ProtocolError(f"{which} is not ready ({'unloaded' if registry.unloaded(model) else 'not loaded'})")


# --- inference ----------------------------------------------------------------------------------------


async def infer(
    state: AppState,
    name: str,
    resolved: tuple[Any, V2Model],
    parsed: InferRequest,
    began_ns: int,
    json_sizes: bool,
    encode: Callable[[InferResponse], T],
) -> T:
    """One inference on `resolved`, what `resolve` gave the transport before it read the tensors (the request
    stays on that version): the outputs asked for, checked, and encoded by the transport's `encode`; recorded
    in the statistics of that v2 model version. `began_ns` (perf_counter_ns) is when the transport started on
    the request's message; `json_sizes`: outputs not asked as binary are sized as JSON text (REST) rather
    than raw bytes."""
    served, kind = resolved
    timing = statistics.Request(began_ns)
    ok = False
    try:
        encoded = encode(await _infer(state, name, served, kind, parsed, timing, json_sizes))
        ok = True
        return encoded
    finally:
        state.statistics.record(name, served.version, timing, ok)


async def _infer(
    state: AppState,
    name: str,
    served: Any,
    kind: V2Model,
    parsed: InferRequest,
    timing: statistics.Request,
    json_sizes: bool,
) -> InferResponse:
    requested: tuple[str, ...] = ()
    if parsed.outputs is not None:
        known = [spec.name for spec in kind.outputs(served)]
        unknown = [o.name for o in parsed.outputs if o.name not in known]
        if unknown:
            raise ProtocolError(f"model '{name}' has no output {listed(unknown)}; its outputs are {', '.join(known)}")
        requested = tuple(o.name for o in parsed.outputs)
    call = Call(state, served, {tensor.name: tensor for tensor in parsed.inputs}, parsed.parameters, requested)
    with timing.model(rows_of(parsed)):
        outputs, parameters = await kind.run(call)
    if parsed.outputs is None:  # every output, each binary as the request says
        binary = parsed.binary_output or not json_sizes
        chosen = [(o, data, binary) for o, data in outputs.items()]
    else:
        missing = [o for o in requested if o not in outputs]
        if missing:
            raise ProtocolError(
                f"model '{name}' does not produce {listed(missing)} with these parameters (GET its "
                "metadata: the description says when each output is produced)"
            )
        chosen = [(o, outputs[o], parsed.binary(o) or not json_sizes) for o in requested]
    check_outputs(name, chosen, state.settings.max_response_bytes)
    return InferResponse(name, served.version, parsed.id, chosen, parameters)


def rows_of(parsed: InferRequest) -> int:
    """The request's batch size, as Triton counts inferences: the first dimension of its largest input."""
    return max((len(t.data) for t in parsed.inputs if t.data.ndim), default=1)


def check_outputs(name: str, outputs: list[tuple[str, np.ndarray, bool]], max_bytes: int) -> None:
    """Before anything is encoded: every number finite (JSON has no NaN; orjson would write null where
    the schema promises a number), and the response within VAE_MAX_RESPONSE_BYTES."""
    size = 0
    for output, data, binary in outputs:
        if data.dtype.kind == "f" and not all_finite(data):
            raise ApiError(
                422,
                "non_finite_output",
                f"model '{name}' computed non-finite values in output "
                f"'{output}': its inputs are outside the range the model works in (for a decoder, "
                "latents far from the prior's; for an encoder graph, pixels outside its input scale)",
            )
        if data.dtype == object:  # BYTES: always binary, each element behind its 4-byte length
            size += sum(len(x) + 4 for x in data.reshape(-1))
        else:
            size += data.size * (data.dtype.itemsize if binary else JSON_ELEMENT_BYTES.get(data.dtype.kind, 25))
    if size > max_bytes:
        raise ApiError(
            422,
            "response_too_large",
            f"the response of '{name}' would be about {size} bytes, over "
            f"the limit of {max_bytes} (VAE_MAX_RESPONSE_BYTES): ask for fewer rows or outputs, or for "
            "binary outputs (parameters.binary_data_output)",
        )


def all_finite(data: np.ndarray) -> bool:
    """Whether every element of a floating-point array is finite. For 16- and 32-bit floats, their sum in
    float64 (one pass, no temporary array): it cannot overflow for any array that fits in memory, and a
    NaN or an infinity makes it non-finite; a small one (a row of latents) is summed as Python floats,
    which costs less than numpy's call. 64-bit floats are checked element by element."""
    if data.dtype.itemsize > 4:
        return bool(np.isfinite(data).all())
    if data.size <= SMALL_ARRAY:
        return math.isfinite(sum(data.ravel().tolist()))
    return math.isfinite(np.add.reduce(data, axis=None, dtype=np.float64))


SMALL_ARRAY = 64  # elements up to which all_finite's Python sum is the cheaper


# --- statistics ---------------------------------------------------------------------------------------


def model_statistics(state: AppState, name: str | None, version: str | None) -> dict[str, Any]:
    """Triton's statistics response: `{"model_stats": [...]}` for every v2 model version served (no name),
    one v2 model's versions (or the named one), or every v2 model of a repository model."""
    served = state.registry.served()
    if not name:
        if version:
            raise ProtocolError("a version needs a model name: GET /v2/models/<name>/versions/<version>/stats")
        names = [(v2, model) for model in sorted(served) for v2 in v2_names(model)]
    elif split_name(name) is not None:
        resolve(state, name, version)  # 404 or 503 as inference would answer
        names = [(name, repository_model(name))]
    elif name in state.registry.known():
        state.resolve(name, version)
        names = [(v2, name) for v2 in v2_names(name)]
    else:
        resolve(state, name, version)  # raises the 404 that names the v2 models
        names = []
    rows = []
    for v2, model in names:
        versions = [version] if version else sorted(served.get(model, []), key=version_key)
        rows += [state.statistics.get(v2, v).as_dict(v2, v) for v in versions]
    return {"model_stats": rows}


# --- the repository extension ---------------------------------------------------------------------------


def authorize(state: AppState, authorization: str | None) -> None:
    """Whether the caller may change the repository: 403 while control is off, 401 without the token.
    `authorization` is the Authorization header (REST) or metadata entry (gRPC)."""
    settings = state.settings
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    if token is None:
        if settings.repository_control == "open":
            return
        raise ProtocolError("repository control is off: set VAE_ADMIN_TOKEN (or VAE_REPOSITORY_CONTROL=open)", 403)
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ProtocolError("repository control needs the header Authorization: Bearer <VAE_ADMIN_TOKEN>", 401)


async def repository_index(state: AppState, ready_only: bool) -> list[dict[str, str]]:
    """Each repository model's rows, then the same rows for each of its v2 models."""
    rows = await state.registry.index(ready_only=ready_only)
    return [entry for row in rows for entry in (row, *({**row, "name": name} for name in v2_names(row["name"])))]


async def load(state: AppState, name: str) -> None:
    model = repository_model(name)
    try:
        await state.registry.load(model)
    except ModelNotFound as exc:
        raise ProtocolError(f"failed to load {quoted(model)}: {exc}") from None
    except LoadFailed as exc:
        raise ProtocolError(str(exc)) from None


async def unload(state: AppState, name: str) -> None:
    model = repository_model(name)
    try:
        await state.registry.unload(model)
    except ModelNotFound as exc:
        raise ProtocolError(f"failed to unload {quoted(model)}: {exc}") from None
