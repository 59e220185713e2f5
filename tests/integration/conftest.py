"""The integration suite runs over real HTTP against a base URL: by default a `vae-serve`
subprocess started here on a free port; with VAE_BASE_URL set, any running server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.registry import version_key
from tests.conftest import REPO


def newest_version(model_dir: Path) -> Path:
    """The version directory the bundled repository serves as the model's default: its highest."""
    return max((p.parent for p in model_dir.glob("*/manifest.json")), key=lambda p: version_key(p.name))


# The model the suite serves: the bundled default model's default version, as the image serves it, so the
# same tests run here and against the container.
MODEL_DIR = Path(os.environ.get("VAE_TEST_MODEL_DIR") or newest_version(REPO / "artifacts" / "fashion-mnist-vae"))
MODEL_VERSION = json.loads((MODEL_DIR / "manifest.json").read_text())["version"]


def poll(condition, what: str, timeout: float = 30) -> None:
    """Wait until `condition()` holds, checking every 0.1 s; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `vae-serve` process on a free port, with its log kept for assertions."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"server-{self.port}.log"
        source = {} if "VAE_MODEL_REPOSITORY" in env else {"VAE_MODEL_DIR": str(MODEL_DIR)}
        environment = {**os.environ, **source, "VAE_HOST": "127.0.0.1", "VAE_PORT": str(self.port), **env}
        self._log_file = self.log_path.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "service.cli"], cwd=REPO, env=environment,
                                        stdout=self._log_file, stderr=subprocess.STDOUT)

    def wait(self, ready: bool = True, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vae-serve exited: {self.log()}")
            try:
                status = httpx.get(f"{self.url}/readyz", timeout=1).status_code
                if (status == 200) == ready:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"vae-serve not {'ready' if ready else 'up'} after {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


@contextmanager
def serving(tmp: Path, **env: str) -> Iterator[str]:
    """VAE_BASE_URL when it is set, else the URL of a vae-serve started here with `env`, stopped after."""
    if os.environ.get("VAE_BASE_URL"):
        yield os.environ["VAE_BASE_URL"].rstrip("/")
        return
    server = Server(tmp, **env)
    try:
        server.wait()
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def base_url(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("server"), VAE_MAX_IN_FLIGHT="512", VAE_MAX_UPLOADS="512") as url:
        yield url


@pytest.fixture(scope="session")
def remote(base_url):
    return os.environ.get("VAE_BASE_URL") is not None


@pytest.fixture(scope="session")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def card(http):
    return http.get("/v1/model").json()


@pytest.fixture(scope="session")
def local_model():
    """The same graphs, loaded here, to compare the server's answers with direct onnxruntime output."""
    from model.core.artifact import load_model_dir

    return load_model_dir(MODEL_DIR)


@pytest.fixture(scope="session")
def test_images():
    """The first 64 Fashion-MNIST test images as (N, 1, 28, 28) in [0, 1]."""
    from model.data import DataMissingError, load_dataset

    try:
        return load_dataset("fashion-mnist").test[:64]
    except DataMissingError as exc:
        pytest.skip(str(exc))


def png(pixels: np.ndarray) -> bytes:
    from model.core.preprocess import array_to_png

    return array_to_png(pixels)


@pytest.fixture(scope="module")
def bundled_client(tmp_path_factory) -> Iterator[httpx.Client]:
    """A client of the bundled repository (artifacts/), served as `make serve` serves it, or of VAE_BASE_URL."""
    with serving(tmp_path_factory.mktemp("bundled"), VAE_MODEL_REPOSITORY=str(REPO / "artifacts")) as url:
        with httpx.Client(base_url=url, timeout=120) as http:
            yield http
