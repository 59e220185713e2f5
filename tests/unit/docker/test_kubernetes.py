"""docker/kubernetes/: the kustomize base and overlay render, validate strictly against Kubernetes'
schemas, and hold what the service needs (probes on real routes, settings that exist, HTTP and gRPC on
the ports the settings name, a shutdown that fits in the grace period, the hardening). A copy with a
wrong field name fails."""

from __future__ import annotations

import re

import pytest

from service.app import create_app
from service.cli import GRACEFUL_SHUTDOWN_S
from service.settings import Settings, variable_names
from tests.conftest import REPO
from tests.unit.docker.manifests import (
    KUBERNETES,
    Invalid,
    broken_copy,
    by_kind,
    load,
    needs_kubectl,
    render,
    validate,
    validate_kubernetes,
)

BASE, OVERLAY = KUBERNETES / "base", KUBERNETES / "overlays" / "model-volume"


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def container_ports(deployment: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container(deployment)["ports"]}


def test_every_resource_file_of_the_base_validates_on_its_own():
    """Without kubectl (a machine that cannot render), the plain resources are still checked."""
    files = sorted(BASE.glob("*.yaml"))
    documents = [d for path in files if path.name != "kustomization.yaml" for d in load(path)]
    assert {d["kind"] for d in documents} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for document in documents:
        validate_kubernetes(document)


@needs_kubectl
@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_the_rendered_kustomization_validates_strictly(directory):
    documents = render(directory)
    expected = {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert {d["kind"] for d in documents} == expected | ({"PersistentVolumeClaim"} if directory == OVERLAY else set())
    for document in documents:
        validate(document)


@needs_kubectl
@pytest.mark.parametrize(
    "file, old, new",
    [
        ("base/deployment.yaml", "readinessProbe:", "readynessProbe:"),  # a misspelt field
        ("base/hpa.yaml", "averageUtilization:", "averageUtilisation:"),
        ("overlays/model-volume/pvc.yaml", "accessModes:", "accessMode:"),
        ("base/deployment.yaml", "containerPort: 8000", "containerPort: http"),  # a wrong type
    ],
)
def test_a_copy_with_a_wrong_field_fails(tmp_path, file, old, new):
    copy = broken_copy(KUBERNETES, tmp_path / "kubernetes", file, old, new)
    documents = render(copy / "overlays" / "model-volume")
    with pytest.raises(Invalid, match=re.escape(new.split(":")[0]) if new.endswith(":") else "http"):  # noqa: PT012
        for document in documents:  # the invalid one is among them: all are checked in turn
            validate(document)


@needs_kubectl
def test_the_deployment_runs_one_hardened_worker_per_pod():
    resources = by_kind(render(BASE))
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    main = container(resources["Deployment"])
    settings = resources["ConfigMap"]["data"]
    assert settings["VAE_WORKERS"] == "1" and "replicas" not in resources["Deployment"]["spec"]  # the HPA's
    assert set(settings) <= set(variable_names()), "every ConfigMap key must be a vae-service setting"
    assert main["envFrom"] == [{"configMapRef": {"name": resources["ConfigMap"]["metadata"]["name"]}}]
    assert (
        pod["enableServiceLinks"] is False
    )  # else the Service's address lands in VAE_-prefixed variables in the environment
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    dockerfile_user = re.search(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert dockerfile_user, "runAsNonRoot needs the image's user to be numeric"
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == tuple(
        map(int, dockerfile_user.groups())
    )
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert [m for m in main["volumeMounts"] if m["mountPath"] == "/tmp"] and "emptyDir" in volumes["tmp"]
    token = next(e for e in main["env"] if e["name"] == "VAE_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True  # without the Secret, the control routes stay off


@needs_kubectl
def test_probes_ask_routes_the_app_serves_on_the_port_it_listens_on():
    resources = by_kind(render(BASE))
    main = container(resources["Deployment"])
    assert str(container_ports(resources["Deployment"])["http"]) == resources["ConfigMap"]["data"]["VAE_PORT"]
    paths = set(create_app().openapi()["paths"])
    probes = {kind: main[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/v2/models/fashion-mnist-vae/ready"
    assert probes["startupProbe"] == probes["readinessProbe"]
    assert "/v2/models/{name}/ready" in paths and "/healthz" in paths
    assert all(probe["port"] == "http" for probe in probes.values())  # gRPC's readiness follows the same models
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # a slow model load is not killed


@needs_kubectl
@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_the_pod_and_the_service_expose_http_and_grpc_on_the_ports_the_settings_name(directory):
    resources = by_kind(render(directory))
    settings = resources["ConfigMap"]["data"]
    ports = container_ports(resources["Deployment"])
    assert ports == {"http": int(settings["VAE_PORT"]), "grpc": int(settings["VAE_GRPC_PORT"])}
    assert ports["grpc"] == Settings.model_fields["grpc_port"].default == 8001  # Triton's, as in the image
    service = {port["name"]: port for port in resources["Service"]["spec"]["ports"]}
    assert {name: port["targetPort"] for name, port in service.items()} == {"http": "http", "grpc": "grpc"}
    assert service["grpc"]["port"] == 8001 and service["http"]["port"] == 80
    # HTTP/2 without TLS, so that a mesh or gateway does not speak HTTP/1.1 to the gRPC port.
    assert service["grpc"]["appProtocol"] == "kubernetes.io/h2c" and "appProtocol" not in service["http"]


@needs_kubectl
def test_termination_drains_then_leaves_uvicorn_its_whole_graceful_shutdown():
    deployment = by_kind(render(BASE))["Deployment"]
    pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "/bin/sleep"  # docker/test-image.sh checks that the image has it
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(pre_stop[1]) + GRACEFUL_SHUTDOWN_S


@needs_kubectl
def test_service_hpa_and_pdb_select_the_deployments_pods():
    resources = by_kind(render(BASE))
    labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert resources["Service"]["spec"]["selector"].items() <= labels.items()
    assert resources["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = resources["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vae-service"}
    assert (
        hpa["metrics"][0]["resource"]["name"] == "cpu"
        and hpa["minReplicas"] > resources["PodDisruptionBudget"]["spec"]["minAvailable"]
    )
    assert "cpu" in container(resources["Deployment"])["resources"]["requests"]  # utilisation is of the request


@needs_kubectl
def test_the_overlay_serves_a_read_only_repository_volume_instead_of_the_bundled_one():
    resources = by_kind(render(OVERLAY))
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    mount = next(m for m in container(resources["Deployment"])["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] and resources["ConfigMap"]["data"]["VAE_MODEL_REPOSITORY"] == mount["mountPath"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == resources["PersistentVolumeClaim"]["metadata"]["name"]
    assert "ReadOnlyMany" in resources["PersistentVolumeClaim"]["spec"]["accessModes"]
    assert {v["name"] for v in pod["volumes"]} == {"models", "tmp"}  # the base's /tmp stays
