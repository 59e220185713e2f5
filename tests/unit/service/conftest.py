import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app, start
from service.engine import Engine
from service.repository_scan import ModelSource, VersionPolicy
from service.settings import Settings
from tests.unit.service.fakes import SHAPE, FakeVAE

PNG = {"content-type": "image/png"}


def error_with_message(response) -> tuple[int, str, str]:
    """A native error answer, its shape checked: (status, code, message)."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return response.status_code, body["error"]["code"], body["error"]["message"]


def error_of(response) -> tuple[int, str]:
    """A native error answer, its shape checked: (status, code)."""
    return error_with_message(response)[:2]


def v2_error(response, status: int) -> str:
    """An answer in the open inference protocol's error shape, with `status`: its message."""
    body = response.json()
    assert response.status_code == status and set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def png_bytes(seed: int = 0, size=SHAPE[1:]) -> bytes:
    pixels = (np.random.default_rng(seed).random(size) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def fake_repository(*fakes) -> dict[str, ModelSource]:
    """A repository scan that finds each fake's name and version (the fake loader ignores the path)."""
    sources: dict[str, ModelSource] = {}
    for fake in fakes:
        name, version = fake.manifest.name, fake.manifest.version
        versions = {**(sources[name].versions if name in sources else {}), version: Path(f"/fake/{name}/{version}")}
        sources[name] = ModelSource(name, versions, {}, VersionPolicy(all={}))
    return sources


def build(fake=None, ready=True, others=(), span_exporter=None, **settings):
    """An app serving a fake model (and `others`), loaded without running the lifespan when `ready`;
    traced into `span_exporter` when one is given."""
    fake = fake or FakeVAE()
    by_path = {Path(f"/fake/{f.manifest.name}/{f.manifest.version}"): f for f in (fake, *others)}
    app = create_app(
        Settings(**{"max_batch": 8, "max_k": 100, **settings}),
        load=lambda directory, _: Engine.from_model(by_path[directory]),
        scan=lambda: fake_repository(fake, *others),
        span_exporter=span_exporter,
    )
    if ready:
        run_to_completion(start(app.state.vae))
    return app, fake


def run_to_completion(coroutine):
    """Run a coroutine to its end from sync code, also when called inside a running loop (async tests)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test")


@pytest.fixture
def app_and_fake():
    return build()


@pytest.fixture
async def client(app_and_fake):
    async with client_for(app_and_fake[0]) as c:
        yield c
