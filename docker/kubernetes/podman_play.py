"""Rendered kustomize output -> YAML that `podman kube play` runs on one machine (docker/test-image.sh).

    kubectl kustomize docker/kubernetes/base | python docker/kubernetes/podman_play.py --name vae-kube-1 \
        --image localhost/vae-service:test --host-port 18000 --grpc-host-port 18001 \
        --set VAE_MAX_IN_FLIGHT=512 > pod.yaml

What changes, and why: podman plays Deployments and ConfigMaps, not Services, autoscalers or budgets,
so only those two kinds are kept; one replica; the Deployment named `--name` (podman names the pod
after it: one name per run, so runs side by side do not collide); the locally built image; the
container ports published on 127.0.0.1, `http` on --host-port and `grpc` on --grpc-host-port (podman
publishes only ports that name a hostPort); `--set` adds ConfigMap settings.
Everything else (probes, security context, read-only root with its /tmp emptyDir) is played as rendered.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

PLAYED = ("ConfigMap", "Deployment")


def for_podman(
    documents: list[dict[str, Any]], name: str, image: str, host_ports: dict[str, int], settings: dict[str, str]
) -> list[dict[str, Any]]:
    """`host_ports`: the host port of each container port, by the port's name; every port must have one."""
    kept = [d for d in documents if d.get("kind") in PLAYED]
    for document in kept:
        if document["kind"] == "ConfigMap":
            document["data"] = {**document.get("data", {}), **settings}
            continue
        document["metadata"]["name"] = name
        document["spec"]["replicas"] = 1
        (container,) = document["spec"]["template"]["spec"]["containers"]
        container["image"] = image
        for port in container["ports"]:
            if port.get("name") not in host_ports:
                raise SystemExit(f"podman_play.py: no host port for the container port {port.get('name')!r}")
            port.update(hostPort=host_ports[port["name"]], hostIP="127.0.0.1")
    if [d["kind"] for d in kept].count("Deployment") != 1:
        raise SystemExit("podman_play.py: expected one Deployment in the rendered YAML")
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the Deployment's name, which podman's pod takes")
    parser.add_argument("--image", required=True)
    parser.add_argument("--host-port", type=int, required=True, help="the host port of the `http` container port")
    parser.add_argument("--grpc-host-port", type=int, required=True, help="the host port of the `grpc` one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a ConfigMap setting")
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.set)
    documents = [d for d in yaml.safe_load_all(sys.stdin) if d]
    yaml.safe_dump_all(
        for_podman(documents, args.name, args.image, {"http": args.host_port, "grpc": args.grpc_host_port}, settings),
        sys.stdout,
        sort_keys=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
