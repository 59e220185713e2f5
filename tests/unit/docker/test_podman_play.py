"""docker/kubernetes/podman_play.py: what docker/test-image.sh plays with `podman kube play` is the
rendered base, changed only where podman needs it, and still a valid Deployment."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys

import pytest
import yaml

from tests.unit.docker.manifests import KUBERNETES, by_kind, needs_kubectl, render, validate

spec = importlib.util.spec_from_file_location("podman_play", KUBERNETES / "podman_play.py")
podman_play = importlib.util.module_from_spec(spec)
spec.loader.exec_module(podman_play)


@needs_kubectl
def test_only_the_deployment_and_its_configmap_are_played_on_the_local_image_and_ports():
    rendered = render(KUBERNETES / "base")
    played = podman_play.for_podman(
        render(KUBERNETES / "base"),
        "vae-kube-7",
        "localhost/vae-service:test",
        {"http": 18000, "grpc": 18001},
        {"VAE_MAX_IN_FLIGHT": "512"},
    )
    resources = by_kind(played)
    assert set(resources) == {"ConfigMap", "Deployment"}
    deployment = resources["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert deployment["metadata"]["name"] == "vae-kube-7" and deployment["spec"]["replicas"] == 1
    assert container["image"] == "localhost/vae-service:test"
    assert container["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP", "hostPort": 18000, "hostIP": "127.0.0.1"},
        {"name": "grpc", "containerPort": 8001, "protocol": "TCP", "hostPort": 18001, "hostIP": "127.0.0.1"},
    ]
    original = by_kind(rendered)
    assert resources["ConfigMap"]["data"] == {**original["ConfigMap"]["data"], "VAE_MAX_IN_FLIGHT": "512"}
    (before,) = original["Deployment"]["spec"]["template"]["spec"]["containers"]
    for field in (
        "securityContext",
        "volumeMounts",
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "lifecycle",
        "envFrom",
        "env",
        "resources",
    ):
        assert container[field] == before[field]  # played as rendered
    for document in played:
        validate(document)


@needs_kubectl
def test_a_container_port_without_a_host_port_is_refused():
    """Else it would go unpublished, and the suite would find nothing on the port it was told."""
    with pytest.raises(SystemExit, match="no host port for the container port 'grpc'"):
        podman_play.for_podman(render(KUBERNETES / "base"), "vae-kube-7", "localhost/vae-service:test", {"http": 1}, {})


@needs_kubectl
def test_the_command_line_publishes_http_and_grpc_on_their_host_ports(monkeypatch, capsys):
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / "base")], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    monkeypatch.setattr(sys, "stdin", io.StringIO(rendered))
    argv = ["--name", "vae-kube-8", "--image", "localhost/vae-service:test", "--host-port", "18000"]
    assert podman_play.main([*argv, "--grpc-host-port", "18001", "--set", "VAE_MAX_UPLOADS=512"]) == 0
    played = by_kind([d for d in yaml.safe_load_all(capsys.readouterr().out) if d])
    (container,) = played["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert {port["name"]: port["hostPort"] for port in container["ports"]} == {"http": 18000, "grpc": 18001}
    assert played["ConfigMap"]["data"]["VAE_MAX_UPLOADS"] == "512"
