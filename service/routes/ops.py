"""Operations: liveness, readiness, the model card and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.core.manifest import PriorSpec
from service.errors import error_response
from service.routes.addressing import model_paths
from service.schemas import Health, ModelCard, ModelList, ModelRef, ModelVersions, Ready, error_responses
from service.state import app_state

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    responses=error_responses(503),
    summary="Readiness: 200 once the default model is loaded, hash-checked and warmed up",
)
async def readyz(request: Request) -> Response | Ready:
    state = app_state(request)
    if not state.ready:
        return error_response(503, "not_ready", state.not_ready_message(), {"Retry-After": "1"})
    return Ready(status="ready", model=ModelRef(**state.resolve().ref))


@router.get("/v1/models", response_model=ModelList, summary="The models and versions being served")
async def model_list(request: Request) -> ModelList:
    state = app_state(request)
    return ModelList(
        models=[
            ModelVersions(
                name=name, versions=versions, default_version=versions[-1], default=name == state.default_model
            )
            for name, versions in sorted(state.registry.served().items())
        ]
    )


async def model_card(request: Request) -> dict[str, Any]:
    state = app_state(request)
    served = state.resolve(request.path_params.get("name"), request.path_params.get("version"))
    manifest = served.engine.model.manifest
    s = state.settings
    return {
        "model": served.ref,
        "input": manifest.input.model_dump(),
        "latent_dim": manifest.latent_dim,
        "latent_shape": list(manifest.latent),
        "sizes": manifest.sizes.model_dump() if manifest.sizes else None,
        "diffusion": manifest.diffusion.model_dump() if manifest.diffusion else None,
        "likelihood": manifest.likelihood.model_dump(),
        "preprocessing": manifest.preprocessing,
        "metrics": manifest.metrics,
        "parity": manifest.parity,
        "created": manifest.created,
        "prior": prior_card(manifest.prior),
        "source": (
            {"tool": "vae-export", "checkpoint": manifest.source_checkpoint.model_dump()}
            if manifest.source is None and manifest.source_checkpoint is not None
            else manifest.source.model_dump()
            if manifest.source is not None
            else {}
        ),
        "contract": manifest.io.model_dump(),
        "graphs": {
            "encoder_sha256": manifest.encoder.sha256,
            "decoder_sha256": manifest.decoder.sha256,
            **({"prior_sha256": manifest.prior.graph.sha256} if manifest.prior else {}),
        },
        "anomaly": manifest.anomaly.model_dump() if manifest.anomaly else None,  # POST /anomaly's method and cost
        "limits": {
            "max_upload_bytes": s.max_upload_bytes,
            "max_image_pixels": s.max_image_pixels,
            "max_request_pixels": s.max_request_pixels,
            "max_batch": s.max_batch,
            "max_k": s.max_k,
        },
    }


def prior_card(spec: PriorSpec | None) -> dict[str, Any]:
    """Which p(z) the model samples and scores with: the manifest's prior, N(0, I) when it names none."""
    if spec is None:
        return {"name": "standard_normal", "components": 1, "description": "N(0, I)"}
    return {"name": spec.name, "components": spec.components, "description": spec.description}


router.add_api_route(
    "/v1/model",
    model_card,
    methods=["GET"],
    response_model=ModelCard,
    responses=error_responses(503),
    summary="The default model's card: shapes, latent size, likelihood, prior, preprocessing, metrics",
)
for _path, _params in model_paths(""):
    if _params:
        router.add_api_route(
            _path,
            model_card,
            methods=["GET"],
            response_model=ModelCard,
            responses=error_responses(404, 503),
            openapi_extra={"parameters": list(_params)},
            summary="A model's card (its default version), or one version's",
        )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(app_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
