"""The Docker image and Compose stack as documented: BuildKit said, dependencies pinned, a stop
timeout above the worker's shutdown timeout, and no Postgres port published on the host."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sync_worker import variables

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OPERATIONS = (ROOT / "docs/operations.md").read_text()


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (DEPLOY / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def _runtime_closure() -> set[str]:
    """Every distribution the project needs at run time on Linux CPython (markers evaluated)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [Requirement(r) for r in deps]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if name in seen and not extras:
            continue
        seen.add(name)
        for raw in metadata.requires(req.name) or []:
            sub = Requirement(raw)
            if sub.marker is None or any(
                sub.marker.evaluate({"extra": e, "sys_platform": "linux", "implementation_name": "cpython"})
                for e in ("", *extras)
            ):
                todo.append(sub)
    return seen


def test_constraints_pin_every_runtime_dependency_within_pyproject_ranges() -> None:
    """deploy/constraints.txt pins exactly the runtime closure, each pin inside pyproject's range."""
    pins = _pins()
    assert set(pins) == _runtime_closure(), set(pins) ^ _runtime_closure()
    for raw in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(raw)
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), raw


def test_dockerfile_builds_with_the_constraints_and_says_buildkit() -> None:
    """The wheels are built under --constraint deploy/constraints.txt; the header says BuildKit is needed."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert "--constraint deploy/constraints.txt" in text
    assert "COPY deploy/constraints.txt" in text
    assert "RUN --mount" in text and "BuildKit" in text.split("FROM", 1)[0]
    assert "BuildKit" in OPERATIONS


def test_docker_run_examples_stop_slower_than_the_worker_shuts_down() -> None:
    """Every documented `docker run` of the daemon passes --stop-timeout above the shutdown timeout."""
    shutdown = float(
        next(v.default for v in variables.VARIABLES if v.name == "SYNC_SHUTDOWN_TIMEOUT_SECONDS")
    )
    runs = [
        c
        for c in re.findall(r"^docker run[^\n]*(?:\\\n[^\n]*)*", OPERATIONS, re.MULTILINE)
        if " migrate" not in c
    ]
    assert runs
    for command in runs:
        found = re.search(r"--stop-timeout[ =](\d+)", command)
        assert found and float(found.group(1)) > shutdown, command
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    grace = compose["services"]["sync-worker"]["stop_grace_period"]
    assert float(grace.rstrip("s")) > shutdown


def test_compose_publishes_no_postgres_port() -> None:
    """Compose does not publish 5432 on the host (a local Postgres would collide); the rest binds loopback."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert not str(port).endswith(":5432"), name
            assert str(port).startswith("127.0.0.1:"), (name, port)
