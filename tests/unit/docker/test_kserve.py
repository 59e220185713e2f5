"""docker/kserve/: the InferenceServices and the ServingRuntime validate against KServe's own CRD
schemas (v0.20.0, vendored), strictly; a copy with a wrong field name fails; and they follow KServe's
contract for a custom container (kserve-container, port 8080, PROTOCOL=v2), its convention for gRPC
(a port named `h2c` on 9000, as its Triton runtime serves it, and grpc-v2 among the runtime's protocols),
and the service's own."""

from __future__ import annotations

import pytest

from service.app import create_app
from service.settings import variable_names
from tests.unit.docker.manifests import KSERVE, Invalid, broken_copy, kserve_schemas, load, validate

FILES = ("inferenceservice.yaml", "servingruntime.yaml", "inferenceservice-storage.yaml")


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def kserve_container(file: str) -> dict:
    (document,) = load(KSERVE / file)
    spec = document["spec"].get("predictor", document["spec"])
    (container,) = spec["containers"]
    return container


def is_grpc(port: dict) -> bool:
    """KServe's rule: a container port whose name holds `grpc` or `h2c` gets appProtocol
    kubernetes.io/h2c on the Service KServe makes (reconcilers/service/service_reconciler.go, v0.20.0)."""
    return "grpc" in port.get("name", "") or "h2c" in port.get("name", "")


@pytest.mark.parametrize("file", FILES)
def test_validates_against_kserves_schema(file):
    (document,) = load(KSERVE / file)
    validate(document)


@pytest.mark.parametrize(
    "file, old, new",
    [
        ("inferenceservice.yaml", "minReplicas:", "minReplica:"),
        ("inferenceservice.yaml", "readOnlyRootFilesystem:", "readOnlyRootFileSystem:"),  # deep in the pod spec
        ("servingruntime.yaml", "supportedModelFormats:", "supportedModelFormat:"),
        ("inferenceservice-storage.yaml", "storageUri:", "storageURI:"),
        ("inferenceservice.yaml", "  name: vae-service\n", "  name: vae-service\n  nmae: x\n"),  # in the metadata
    ],
)
def test_a_copy_with_a_wrong_field_fails(tmp_path, file, old, new):
    copy = broken_copy(KSERVE, tmp_path / "kserve", file, old, new)
    (document,) = load(copy / file)
    with pytest.raises(Invalid, match="was unexpected"):
        validate(document)


def test_the_strict_schema_still_accepts_what_kserve_leaves_open():
    """Maps (labels, annotations, resources) and fields KServe keeps as they are stay open."""
    schema = kserve_schemas()["serving.kserve.io/v1beta1/InferenceService"]
    predictor = schema["properties"]["spec"]["properties"]["predictor"]["properties"]
    assert predictor["annotations"].get("additionalProperties") == {"type": "string"}
    assert schema["properties"]["spec"]["additionalProperties"] is False


def test_the_custom_predictor_follows_kserves_contract():
    (service,) = load(KSERVE / "inferenceservice.yaml")
    (container,) = service["spec"]["predictor"]["containers"]
    variables = env(container)
    assert container["name"] == "kserve-container" and container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "h2c", "containerPort": 9000, "protocol": "TCP"},
    ]
    assert variables["PROTOCOL"] == "v2" and variables["VAE_PORT"] == "8080" and variables["VAE_WORKERS"] == "1"
    assert variables["VAE_GRPC_PORT"] == "9000"
    paths = set(create_app().openapi()["paths"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == 8080 and get["path"].replace("fashion-mnist-vae", "{name}") in paths


def test_the_runtime_serves_the_downloaded_model_directory():
    (runtime,) = load(KSERVE / "servingruntime.yaml")
    (service,) = load(KSERVE / "inferenceservice-storage.yaml")
    (container,) = runtime["spec"]["containers"]
    assert env(container)["VAE_MODEL_DIR"] == "/mnt/models"  # where KServe's storage initializer puts storageUri
    model = service["spec"]["predictor"]["model"]
    assert (
        model["runtime"] == runtime["metadata"]["name"]
        and model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    )
    assert model["modelFormat"] in [
        {k: f[k] for k in ("name", "version")} for f in runtime["spec"]["supportedModelFormats"]
    ]


@pytest.mark.parametrize("file", FILES[:2])
def test_http_and_grpc_listen_on_the_ports_the_container_declares(file):
    """KServe's Service sends its port 80 to the first container port (HTTP, the probes' port) and each
    other port to itself: the gRPC one must be where VAE_GRPC_PORT makes the image listen."""
    container = kserve_container(file)
    variables = env(container)
    http, *others = container["ports"]
    (grpc,) = [port for port in others if is_grpc(port)]
    assert not is_grpc(http) and str(http["containerPort"]) == variables["VAE_PORT"]
    assert grpc == {"name": "h2c", "containerPort": 9000, "protocol": "TCP"}  # kserve-tritonserver's gRPC port
    assert str(grpc["containerPort"]) == variables["VAE_GRPC_PORT"] != variables["VAE_PORT"]
    assert {container[probe]["httpGet"]["port"] for probe in ("livenessProbe", "readinessProbe")} == {
        http["containerPort"]
    }


def test_the_runtime_declares_both_protocols():
    (runtime,) = load(KSERVE / "servingruntime.yaml")
    assert runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]  # as kserve-tritonserver declares them


@pytest.mark.parametrize("file", FILES[:2])
def test_every_vae_variable_is_a_setting(file):
    (document,) = load(KSERVE / file)
    spec = document["spec"].get("predictor", document["spec"])
    names = {name for container in spec["containers"] for name in env(container) if name.startswith("VAE_")}
    assert names <= set(variable_names())
