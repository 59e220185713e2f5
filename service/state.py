"""What the app holds while it runs, and how a route finds the model version it serves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from service.decoding import ImageDecoder
from service.errors import ApiError
from service.observability import Metrics
from service.params import Q, parse_query
from service.registry import ModelNotFound, Registry
from service.served import ServedModel
from service.settings import Settings
from service.v2.statistics import Statistics


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    registry: Registry[ServedModel]
    default_model: str | None = None  # the model of the plain routes (/encode, ...): VAE_DEFAULT_MODEL
    decoder: ImageDecoder = field(init=False, repr=False)  # from settings
    started: bool = False  # the first load of the repository has finished, successfully or not
    tasks: list[asyncio.Task[Any]] = field(default_factory=list, repr=False)
    statistics: Statistics = field(default_factory=Statistics, repr=False)  # the protocol's, both transports

    def __post_init__(self) -> None:
        self.decoder = ImageDecoder.from_settings(self.settings)

    @property
    def ready(self) -> bool:
        return self.default_model is not None and self.registry.is_ready(self.default_model)

    def not_ready_message(self, name: str | None = None) -> str:
        name = name or self.default_model
        if not self.started:
            return f"the model {name} is loading" if name else "the models are loading"
        if name is None:
            return "no default model: set VAE_DEFAULT_MODEL to one of the repository's models"
        if self.registry.unloaded(name):
            return f"the model {name} was unloaded; POST /v2/repository/models/{name}/load serves it again"
        return f"the model {name} failed to load; see the server log"

    def resolve(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The version a request is served by: the named one, else the model's default (its highest
        loaded version); the plain routes use VAE_DEFAULT_MODEL. 404 for a model that is not served,
        503 while the repository is still loading or when the model failed to load."""
        name = name or self.default_model
        if name is None:
            raise ApiError(503, "not_ready", self.not_ready_message(), headers={"Retry-After": "1"})
        try:
            return self.registry.resolve(name, version)[1]
        except ModelNotFound as exc:
            if not self.started or self.registry.failed(name):
                raise ApiError(503, "not_ready", self.not_ready_message(name), headers={"Retry-After": "1"}) from None
            raise ApiError(404, "model_not_found", str(exc)) from None


def app_state(request: Request) -> AppState:
    """Routes call this instead of declaring FastAPI dependencies: resolving a dependency costs
    FastAPI four parameter-parsing passes per request, the largest share of /encode's overhead
    over a bare handler in `python -m bench.inprocess --profile`."""
    state: AppState = request.app.state.vae
    return state


def model_route(request: Request, query_model: type[Q]) -> tuple[AppState, ServedModel, Q]:
    """What every model route starts with: the state, the version that serves it (from the path's
    {name} and {version}, else the default model), and the parsed query."""
    state = app_state(request)
    params = request.path_params
    served = state.resolve(params.get("name"), params.get("version"))
    return state, served, parse_query(request, query_model)
