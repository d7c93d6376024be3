"""deploy/ for push mode names only this project's commands and variables, and publishes only the
callback route behind TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sync_worker import cli, receiver, variables

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VARIABLES = {v.name for v in variables.VARIABLES}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((DEPLOY / "kubernetes-push").glob("*.yaml")):
        for doc in docs(path):
            if doc["kind"] != "Kustomization":
                found[doc["kind"] + "/" + doc["metadata"]["name"]] = doc
    return found


def test_push_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    """The overlay applies the base and every receiver manifest; the example Secret stays out."""
    kustomization = docs(DEPLOY / "kubernetes-push" / "kustomization.yaml")[0]
    files = {p.name for p in (DEPLOY / "kubernetes-push").glob("*.yaml")}
    assert set(kustomization["resources"]) == {"../kubernetes"} | files - {
        "kustomization.yaml",
        "receiver-secret.example.yaml",
    }


def test_receiver_workloads_run_receive_with_known_variables_only() -> None:
    """Compose and Kubernetes run `sync-worker receive` with settings variables only."""
    parser = cli.build_parser()
    compose = docs(DEPLOY / "docker-compose.push.yml")[0]["services"]["receiver"]
    deployment = k8s()["Deployment/thingspace-sms-sync-receiver"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for argv in (compose["command"], container["args"]):
        assert argv == ["receive"]
        parser.parse_args(argv)
    assert set(compose["environment"]) <= VARIABLES
    assert {e["name"] for e in container["env"]} <= VARIABLES
    assert set(k8s()["ConfigMap/thingspace-sms-sync-receiver"]["data"]) <= VARIABLES


def test_receiver_pod_is_locked_down_and_probed_on_the_metrics_port() -> None:
    """Non-root, read-only root, no privilege escalation; probes on the private metrics port."""
    pod = k8s()["Deployment/thingspace-sms-sync-receiver"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_the_public_front_routes_only_the_callback_path_over_tls() -> None:
    """Ingress and Caddy publish /callbacks/ only, with TLS; metrics stay private."""
    ingress = k8s()["Ingress/thingspace-sms-sync-receiver"]["spec"]
    assert ingress["tls"]
    paths = [p["path"] for rule in ingress["rules"] for p in rule["http"]["paths"]]
    assert paths == [receiver.PATH_PREFIX]
    caddy = (DEPLOY / "caddy" / "Caddyfile").read_text()
    assert f"handle {receiver.PATH_PREFIX}*" in caddy
    assert "tls internal" not in caddy  # a self-signed certificate is refused by ThingSpace
