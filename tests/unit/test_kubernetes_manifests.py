"""Every Kubernetes manifest under deploy/ validated against the Kubernetes API's own schemas
(kubernetes-validate ships them, so this runs offline), as written and as kustomize renders them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BASE = DEPLOY / "kubernetes"
OPERATOR_OVERLAY = DEPLOY / "kubernetes-prometheus-operator"
PUSH_OVERLAY = DEPLOY / "kubernetes-push"
# Every kustomization the docs tell someone to apply (or that an overlay uses). An overlay inside its
# base fails with "cycle detected", so each overlay lives beside deploy/kubernetes, not in it.
KUSTOMIZATIONS = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))
# Custom resources: their schemas come with their operator's CRDs, not with Kubernetes.
CUSTOM_KINDS = {"ServiceMonitor"}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
VERSION = kubernetes_validate.latest_version()


def _objects(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None and d.get("kind") not in KUSTOMIZE_KINDS]


def _files() -> list[Path]:
    return sorted([*BASE.rglob("*.yaml"), *OPERATOR_OVERLAY.rglob("*.yaml"), *PUSH_OVERLAY.rglob("*.yaml")])


def _validate(doc: dict[str, Any]) -> None:
    if doc["kind"] in CUSTOM_KINDS:
        _validate_service_monitor(doc)
        return
    # strict: a misspelt or misplaced field is an error, as `kubectl apply --validate=strict` says.
    kubernetes_validate.validate(doc, VERSION, strict=True)


def _validate_service_monitor(doc: dict[str, Any]) -> None:
    """The fields of monitoring.coreos.com/v1 ServiceMonitor this project uses, by the CRD's rules."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert spec["selector"]["matchLabels"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scheme", "scrapeTimeout"}
        assert isinstance(endpoint["port"], str)


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_file_matches_the_kubernetes_schemas(path: Path) -> None:
    """Each object of each manifest file is valid for its kind (strict: no unknown fields)."""
    objects = _objects(path.read_text())
    for doc in objects:
        _validate(doc)


def test_the_validator_rejects_invalid_objects() -> None:
    """The validator is no rubber stamp: an unknown field and a wrong type are refused."""
    good = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}
    kubernetes_validate.validate(good, VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**good, "date": {"a": "b"}}, VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**good, "data": {"a": 1}}, VERSION, strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(
            {**good, "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor"}, VERSION
        )


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # The only reason to skip: kubectl is not a Python package, and `make` does not install it.
        pytest.skip("kubectl (its built-in kustomize) is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    return _objects(rendered.stdout)


def test_base_renders_only_builtin_kinds_and_validates() -> None:
    """`kubectl apply -k deploy/kubernetes` works on a cluster without the Prometheus Operator: the
    rendered base holds no custom resource, and every object is valid."""
    objects = _kustomize(BASE)
    assert {d["kind"] for d in objects} == {"ConfigMap", "Deployment", "Service"}
    for doc in objects:
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_operator_overlay_adds_the_service_monitor_and_validates() -> None:
    """The Prometheus Operator overlay is the base plus the ServiceMonitor, every object valid."""
    objects = _kustomize(OPERATOR_OVERLAY)
    assert {d["kind"] for d in objects} == {"ConfigMap", "Deployment", "Service", "ServiceMonitor"}
    for doc in objects:
        _validate(doc)


def test_every_kustomization_under_deploy_is_found() -> None:
    """The rendering test below covers the base, both overlays and the ServiceMonitor component."""
    assert set(KUSTOMIZATIONS) == {
        BASE,
        BASE / "components" / "servicemonitor",
        OPERATOR_OVERLAY,
        PUSH_OVERLAY,
    }
    assert not any(p.is_relative_to(BASE) for p in (OPERATOR_OVERLAY, PUSH_OVERLAY))


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_kustomization_renders_and_validates(directory: Path) -> None:
    """`kubectl kustomize DIR` (what `kubectl apply -k DIR` runs first) succeeds for every
    kustomization under deploy/ (no "cycle detected"), and every object it renders is valid."""
    objects = _kustomize(directory)
    assert objects
    for doc in objects:
        _validate(doc)


def test_push_overlay_is_the_base_plus_the_receiver() -> None:
    """`kubectl apply -k deploy/kubernetes-push` applies the base's daemon and the receiver with its
    Service and Ingress, every object valid."""
    names = {(d["kind"], d["metadata"]["name"]) for d in _kustomize(PUSH_OVERLAY)}
    base = {(d["kind"], d["metadata"]["name"]) for d in _kustomize(BASE)}
    assert base < names
    assert names - base == {
        ("ConfigMap", "thingspace-sms-sync-receiver"),
        ("Deployment", "thingspace-sms-sync-receiver"),
        ("Service", "thingspace-sms-sync-receiver"),
        ("Ingress", "thingspace-sms-sync-receiver"),
    }
