"""Load and failure behaviour over real HTTP: concurrency, overload, and a tampered model."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import numpy as np

from model.core.preprocess import PreprocessContract, bytes_to_array
from tests.integration.conftest import MODEL_DIR, Server, png, poll

PNG = {"content-type": "image/png"}


def test_200_concurrent_requests_mixing_good_and_bad(base_url, test_images, local_model):
    good_images = [png(x) for x in test_images[:10]]
    expected = local_model.encode(np.stack([bytes_to_array(b, PreprocessContract()) for b in good_images]))[0]
    bad = [
        ({"content": b"garbage", "headers": PNG}, "/encode", 400),
        ({"content": b"{}", "headers": {"content-type": "text/plain"}}, "/encode", 415),
        ({"content": good_images[0], "headers": PNG}, "/elbo?k=0", 422),
        ({"json": {"z": [[1.0]]}}, "/decode", 422),
    ]

    async def run():
        async with httpx.AsyncClient(
            base_url=base_url, timeout=120, limits=httpx.Limits(max_connections=200)
        ) as client:

            async def good(i):
                r = await client.post("/encode", content=good_images[i % 10], headers=PNG)
                return "good", i, r

            async def wrong(i):
                kwargs, path, status = bad[i % len(bad)]
                return "bad", i, (await client.post(path, **kwargs)), status

            tasks = [good(i) if i % 2 == 0 else wrong(i) for i in range(200)]
            return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    for result in results:
        if result[0] == "good":
            _, i, response = result
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(response.json()["results"][0]["mean"], expected[i % 10], rtol=1e-5, atol=1e-6)
        else:
            _, i, response, status = result
            assert response.status_code == status and "error" in response.json()
    assert httpx.get(f"{base_url}/readyz").status_code == 200


def test_overload_is_answered_429_and_the_server_stays_ready(tmp_path, test_images):
    server = Server(tmp_path, VAE_MAX_IN_FLIGHT="1")
    try:
        server.wait()

        async def run():
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                body = png(test_images[0])
                return await asyncio.gather(*[client.post("/elbo?k=5000", content=body, headers=PNG) for _ in range(6)])

        responses = asyncio.run(run())
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
        assert set(statuses) <= {200, 429}
        rejected = next(r for r in responses if r.status_code == 429)
        assert rejected.json()["error"]["code"] == "overloaded" and rejected.headers["retry-after"] == "1"
        assert httpx.get(f"{server.url}/readyz").status_code == 200
    finally:
        server.stop()


def test_a_tampered_graph_keeps_the_server_unready_with_a_clear_log_line(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(MODEL_DIR, model, ignore=shutil.ignore_patterns("report", "*.pt"))
    data = bytearray((model / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (model / "encoder.onnx").write_bytes(bytes(data))
    server = Server(tmp_path, VAE_MODEL_DIR=str(model))
    try:
        server.wait(ready=False)
        response = httpx.get(f"{server.url}/readyz")
        assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
        encode = httpx.post(f"{server.url}/encode", content=b"x", headers=PNG)
        assert encode.status_code == 503
        assert "SHA-256" not in response.text  # the reason goes to the log, not to clients
        poll(lambda: "staying unready" in server.log(), "the load failure is logged", timeout=10)
        assert "not served, staying unready" in server.log() and "encoder.onnx: SHA-256" in server.log()
    finally:
        server.stop()


def test_concurrent_encodes_are_batched_and_each_equals_its_image_alone(base_url, test_images, local_model):
    """Micro-batching (on by default) coalesces these into shared onnxruntime calls; the encoder gives
    identical rows at any batch size (the exporter checks 1, 7 and 256), so each answer is exactly
    that image's own."""
    bodies = [png(x) for x in test_images[:48]]
    contract = PreprocessContract()
    alone = [local_model.encode(bytes_to_array(b, contract)[None]) for b in bodies]

    async def run():
        async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=48)) as client:
            return await asyncio.gather(*[client.post("/encode", content=b, headers=PNG) for b in bodies])

    def encode_calls_and_images() -> tuple[float, float]:
        text = httpx.get(f"{base_url}/metrics").text

        def total(prefix):
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(prefix) and 'operation="encode"' in line
            )

        return total("vae_inference_duration_seconds_count"), total("vae_images_processed_total")

    calls_before, images_before = encode_calls_and_images()
    responses = asyncio.run(run())
    calls_after, images_after = encode_calls_and_images()
    assert images_after - images_before == len(bodies)
    assert calls_after - calls_before < len(bodies)  # some requests shared an onnxruntime call
    for response, (mean, logvar) in zip(responses, alone, strict=False):
        result = response.json()["results"][0]
        np.testing.assert_array_equal(np.asarray(result["mean"], dtype=np.float32), mean[0])
        np.testing.assert_array_equal(np.asarray(result["logvar"], dtype=np.float32), logvar[0])
