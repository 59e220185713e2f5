"""The layers import downward only: model.core (torch-free) <- model (training) <- export <- service,
with the service standing on model.core alone. Checked on the source, and on a real request."""

import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS = ("core", "model", "export", "service")
# What each layer must never import. The core may import torch inside a function (a likelihood's
# torch twin, called only by training), never at module level: importing the core stays torch-free.
FORBIDDEN = {
    "core": {"model", "export", "service"},
    "model": {"export", "service"},
    "export": {"service"},
    "service": {"model", "export", "torch"},
}
FORBIDDEN_AT_MODULE_LEVEL = {"core": {"torch"}}


def layer_of(module: str) -> str | None:
    """The layer (or torch) a dotted module name belongs to; None for other libraries."""
    parts = module.split(".")
    if parts[0] == "model":
        return "core" if parts[1:2] == ["core"] else "model"
    if parts[0] in ("export", "service", "torch"):
        return parts[0]
    return None


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement, lazy ones included.
    `from model import checkpoint` counts as importing model.checkpoint."""
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import at line {node.lineno}: use absolute imports"
            found += [(f"{node.module}.{alias.name}", id(node) in top_level) for alias in node.names]
    return found


def layer_imports() -> list[tuple[str, str, str, bool]]:
    """(importing module, its layer, imported module, at module level) across the three packages."""
    edges = []
    for package in ("model", "export", "service"):
        for path in sorted((REPO / package).rglob("*.py")):
            name = module_name(path)
            for target, top in imports(ast.parse(path.read_text(), filename=str(path))):
                if layer_of(target) is not None:
                    edges.append((name, layer_of(name), target, top))
    return edges


def test_every_layer_imports_only_downward():
    edges = layer_imports()
    assert {layer for _, layer, _, _ in edges} == set(LAYERS)  # the walk saw every layer
    wrong = [
        f"{source} imports {target}"
        for source, layer, target, top in edges
        if layer_of(target) in FORBIDDEN[layer]
        or (top and layer_of(target) in FORBIDDEN_AT_MODULE_LEVEL.get(layer, set()))
    ]
    assert wrong == []


def test_the_layers_have_no_import_cycle():
    graph = {layer: set() for layer in LAYERS}
    for _, layer, target, _ in layer_imports():
        if layer_of(target) in LAYERS and layer_of(target) != layer:
            graph[layer].add(layer_of(target))
    order = []  # a topological order exists exactly when there is no cycle
    remaining = {layer: set(targets) for layer, targets in graph.items()}
    while remaining:
        leaves = [layer for layer, targets in remaining.items() if not targets]
        assert leaves, f"import cycle among {sorted(remaining)}: {remaining}"
        for leaf in leaves:
            order.append(leaf)
            del remaining[leaf]
        for targets in remaining.values():
            targets.difference_update(leaves)
    assert order[0] == "core" and graph["core"] == set()  # the core is the bottom: it imports no other layer


def test_the_rules_catch_an_upward_import():
    tree = ast.parse("import numpy\nfrom service.engine import Engine\n\ndef f():\n    import torch\n")
    assert imports(tree) == [("numpy", True), ("service.engine.Engine", True), ("torch", False)]
    assert [layer_of(m) for m, _ in imports(tree)] == [None, "service", "torch"]
    assert layer_of("model.core.artifact") == "core" and layer_of("model.vae") == "model"


SERVE_ONE_REQUEST = """
import asyncio, io, json, sys, time

import httpx
import numpy as np
from PIL import Image

from service.app import create_app


async def main():
    app = create_app()  # default settings: the bundled model
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(buffer, "PNG")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            deadline = time.monotonic() + 120
            while (await client.get("/readyz")).status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("the bundled model did not become ready in 120 s")
                await asyncio.sleep(0.05)
            response = await client.post("/encode", content=buffer.getvalue(), headers={"content-type": "image/png"})
    print(json.dumps({"status": response.status_code, "body": response.json(),
                      "torch": "torch" in sys.modules,
                      "otel_sdk": [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exp"))],
                      "ours": sorted(m for m in sys.modules if m.split(".")[0] in ("model", "export", "service"))}))


asyncio.run(main())
"""


@pytest.fixture(scope="module")
def served():
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env["PYTHONPATH"] = str(REPO)
    with socket.socket() as sock:  # gRPC on too, on a free port: 8001 may be taken
        sock.bind(("127.0.0.1", 0))
        env["VAE_GRPC_PORT"] = str(sock.getsockname()[1])
    done = subprocess.run(
        [sys.executable, "-c", SERVE_ONE_REQUEST], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_serving_a_request_never_imports_torch(served):
    assert served["status"] == 200
    (result,) = served["body"]["results"]
    assert len(result["mean"]) == served["body"]["latent_dim"] > 0
    assert served["torch"] is False


def test_serving_a_request_without_tracing_never_imports_the_opentelemetry_sdk(served):
    # VAE_OTLP_ENDPOINT unset: tracing is off. (FastAPI itself imports opentelemetry's API, a few small modules.)
    assert served["status"] == 200 and served["otel_sdk"] == []


def test_serving_a_request_loads_only_the_core_and_the_service(served):
    # `model` itself (its __init__: a docstring and a version) is loaded as the parent of model.core
    assert {layer_of(module) for module in served["ours"] if module != "model"} == {"core", "service"}
