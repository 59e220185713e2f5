"""The integration suite runs over real HTTP against a base URL: by default a `vae-serve`
subprocess started here on a free port; with VAE_BASE_URL set, any running server."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
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
        # gRPC on a free port of its own too: 8001 may be taken, and each server here needs its own
        env.setdefault("VAE_GRPC_PORT", str(free_port()))
        # One worker unless a test asks for more: the default (one per CPU) would split the requests of a
        # test that changes the server's state (a load, an unload) between processes that do not share it.
        env.setdefault("VAE_WORKERS", "1")
        self.grpc_target = f"127.0.0.1:{env['VAE_GRPC_PORT']}"
        self.log_path = tmp / f"server-{self.port}.log"
        source = {} if "VAE_MODEL_REPOSITORY" in env else {"VAE_MODEL_DIR": str(MODEL_DIR)}
        environment = {**os.environ, **source, "VAE_HOST": "127.0.0.1", "VAE_PORT": str(self.port), **env}
        self._log_file = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli"],
            cwd=REPO,
            env=environment,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

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

    def __enter__(self) -> Server:
        """Started and ready (`wait`), stopped on leaving, also when the wait fails."""
        try:
            self.wait(timeout=90)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

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
def _served(tmp_path_factory):
    """(base URL, gRPC target) of the server the suite runs against: VAE_BASE_URL and VAE_GRPC_TARGET when
    set (a container, a pod), else a vae-serve started here."""
    grpc_port = str(free_port())
    tmp = tmp_path_factory.mktemp("server")
    with serving(tmp, VAE_MAX_IN_FLIGHT="512", VAE_MAX_UPLOADS="512", VAE_GRPC_PORT=grpc_port) as url:
        remote = os.environ.get("VAE_BASE_URL")
        yield url, os.environ.get("VAE_GRPC_TARGET") if remote else f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="session")
def base_url(_served):
    return _served[0]


@pytest.fixture(scope="session")
def grpc_target(_served):
    """host:port of the server's gRPC; a remote server without VAE_GRPC_TARGET skips the gRPC tests."""
    if _served[1] is None:
        pytest.skip("VAE_BASE_URL is set without VAE_GRPC_TARGET: no gRPC address to test")
    return _served[1]


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
    with (
        serving(tmp_path_factory.mktemp("bundled"), VAE_MODEL_REPOSITORY=str(REPO / "artifacts")) as url,
        httpx.Client(base_url=url, timeout=120) as http,
    ):
        yield http


def status_counts(url: str, status_prefix: str) -> dict[str, float]:
    """The request counts of /metrics whose status starts with `status_prefix`, by label set."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    pattern = re.compile(r'^vae_requests_total\{(.*status="' + status_prefix + r'[^"]*".*)\} (\S+)$', re.M)
    return {labels: float(value) for labels, value in pattern.findall(text)}


def server_errors(url: str) -> dict[str, float]:
    """The 5xx counts (/readyz's 503s while the model loads included)."""
    return status_counts(url, "5")


class HealthGuard:
    """Around an attack: /healthz polled from a thread the whole time. On exit: no poll waited
    `limit_s` or more, the server counted no new 5xx, and it is ready."""

    def __init__(self, url: str, limit_s: float = 1.0, max_polls: int = 10_000, unready_allowed: bool = False) -> None:
        """`unready_allowed`: the test makes the server unready on purpose (an unload): /readyz's 503s
        are not counted as server errors."""
        self.url, self.limit_s, self.max_polls = url, limit_s, max_polls
        self.unready_allowed = unready_allowed
        self.waits: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._errors_before: dict[str, float] = {}

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for _ in range(self.max_polls):  # bounded: several minutes at the pace below
                began = time.monotonic()
                try:
                    response = client.get("/healthz")
                    if response.status_code != 200 or response.json() != {"status": "ok"}:
                        self.failures.append(f"/healthz answered {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"/healthz failed: {exc!r}")
                self.waits.append(time.monotonic() - began)
                if self._stop.wait(0.02):  # pacing between polls, not synchronisation
                    return

    def _errors(self) -> dict[str, float]:
        errors = server_errors(self.url)
        return {k: v for k, v in errors.items() if 'route="/readyz"' not in k} if self.unready_allowed else errors

    def __enter__(self) -> HealthGuard:
        self._errors_before = self._errors()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the /healthz poller did not stop"
        assert not self.failures, self.failures
        assert self.waits and max(self.waits) < self.limit_s, f"/healthz waited {max(self.waits, default=0):.2f} s"
        assert self._errors() == self._errors_before, self._errors()
        ready = httpx.get(f"{self.url}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
