"""The parts every v2 model is made of: its tensor specs, the call it gets, its metadata, and the
checks on its inputs and parameters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ValidationError

from service.v2.codec import ProtocolError, Tensor, listed

if TYPE_CHECKING:  # service.state imports the routes' modules, which import this one
    from service.served import ServedModel
    from service.state import AppState

# Request parameters the protocol or its clients define; an operation ignores them.
PROTOCOL_PARAMETERS = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}


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

    state: AppState
    served: ServedModel
    inputs: dict[str, Tensor]
    parameters: dict[str, Any]
    requested: tuple[str, ...] = ()  # the outputs the request names (none named: all it produces)


Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class V2Model:
    suffix: str
    platform: str
    inputs: Callable[[ServedModel], list[TensorSpec]]
    outputs: Callable[[ServedModel], list[TensorSpec]]
    run: Callable[[Call], Awaitable[tuple[Outputs, dict[str, Any]]]]  # outputs, response parameters
    description: str = ""
    parameters: type[BaseModel] | None = None  # the knobs, validated as the native route's query

    def metadata(self, name: str, versions: list[str], served: ServedModel) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "versions": versions,
            "platform": self.platform,
            "inputs": [t.as_dict() for t in self.inputs(served)],
            "outputs": [t.as_dict() for t in self.outputs(served)],
        }
        if self.description:
            body["description"] = self.description
        if self.parameters is not None:
            body["parameters"] = describe_parameters(self.parameters)
        return body


def describe_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()["properties"]
    return [
        {
            "name": name,
            "type": _type_name(schema[name]),
            "default": field.default,
            "description": field.description or "",
        }
        for name, field in model.model_fields.items()
    ]


def _type_name(prop: dict[str, Any]) -> str:
    types = [p.get("type") for p in prop.get("anyOf", [prop])]
    return "|".join(t for t in types if t) or "any"


def knobs(model: type[BaseModel], parameters: dict[str, Any], name: str) -> Any:
    """The request's parameters as the native route's query model: the same defaults and ranges."""
    own = {k: v for k, v in parameters.items() if k not in PROTOCOL_PARAMETERS}
    unknown = sorted(set(own) - set(model.model_fields))
    if unknown:
        raise ProtocolError(
            f"model '{name}' has no parameter {listed(unknown)}; it takes {', '.join(model.model_fields) or 'none'}"
        )
    try:  # strict: JSON has types, so true is not 1 and "5" is not 5 (the native query strings are lax)
        return model.model_validate(own, strict=True)
    except ValidationError as exc:
        parts = [f"parameter {'.'.join(str(p) for p in err['loc'])[:80]}: {err['msg']}" for err in exc.errors()[:5]]
        raise ProtocolError(f"model '{name}': " + "; ".join(parts)) from None


def check_tensor(tensor: Tensor, spec: TensorSpec, max_rows: int) -> None:
    """Datatype, rank, fixed dimensions, and the row limit on the first variable dimension."""
    if tensor.datatype != spec.datatype:
        raise ProtocolError(f"input '{spec.name}' must be {spec.datatype}, not {tensor.datatype}")
    shape = tensor.data.shape
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=False)
    ):
        raise ProtocolError(
            f"input '{spec.name}' has shape {list(shape)}; the model takes {list(spec.shape)} (-1: any size)"
        )
    rows = shape[0] if shape else 1
    if not 1 <= rows <= max_rows:
        raise ProtocolError(f"input '{spec.name}' has {rows} rows; 1 to {max_rows} are accepted (VAE_MAX_BATCH)")


def checked_inputs(call: Call, specs: list[TensorSpec], name: str) -> dict[str, Tensor]:
    """The inputs: none unknown, and each one given checked against its spec."""
    wanted = {s.name: s for s in specs}
    unknown = sorted(set(call.inputs) - set(wanted))
    if unknown:
        raise ProtocolError(
            f"model '{name}' has no input {listed(unknown)}; its inputs are {', '.join(wanted) or 'none'}"
        )
    for spec in specs:
        if spec.name in call.inputs:
            check_tensor(call.inputs[spec.name], spec, call.state.settings.max_batch)
    return call.inputs
