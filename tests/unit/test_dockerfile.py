"""The image's HEALTHCHECK command, run here against a stub server: it must ask the port VAE_PORT names.
The ports it exposes are those its settings listen on, and the files it bundles are those the models need."""

import http.server
import json
import os
import re
import subprocess
import sys
import threading

import pytest

from service.settings import Settings
from tests.conftest import REPO


def instructions(keyword: str) -> list[str]:
    """The arguments of each of the Dockerfile's `keyword` instructions, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    return [line[len(keyword) :].strip() for line in text.splitlines() if line.startswith(f"{keyword} ")]


def healthcheck_command() -> list[str]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    return json.loads(re.search(r"\bCMD\s+(\[.*\])\s*$", line).group(1))


@pytest.fixture
def stub():
    """A server on a free port whose /readyz answers the status the test sets."""

    class Handler(http.server.BaseHTTPRequestHandler):
        status = 200

        def do_GET(self):
            self.send_response(Handler.status if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, Handler
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def run_check(port: int) -> int:
    command = healthcheck_command()
    assert command[0] == "python3"
    environment = {**os.environ, "VAE_PORT": str(port)}
    return subprocess.run([sys.executable, *command[1:]], env=environment, capture_output=True, timeout=30).returncode


def test_the_healthcheck_asks_the_port_in_vae_port(stub):
    server, handler = stub
    assert run_check(server.server_address[1]) == 0
    handler.status = 503
    assert run_check(server.server_address[1]) != 0


def test_the_healthcheck_fails_where_nothing_listens(stub):
    server, _ = stub
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    assert run_check(port) != 0


def copied_to(destination: str) -> set[str]:
    """The source paths of the Dockerfile's COPY instructions into `destination`."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    sources: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and parts[-1].rstrip("/") == destination.rstrip("/"):
            sources.update(parts[1:-1])
    return sources


def test_the_image_bundles_every_model_versions_serving_files():
    versions = [v for v in (REPO / "artifacts").glob("*/*") if (v / "manifest.json").is_file()]
    assert {v.parent.name for v in versions} >= {"fashion-mnist-vae", "fashion-mnist-gaussian"}
    for version in versions:
        relative = version.relative_to(REPO).as_posix()
        manifest = json.loads((version / "manifest.json").read_text())
        serving = {"manifest.json", manifest["encoder"]["file"], manifest["decoder"]["file"]}
        if manifest.get("anomaly"):
            serving.add(manifest["anomaly"]["file"])
        if (manifest.get("prior") or {}).get("graph"):  # a learned prior: without it the version does not load
            serving.add(manifest["prior"]["graph"]["file"])
        assert {f"{relative}/{name}" for name in serving} <= copied_to(f"/app/models/{relative[len('artifacts/') :]}/")


def test_the_image_bundles_each_models_version_policy():
    """A model's config.json decides which of its versions are served: without it the image would serve
    only the newest, and the previous version of the default model would not be there to pin."""
    for config in (REPO / "artifacts").glob("*/config.json"):
        relative = config.relative_to(REPO).as_posix()
        assert relative in copied_to(f"/app/models/{config.parent.name}/"), relative


def test_the_image_exposes_the_http_and_grpc_ports_it_listens_on():
    environment = dict(re.findall(r"\b(VAE_\w+)=(\S+)", " ".join(instructions("ENV"))))
    (exposed,) = instructions("EXPOSE")
    assert sorted(exposed.split()) == sorted([environment["VAE_PORT"], environment["VAE_GRPC_PORT"]])
    # The settings' defaults (Triton's ports), so that the image listens where vae-serve does elsewhere.
    assert (int(environment["VAE_PORT"]), int(environment["VAE_GRPC_PORT"])) == (
        Settings.model_fields["port"].default,
        Settings.model_fields["grpc_port"].default,
    )
