import io

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.engine import Engine
from service.settings import Settings
from tests.unit.service.fakes import SHAPE, FakeVAE


@pytest.fixture
def anyio_backend():
    return "asyncio"


def png_bytes(seed: int = 0, size=SHAPE[1:]) -> bytes:
    pixels = (np.random.default_rng(seed).random(size) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def build(fake=None, ready=True, **settings):
    """An app with a fake model, made ready without running the lifespan."""
    fake = fake or FakeVAE()
    app = create_app(Settings(**{"max_batch": 8, "max_k": 100, **settings}), loader=lambda s: fake)
    if ready:
        app.state.vae.engine = Engine.from_model(fake)
    return app, fake


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                             base_url="http://test")


@pytest.fixture
def app_and_fake():
    return build()


@pytest.fixture
async def client(app_and_fake):
    async with client_for(app_and_fake[0]) as c:
        yield c
