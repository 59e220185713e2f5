"""bench/apps/asgi_lean.py, the lean app of bench.hot_path: the product's /encode answer for a raw PNG, its
model calls counted in the product's /metrics names, and plain errors."""

import asyncio
import importlib

import numpy as np
import pytest

from bench import hot_path
from bench import run as bench_run
from bench.plan import MODEL_DIR
from model.core.preprocess import PreprocessContract, bytes_to_array
from service.app import create_app, start
from service.settings import Settings
from tests.unit.service.conftest import client_for, run_to_completion

PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def lean():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAE_MODEL_DIR", str(MODEL_DIR))
        return importlib.import_module("bench.apps.asgi_lean")


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_the_lean_app_answers_encode_as_the_product_does(lean):
    product = create_app(Settings(model_dir=MODEL_DIR, grpc_port=0, gc_freeze=False))
    run_to_completion(start(product.state.vae))
    png = bench_run.test_pngs(1)[0]
    async with client_for(product) as theirs, client_for(lean.app) as ours:
        expected = await theirs.post("/encode", content=png, headers=PNG)
        answer = await ours.post("/encode", content=png, headers=PNG)
    assert expected.status_code == answer.status_code == 200
    assert answer.json() == expected.json()
    assert answer.headers["content-type"] == "application/json"


@pytest.mark.anyio
async def test_concurrent_images_share_batches_and_each_gets_its_own_rows(lean):
    pngs = bench_run.test_pngs(5)
    before = hot_path.metric_totals((await _get(lean, "/metrics")).text)
    async with client_for(lean.app) as client:
        answers = await asyncio.gather(*(client.post("/encode", content=png, headers=PNG) for png in pngs))
    after = hot_path.metric_totals((await _get(lean, "/metrics")).text)
    contract = PreprocessContract.from_dict(lean.MODEL.manifest.preprocessing)
    mean, _ = lean.MODEL.encode(np.stack([bytes_to_array(png, contract) for png in pngs]))
    for row, answer in enumerate(answers):
        np.testing.assert_allclose(answer.json()["results"][0]["mean"], mean[row], rtol=1e-5, atol=1e-6)
    share = hot_path.model_call_share(before, after)
    assert after["vae_images_processed_total"] - before["vae_images_processed_total"] == 5
    assert 1 <= share["mean_batch"] <= 5 and share["model_us_per_image"] > 0


@pytest.mark.anyio
async def test_the_lean_app_refuses_what_is_not_an_image_and_unknown_routes(lean):
    async with client_for(lean.app) as client:
        bad = await client.post("/encode", content=b"not a png", headers=PNG)
        unknown = await client.get("/encode")
        ready = await client.get("/docs")
    assert bad.status_code == 400 and bad.text.strip()
    assert unknown.status_code == 404 and "POST /encode" in unknown.text
    assert ready.status_code == 200


async def _get(lean, path: str):
    async with client_for(lean.app) as client:
        return await client.get(path)
