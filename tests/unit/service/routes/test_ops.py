"""The operational routes (service/routes/ops.py): readiness and the model card."""

import pytest

from tests.unit.service.conftest import build, client_for, error_of
from tests.unit.service.fakes import LATENT, SHAPE

pytestmark = pytest.mark.anyio


async def test_not_ready_answers_503_on_model_routes_and_readyz():
    app, _ = build(ready=False)
    async with client_for(app) as client:
        assert error_of(await client.get("/readyz")) == (503, "not_ready")
        assert error_of(await client.get("/sample")) == (503, "not_ready")
        assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_readyz_names_the_model_when_ready(client):
    assert (await client.get("/readyz")).json() == {
        "status": "ready",
        "model": {"name": "fake-vae", "version": "9.9.9"},
    }


async def test_model_card(client):
    body = (await client.get("/v1/model")).json()
    assert body["latent_dim"] == LATENT and body["input"]["shape"] == list(SHAPE)
    assert body["preprocessing"]["mode"] == "L" and body["limits"]["max_batch"] == 8
