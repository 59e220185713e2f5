"""docker/kubernetes/podman_play.py: what docker/test-image.sh plays with `podman kube play` is the
rendered base, changed only where podman needs it, and still a valid Deployment."""

from __future__ import annotations

import importlib.util

from tests.unit.docker.manifests import KUBERNETES, by_kind, needs_kubectl, render, validate

spec = importlib.util.spec_from_file_location("podman_play", KUBERNETES / "podman_play.py")
podman_play = importlib.util.module_from_spec(spec)
spec.loader.exec_module(podman_play)


@needs_kubectl
def test_only_the_deployment_and_its_configmap_are_played_on_the_local_image_and_port():
    rendered = render(KUBERNETES / "base")
    played = podman_play.for_podman(
        render(KUBERNETES / "base"), "vae-kube-7", "localhost/vae-service:test", 18000, {"VAE_MAX_IN_FLIGHT": "512"}
    )
    resources = by_kind(played)
    assert set(resources) == {"ConfigMap", "Deployment"}
    deployment = resources["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert deployment["metadata"]["name"] == "vae-kube-7" and deployment["spec"]["replicas"] == 1
    assert container["image"] == "localhost/vae-service:test"
    assert container["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP", "hostPort": 18000, "hostIP": "127.0.0.1"}
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
