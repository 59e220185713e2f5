"""Checks that need the container itself; docker/test-image.sh sets VAE_CONTAINER_ENGINE and
VAE_CONTAINER_IMAGE when it runs the suite against the image."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MODEL_DIR, free_port, png, poll

ENGINE = os.environ.get("VAE_CONTAINER_ENGINE")
IMAGE = os.environ.get("VAE_CONTAINER_IMAGE")
pytestmark = pytest.mark.skipif(not (ENGINE and IMAGE), reason="runs against the image: docker/test-image.sh")
PNG = {"content-type": "image/png"}


class Container:
    def __init__(self, *args: str, container_port: int = 8000) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"vae-check-{self.port}"
        subprocess.run(
            [ENGINE, "run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:{container_port}", *args, IMAGE],
            check=True,
            capture_output=True,
        )

    def wait_up(self, ready: bool = True, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200) == ready:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(self.logs())

    def logs(self) -> str:
        result = subprocess.run([ENGINE, "logs", self.name], capture_output=True, text=True)
        return result.stdout + result.stderr

    def exit_code(self) -> int:
        out = subprocess.run([ENGINE, "wait", self.name], capture_output=True, text=True, timeout=60).stdout
        return int(out.strip().splitlines()[-1])

    def remove(self) -> None:
        subprocess.run([ENGINE, "rm", "-f", self.name], capture_output=True)


async def in_flight_at_least(client: httpx.AsyncClient, count: int, timeout: float = 30) -> None:
    """Wait until the server's vae_requests_in_flight gauge reaches `count`."""
    deadline = time.monotonic() + timeout
    while True:
        text = (await client.get("/metrics")).text
        match = re.search(r"^vae_requests_in_flight (\S+)$", text, re.M)
        if match and float(match.group(1)) >= count:
            return
        assert time.monotonic() < deadline, f"fewer than {count} requests in flight after {timeout} s"
        await asyncio.sleep(0.02)


def model_copy(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(MODEL_DIR, target, ignore=shutil.ignore_patterns("report", "*.pt", "*.int8.onnx"))
    target.chmod(0o755)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def test_sigterm_during_a_burst_loses_no_accepted_request(test_images):
    container = Container()
    try:
        container.wait_up()
        body = png(test_images[0])

        async def burst():
            async with httpx.AsyncClient(base_url=container.url, timeout=120) as client:

                async def one():
                    try:
                        return (await client.post("/elbo?k=3000&seed=1", content=body, headers=PNG)).status_code
                    except httpx.ConnectError:
                        return "refused"  # never accepted: allowed once shutdown began

                tasks = [asyncio.create_task(one()) for _ in range(24)]
                await in_flight_at_least(client, 1)  # the server has accepted requests it is still serving
                subprocess.run([ENGINE, "kill", "--signal", "TERM", container.name], check=True, capture_output=True)
                return await asyncio.gather(*tasks)

        outcomes = asyncio.run(burst())
        answered = [o for o in outcomes if o != "refused"]
        assert answered and all(o == 200 for o in answered), outcomes
        assert container.exit_code() == 0
        assert "Finished server process" in container.logs() or "Shutting down" in container.logs()
    finally:
        container.remove()


def test_a_mounted_model_directory_is_served_instead(tmp_path):
    model = model_copy(tmp_path)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest.update(name="custom-vae", version="2.0.0")
    (model / "manifest.json").write_text(json.dumps(manifest))
    container = Container("-v", f"{model}:/models/custom:ro", "-e", "VAE_MODEL_DIR=/models/custom")
    try:
        container.wait_up()
        assert httpx.get(f"{container.url}/readyz").json()["model"] == {"name": "custom-vae", "version": "2.0.0"}
        assert httpx.get(f"{container.url}/sample?n=1&seed=0").status_code == 200
    finally:
        container.remove()


def test_a_tampered_mounted_graph_keeps_the_container_unready(tmp_path):
    model = model_copy(tmp_path)
    data = bytearray((model / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (model / "decoder.onnx").write_bytes(bytes(data))
    container = Container("-v", f"{model}:/models/custom:ro", "-e", "VAE_MODEL_DIR=/models/custom")
    try:
        container.wait_up(ready=False)
        poll(lambda: "not served, staying unready" in container.logs(), "the load failure is logged")
        response = httpx.get(f"{container.url}/readyz")
        assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
        logs = container.logs()
        assert "not served, staying unready" in logs and "decoder.onnx: SHA-256" in logs
    finally:
        container.remove()


def test_the_healthcheck_follows_vae_port():
    container = Container("-e", "VAE_PORT=9123", container_port=9123)
    try:
        container.wait_up()
        if Path(ENGINE).name == "podman":  # runs the image's HEALTHCHECK command now
            result = subprocess.run(
                [ENGINE, "healthcheck", "run", container.name], capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, result.stdout + result.stderr + container.logs()
        else:  # docker runs it on its own schedule (every 10 s after a 15 s start period)

            def health() -> str:
                return subprocess.run(
                    [ENGINE, "inspect", "--format", "{{.State.Health.Status}}", container.name],
                    capture_output=True,
                    text=True,
                ).stdout.strip()

            poll(lambda: health() == "healthy", "the container reports healthy", timeout=90)
    finally:
        container.remove()
