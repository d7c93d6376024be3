"""deploy/ names only what exists: commands, variables, ports, images and metrics of this project."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sync_worker import callback_metrics, cli, config, metrics, simulator, variables

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
APP_IMAGE = f"thingspace-sms-sync:{VERSION}"
# Images not built here; each is pinned to a tag and named on purpose.
EXTERNAL_IMAGES = {"postgres:16-alpine"}
METRICS_PORT = 9108
SIM_PORT = 8080
SETTINGS_VARIABLES = {v.name for v in variables.VARIABLES}
# Interpreter knobs the Dockerfile sets for Python and pip themselves.
DOCKER_ONLY_VARIABLES = {
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
}

YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
JSON_FILES = sorted(DEPLOY.rglob("*.json"))
UNITS = sorted([*DEPLOY.glob("systemd/*.service"), *DEPLOY.glob("systemd/*.timer")])


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_docs(pattern: str = "kubernetes*/**/*.yaml") -> list[dict[str, Any]]:
    """Every Kubernetes object of the base and its overlays (a kustomization is tooling, not an object)."""
    docs = [doc for path in sorted(DEPLOY.glob(pattern)) for doc in load_yaml(path)]
    return [doc for doc in docs if doc["kind"] not in ("Kustomization", "Component")]


def compose() -> dict[str, Any]:
    doc = load_yaml(DEPLOY / "docker-compose.yml")[0]
    assert isinstance(doc, dict)
    return doc


def pod_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(manifest, container) for every container of every workload."""
    for doc in k8s_docs():
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = spec.get("template", {}).get("spec")
        if pod:
            for container in pod["containers"]:
                yield doc, container


def app_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if svc.get("image") == APP_IMAGE}


def dockerfile_json(instruction: str) -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    match = re.search(rf"^{instruction}\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert match, f"no exec-form {instruction} in the Dockerfile"
    value = json.loads(match.group(1))
    assert isinstance(value, list)
    return [str(v) for v in value]


def all_commands() -> list[tuple[str, list[str]]]:
    """Every sync-worker argv (after the program name) that a deploy file runs."""
    found: list[tuple[str, list[str]]] = [("Dockerfile CMD", dockerfile_json("CMD"))]
    for name, svc in app_services().items():
        found.append((f"compose {name}", [str(a) for a in svc["command"]]))
    for doc, container in pod_containers():
        if container["image"].startswith("thingspace-sms-sync:"):
            found.append((f"{doc['kind']} {doc['metadata']['name']}", [str(a) for a in container["args"]]))
    for unit in UNITS:
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                argv = shlex.split(line.removeprefix("ExecStart="))
                assert argv[0].endswith("/sync-worker"), line
                found.append((unit.name, argv[1:]))
    cron = (DEPLOY / "cron/thingspace-sms-sync.cron").read_text()
    for match in re.finditer(r"/sync-worker ([a-z-]+)'", cron):
        found.append(("crontab", [match.group(1)]))
    return found


# --- everything parses ---------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    """Every YAML file under deploy/ parses and holds at least one mapping."""
    docs = load_yaml(path)
    assert docs
    assert all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path: Path) -> None:
    """Every JSON file under deploy/ parses."""
    assert json.loads(path.read_text())


def test_expected_files_exist() -> None:
    """The deploy styles the issue asks for are all present."""
    for rel in (
        "Dockerfile",
        "docker-compose.yml",
        "systemd/thingspace-sms-sync.service",
        "systemd/thingspace-sms-sync-once.service",
        "systemd/thingspace-sms-sync-once.timer",
        "cron/thingspace-sms-sync.cron",
        "kubernetes/deployment.yaml",
        "kubernetes/cronjob.yaml",
        "kubernetes/migrate-job.yaml",
        "kubernetes/configmap.yaml",
        "kubernetes/secret.example.yaml",
        "kubernetes/service.yaml",
        "kubernetes/components/servicemonitor/servicemonitor.yaml",
        "kubernetes-prometheus-operator/kustomization.yaml",
        "prometheus/alerts.yml",
        "grafana/thingspace-sms-sync.json",
    ):
        assert (DEPLOY / rel).is_file(), rel


# --- commands -------------------------------------------------------------------


def test_commands_parse_with_the_real_cli() -> None:
    """Every sync-worker command line in deploy/ is accepted by the CLI's own parser."""
    commands = all_commands()
    assert {argv[0] for _, argv in commands} >= {"run", "once", "migrate", "simulate"}
    parser = cli.build_parser()
    for where, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{where}: `sync-worker {shlex.join(argv)}` is rejected by the CLI (exit {exc.code})")


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    """ENTRYPOINT is the sync-worker script pyproject installs, CMD the daemon."""
    assert dockerfile_json("ENTRYPOINT") == ["sync-worker"]
    assert "sync-worker" in PROJECT["scripts"]
    assert dockerfile_json("CMD") == ["run"]


def test_dockerfile_structure() -> None:
    """Multi-stage slim build: wheel built in a builder, installed in python:3.11-slim as a non-root user."""
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert stages == [("python:3.11-slim", "builder"), ("python:3.11-slim", "runtime")]
    assert PROJECT["requires-python"] == ">=3.11"
    assert re.search(r"^USER\s+10001", text, re.MULTILINE)
    assert "pip wheel --no-deps" in text
    healthcheck = re.search(r"^HEALTHCHECK .*\n.*CMD (\[.*\])", text, re.MULTILINE)
    assert healthcheck
    assert "/healthz" in json.loads(healthcheck.group(1))[-1]
    assert re.search(rf"^EXPOSE\s+{METRICS_PORT}$", text, re.MULTILINE)


def test_dockerfile_copies_everything_the_wheel_needs() -> None:
    """The builder copies what hatch reads: pyproject, readme, the package and the force-included sql/."""
    text = (DEPLOY / "Dockerfile").read_text()
    copied = {
        part
        for line in re.findall(r"^COPY (?!--from)(.*)$", text, re.MULTILINE)
        for part in line.split()[:-1]
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {
        "pyproject.toml",
        PROJECT["readme"],
        *pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"],
    }
    needed |= set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"])
    assert needed <= copied, needed - copied


# --- variables --------------------------------------------------------------------


def test_compose_and_kubernetes_use_only_settings_variables() -> None:
    """Every variable given to the worker (compose, ConfigMap, container env) is a Settings variable."""
    used: dict[str, str] = {}
    for name, svc in app_services().items():
        for var in svc.get("environment", {}):
            used[var] = f"compose {name}"
    for doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            for var in doc["data"]:
                used[var] = f"ConfigMap {doc['metadata']['name']}"
    for doc, container in pod_containers():
        for item in container.get("env", []):
            used[item["name"]] = f"{doc['kind']} {doc['metadata']['name']}"
    unknown = {var: where for var, where in used.items() if var not in SETTINGS_VARIABLES}
    assert not unknown
    assert "SYNC_DATABASE_URL" in used


def test_host_files_use_only_settings_variables() -> None:
    """systemd Environment=, the env example, the crontab and the Dockerfile ENV name only known variables."""
    names: set[str] = set()
    for unit in UNITS:
        names |= set(re.findall(r"^Environment=([A-Z_]+)=", unit.read_text(), re.MULTILINE))
    example = (DEPLOY / "systemd/thingspace-sms-sync.env.example").read_text()
    names |= set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    cron = (DEPLOY / "cron/thingspace-sms-sync.cron").read_text()
    names |= {n for n in re.findall(r"\b([A-Z][A-Z_]+)=", cron) if n not in {"SHELL", "PATH"}}
    docker_env = re.search(
        r"^ENV ((?:.*\\\n)*.*)$", (DEPLOY / "Dockerfile").read_text().split("AS runtime")[1], re.M
    )
    assert docker_env
    docker_names = set(re.findall(r"([A-Z_]+)=", docker_env.group(1)))
    assert docker_names - DOCKER_ONLY_VARIABLES <= SETTINGS_VARIABLES
    assert not names - SETTINGS_VARIABLES, names - SETTINGS_VARIABLES
    # The secrets arrive as files on every host style, never inline.
    assert "THINGSPACE_PASSWORD" not in names
    assert "THINGSPACE_CLIENT_SECRET" not in names


def test_kubernetes_references_resolve() -> None:
    """configMapRef / secretKeyRef / secret volumes point at objects and keys the manifests define."""
    docs = k8s_docs()
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: set(d["stringData"]) for d in docs if d["kind"] == "Secret"}
    for doc, container in pod_containers():
        for ref in container.get("envFrom", []):
            assert ref["configMapRef"]["name"] in configmaps
        for item in container.get("env", []):
            key_ref = item.get("valueFrom", {}).get("secretKeyRef")
            if key_ref:
                assert key_ref["key"] in secrets[key_ref["name"]], item
        spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
        volumes = {v["name"]: v for v in spec["template"]["spec"].get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "secret" in volume:
                for item in volume["secret"]["items"]:
                    assert item["key"] in secrets[volume["secret"]["secretName"]]
                # Octal 0400 in YAML: only the owner may read the credential files.
                assert volume["secret"]["defaultMode"] == 0o400
        files = [i["value"] for i in container.get("env", []) if i["name"].endswith("_FILE")]
        for path in files:
            assert any(path.startswith(m["mountPath"] + "/") for m in container.get("volumeMounts", [])), path


# --- images and ports -------------------------------------------------------------------


def test_images_are_the_project_image_or_pinned_externals() -> None:
    """Compose and Kubernetes use the project image at the pyproject version, or a pinned known image."""
    images = [svc["image"] for svc in compose()["services"].values()]
    images += [c["image"] for _, c in pod_containers()]
    assert APP_IMAGE in images
    assert set(images) <= {APP_IMAGE} | EXTERNAL_IMAGES, set(images)
    kustomize = load_yaml(DEPLOY / "kubernetes/kustomization.yaml")[0]
    assert kustomize["images"] == [{"name": "thingspace-sms-sync", "newTag": VERSION}]
    listed = set(kustomize["resources"])
    assert listed <= {p.name for p in DEPLOY.glob("kubernetes/*.yaml")}
    assert "secret.example.yaml" not in listed


def test_metrics_port_is_consistent() -> None:
    """The one metrics port appears everywhere it is named: Dockerfile, compose, Kubernetes, Prometheus."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert f"SYNC_METRICS_PORT={METRICS_PORT}" in text
    svc = compose()["services"]
    assert svc["sync-worker"]["environment"]["SYNC_METRICS_PORT"] == str(METRICS_PORT)
    assert f"127.0.0.1:{METRICS_PORT}:{METRICS_PORT}" in svc["simulator"]["ports"]
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs()}
    assert docs[("ConfigMap", "thingspace-sms-sync")]["data"]["SYNC_METRICS_PORT"] == str(METRICS_PORT)
    deployment = docs[("Deployment", "thingspace-sms-sync")]
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    container = pod["spec"]["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service = docs[("Service", "thingspace-sms-sync-metrics")]
    assert service["spec"]["ports"][0]["port"] == METRICS_PORT
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    monitor = docs[("ServiceMonitor", "thingspace-sms-sync")]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    prom = load_yaml(DEPLOY / "prometheus/prometheus.yml")[0]
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [f"127.0.0.1:{METRICS_PORT}"]


def test_compose_worker_reaches_simulator_on_loopback() -> None:
    """The compose worker shares the simulator's network namespace, so its http:// base URL is loopback."""
    services = compose()["services"]
    worker, simulator = services["sync-worker"], services["simulator"]
    assert worker["network_mode"] == "service:simulator"
    env = worker["environment"]
    assert env["THINGSPACE_ALLOW_INSECURE_LOOPBACK"] == "1"
    assert env["THINGSPACE_BASE_URL"] == f"http://127.0.0.1:{SIM_PORT}/api"
    # The same settings the real loader accepts (file secrets aside, these are the simulator's demo values).
    settings = config.load({k: str(v) for k, v in env.items()})
    assert settings.base_url == env["THINGSPACE_BASE_URL"]
    sim_args = cli.build_parser().parse_args([str(a) for a in simulator["command"]])
    assert sim_args.port == SIM_PORT
    assert set(settings.account_names) == set(sim_args.accounts.split(","))
    assert f"127.0.0.1:{SIM_PORT}:{SIM_PORT}" in simulator["ports"]
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_uses_the_simulators_demo_credentials() -> None:
    """The compose worker logs in with exactly the credentials the simulator accepts by default."""

    cfg = simulator.SimConfig()
    env = compose()["services"]["sync-worker"]["environment"]
    assert env["THINGSPACE_CLIENT_ID"] == cfg.client_id
    assert env["THINGSPACE_CLIENT_SECRET"] == cfg.client_secret.reveal()
    assert env["THINGSPACE_USERNAME"] == cfg.username
    assert env["THINGSPACE_PASSWORD"] == cfg.password.reveal()


def test_kubernetes_workload_policies() -> None:
    """Deployment has 2 replicas and a grace period above the shutdown timeout; CronJob forbids overlap."""
    docs = {d["kind"]: d for d in k8s_docs("kubernetes/*.yaml")}
    deployment, cronjob, job = docs["Deployment"], docs["CronJob"], docs["Job"]
    assert deployment["spec"]["replicas"] == 2
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(docs["ConfigMap"]["data"]["SYNC_SHUTDOWN_TIMEOUT_SECONDS"])
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    for _, container in pod_containers():
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True


# --- metrics named by dashboards and alerts -------------------------------------------------


def exposed_metric_names() -> set[str]:
    """What the daemon and the callback receiver (`receive`, push mode) expose once exercised."""
    m = metrics.Metrics()
    m.block_committed("a", 1, 1, 0, 0)
    m.run_finished("a", "succeeded", 1.0, True)
    m.run_quarantined("a", 1)
    m.error("a", "k")
    m.scheduler_event("missed", "a")
    obs = m.api_observer()
    obs.on_request("op", 200, 0.1)
    obs.on_retry("op", "http_503", 1.0)
    m.watch_claim_poll(lambda: 0.0)  # as the daemon does
    cb = callback_metrics.CallbackMetrics(m.registry)  # as `receive` does, on its own process's Metrics
    cb.account_served("a")
    cb.received.inc()
    cb.refused.labels("bad_credentials").inc()
    cb.stored.labels("a", "envelope").inc()
    cb.commit_batch_size.observe(1)
    return {s.name for family in m.registry.collect() for s in family.samples}


def callback_metric_names() -> set[str]:
    """The family names of the callback receiver's series, each with a counter's ``_total``."""
    from sync_worker import callback_metrics  # noqa: PLC0415  # only the receiver's alerts need them

    registry = metrics.Metrics().registry
    callback_metrics.CallbackMetrics(registry)
    return {n for family in registry.collect() for n in (family.name, family.name + "_total")}


def referenced_metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bthingspace_sync_[a-z_]+", text))


def test_dashboard_uses_only_exposed_metrics() -> None:
    """Every thingspace_sync_* series in the Grafana dashboard is one the worker exposes."""
    dashboard = json.loads((DEPLOY / "grafana/thingspace-sms-sync.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = referenced_metric_names("\n".join(exprs))
    assert names
    assert names <= exposed_metric_names(), names - exposed_metric_names()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_use_only_exposed_metrics_and_cover_the_issue() -> None:
    """Alert rules reference real series and cover staleness, the login guard, error rate and quarantine."""
    rules = load_yaml(DEPLOY / "prometheus/alerts.yml")[0]
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {
        "ThingSpaceSyncAccountStale",
        "ThingSpaceSyncLoginGuardTripped",
        "ThingSpaceSyncErrorRateHigh",
        "ThingSpaceSyncBlockQuarantined",
    } <= set(alerts)
    assert "thingspace_sync_last_run_quarantined_blocks" in alerts["ThingSpaceSyncBlockQuarantined"]["expr"]
    # The receiver's alerts read the series `sync-worker receive` exports (its own registry).
    exposed = exposed_metric_names() | callback_metric_names()
    for name, rule in alerts.items():
        assert referenced_metric_names(rule["expr"]) <= exposed, name
        assert rule["expr"].count("(") == rule["expr"].count(")"), name
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


# --- systemd ----------------------------------------------------------------------------------


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the units with no warning (in a scratch root holding the executable)."""
    analyze = shutil.which("systemd-analyze")
    system_units = Path("/usr/lib/systemd/system")
    if analyze is None or not system_units.is_dir():
        pytest.skip("systemd-analyze (or the system unit directory) is not available on this machine")
    # A scratch root: the units' ExecStart must exist and the standard targets must resolve,
    # without installing anything into the real /etc or /opt.
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(system_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    exe = tmp_path / "opt/thingspace-sms-sync/bin/sync-worker"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, unit_dir / unit.name)
    result = subprocess.run(
        [analyze, "verify", f"--root={tmp_path}", "--man=no", *(u.name for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_systemd_units_have_the_required_hardening() -> None:
    """Both services restart/harden as documented and read secrets through LoadCredential= files."""
    daemon = (DEPLOY / "systemd/thingspace-sms-sync.service").read_text()
    assert "Restart=on-failure" in daemon
    for unit in ("thingspace-sms-sync.service", "thingspace-sms-sync-once.service"):
        text = (DEPLOY / "systemd" / unit).read_text()
        for line in (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "DynamicUser=yes",
            "EnvironmentFile=/etc/thingspace-sms-sync/env",
            "Environment=THINGSPACE_PASSWORD_FILE=%d/thingspace-password",
            "Environment=THINGSPACE_CLIENT_SECRET_FILE=%d/thingspace-client-secret",
        ):
            assert line in text.splitlines(), f"{unit}: {line}"
        assert re.search(r"^LoadCredential=thingspace-password:", text, re.MULTILINE)
    timer = (DEPLOY / "systemd/thingspace-sms-sync-once.timer").read_text()
    assert "Unit=thingspace-sms-sync-once.service" in timer


def test_systemd_security_exposure_is_at_most_1_2() -> None:
    """`systemd-analyze security --offline=yes` rates both services at an exposure of 1.2 or less."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not available on this machine")
    for unit in ("thingspace-sms-sync.service", "thingspace-sms-sync-once.service"):
        result = subprocess.run(
            [analyze, "security", "--offline=yes", "--no-pager", str(DEPLOY / "systemd" / unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
        if found is None and "--offline" in result.stderr:
            pytest.skip("this systemd-analyze has no --offline mode")
        assert found is not None, result.stdout + result.stderr
        assert float(found.group(1)) <= 1.2, f"{unit}: {found.group(1)}\n{result.stdout}"


def test_journal_summary_command_matches_the_unit() -> None:
    """The documented journalctl command selects the once unit's own identifier, so systemd's lines
    about the unit (Finished, Consumed) do not come after the summary."""
    unit = (DEPLOY / "systemd/thingspace-sms-sync-once.service").read_text()
    assert "SyslogIdentifier=thingspace-sms-sync-once" in unit.splitlines()
    operations = (ROOT / "docs/operations.md").read_text()
    assert "journalctl -t thingspace-sms-sync-once -o cat -n 1" in operations
    assert "journalctl -u thingspace-sms-sync-once -o cat -n 1" not in operations


# --- the Dockerfile's install, without Docker -------------------------------------------------


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_dockerfile_install_steps_in_a_clean_venv(tmp_path: Path) -> None:
    """The Dockerfile's build and install commands, run in clean virtualenvs, give a working sync-worker."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    runs = [re.sub(r"\s+", " ", r).strip() for r in re.findall(r"^RUN (.*)$", text, re.MULTILINE)]
    build = next(r for r in runs if "pip wheel" in r)
    install = next(r for r in runs if "pip install" in r)
    # The exact commands exercised below; a change in the Dockerfile must be mirrored here.
    assert build == (
        "python -m pip wheel --no-deps --wheel-dir /dist . "
        "&& python -m pip wheel --constraint deploy/constraints.txt --wheel-dir /wheels /dist/*.whl"
    )
    assert install == (
        "--mount=type=bind,from=builder,source=/wheels,target=/wheels "
        "python -m pip install --no-index --find-links=/wheels thingspace-sms-sync"
    )

    # Builder stage: only the files the Dockerfile copies.
    src = tmp_path / "src"
    src.mkdir()
    (src / "deploy").mkdir()
    for rel in ("pyproject.toml", "README.md", "deploy/constraints.txt"):
        shutil.copy(ROOT / rel, src / rel)
    for rel in ("sync_worker", "sql"):
        shutil.copytree(ROOT / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__"))
    dist, wheels = tmp_path / "dist", tmp_path / "wheels"
    _run([sys.executable, "-m", "venv", str(tmp_path / "builder")], tmp_path)
    builder_py = str(tmp_path / "builder/bin/python")
    _run([builder_py, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), "."], src)
    built = sorted(dist.glob("*.whl"))
    assert [w.name for w in built] == [f"thingspace_sms_sync-{VERSION}-py3-none-any.whl"]
    constraint = ["--constraint", "deploy/constraints.txt"]
    _run([builder_py, "-m", "pip", "wheel", *constraint, "--wheel-dir", str(wheels), str(built[0])], src)

    # Runtime stage: offline install from the builder's wheels only.
    _run([sys.executable, "-m", "venv", str(tmp_path / "runtime")], tmp_path)
    runtime = tmp_path / "runtime/bin"
    _run(
        [
            str(runtime / "python"),
            "-m",
            "pip",
            "install",
            "--no-index",
            f"--find-links={wheels}",
            "thingspace-sms-sync",
        ],
        tmp_path,
    )
    help_text = _run([str(runtime / "sync-worker"), "--help"], tmp_path).stdout
    for command in ("migrate", "run", "once", "simulate"):
        assert command in help_text
    # The installed package finds its migrations (force-included sql/), as `migrate` in the image must.
    shipped = _run(
        [
            str(runtime / "python"),
            "-c",
            "from sync_worker import migrations; print(len(migrations.available()))",
        ],
        tmp_path,
    ).stdout
    assert int(shipped) >= 1
    assert not (runtime.parent / "lib").joinpath("sql").exists()
