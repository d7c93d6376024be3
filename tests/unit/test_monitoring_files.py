"""deploy/prometheus and deploy/grafana checked with real parsers: every PromQL expression through a
PromQL parser (promql-parser, the Rust parser of GreptimeDB's PromQL engine), the rule file against
the rule-file schema of the Prometheus documentation, and the rules meant for one-pass deployments
against the metrics a pass actually writes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser
import pytest
import yaml

from sync_worker import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus/alerts.yml"
DASHBOARD = DEPLOY / "grafana/thingspace-sms-sync.json"

_DURATION = r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"
_LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
# The rule file format of https://prometheus.io/docs/prometheus/latest/configuration/recording_rules/
# and alerting_rules/, as a JSON schema: unknown keys are errors, as they are for promtool.
RULE_FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groups"],
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "rules"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": _DURATION},
                    "query_offset": {"type": "string", "pattern": _DURATION},
                    "limit": {"type": "integer", "minimum": 0},
                    "labels": {"type": "object", "propertyNames": {"pattern": _LABEL_NAME}},
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["expr"],
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "properties": {
                                "alert": {"type": "string", "minLength": 1},
                                "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": {"type": "string", "pattern": _DURATION},
                                "keep_firing_for": {"type": "string", "pattern": _DURATION},
                                "labels": {
                                    "type": "object",
                                    "propertyNames": {"pattern": _LABEL_NAME},
                                    "additionalProperties": {"type": "string"},
                                },
                                "annotations": {
                                    "type": "object",
                                    "propertyNames": {"pattern": _LABEL_NAME},
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}
# Grafana's variables, replaced by values of the right kind before parsing.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$account": ".*"}
# The alerts meant to work for one-pass deployments (textfile, Pushgateway) as well as the daemon.
ONE_PASS_ALERTS = {
    "ThingSpaceSyncAccountStale",
    "ThingSpaceSyncLoginGuardTripped",
    "ThingSpaceSyncLastRunFailing",
    "ThingSpaceSyncNoRecentRun",
    "ThingSpaceSyncBlockQuarantined",
    "ThingSpaceSyncMetricsAbsent",
}


def _rules() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r for g in data["groups"] for r in g["rules"]}


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _grafana(expr: str) -> str:
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_rule_file_matches_the_rule_file_schema() -> None:
    """alerts.yml is a valid Prometheus rule file: only known keys, durations and label names valid."""
    jsonschema.validate(yaml.safe_load(ALERTS.read_text()), RULE_FILE_SCHEMA)


def test_the_schema_rejects_what_promtool_rejects() -> None:
    """The schema is no rubber stamp: a misspelt key, a bad duration and a ruleless entry fail it."""
    good = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0", "for": "5m"}]}]}
    jsonschema.validate(good, RULE_FILE_SCHEMA)
    for bad_rule in (
        {"alert": "A", "expr": "up == 0", "fore": "5m"},
        {"alert": "A", "expr": "up == 0", "for": "five minutes"},
        {"expr": "up == 0"},
        {"alert": "A", "record": "r", "expr": "up"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"groups": [{"name": "g", "rules": [bad_rule]}]}, RULE_FILE_SCHEMA)


@pytest.mark.parametrize("name", sorted(_rules()))
def test_alert_expression_parses(name: str) -> None:
    """Every alert expression is valid PromQL (a real parser; unknown functions are errors)."""
    promql_parser.parse(_rules()[name]["expr"])


@pytest.mark.parametrize("expr", _dashboard_exprs())
def test_dashboard_expression_parses(expr: str) -> None:
    """Every dashboard query is valid PromQL once Grafana's variables are substituted."""
    promql_parser.parse(_grafana(expr))


def test_dashboard_variable_queries_name_exposed_metrics() -> None:
    """The account variable reads a series every configured account has, daemon or one pass."""
    dashboard = json.loads(DASHBOARD.read_text())
    one_pass = _one_pass_metric_names()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            (metric,) = re.findall(r"label_values\((\w+),", variable["query"]["query"])
            assert metric in one_pass


def test_the_parser_rejects_invalid_promql() -> None:
    """The parser is no rubber stamp: an unclosed bracket and an unknown function are refused."""
    for bad in ("rate(x[5m]", "max(x) >", "nosuchfunction(x)"):
        with pytest.raises(ValueError):
            promql_parser.parse(bad)


def _one_pass_metric_names() -> set[str]:
    """The series a `once` pass writes to the textfile or the Pushgateway."""
    m = metrics.Metrics(one_pass=True)
    m.account_configured("a", 1.0)
    m.run_finished("a", "succeeded", 2.0, True)
    m.run_quarantined("a", 0)
    return {s.name for family in m.registry.collect() for s in family.samples}


def test_one_pass_alerts_use_only_series_a_pass_writes() -> None:
    """The alerts that serve one-pass deployments reference only series present in a pass's output,
    so they work with the textfile collector and the Pushgateway, not only with the daemon."""
    rules = _rules()
    assert set(rules) >= ONE_PASS_ALERTS
    written = _one_pass_metric_names()
    for name in ONE_PASS_ALERTS:
        referenced = set(re.findall(r"\bthingspace_sync_[a-z_]+", rules[name]["expr"]))
        assert referenced, name
        # Each rule needs at least one alternative that a pass provides (the others are the daemon's).
        assert referenced & written, name
        for alternative in rules[name]["expr"].split(" or "):
            names = set(re.findall(r"\bthingspace_sync_[a-z_]+", alternative))
            assert names <= written or "seconds_since_last_success" in alternative, (name, names - written)


def test_target_down_and_absent_alerts_exist() -> None:
    """A scrape target that is down, and metrics missing altogether, each have an alert."""
    rules = _rules()
    assert re.search(r"\bup\{job=~?\"thingspace-sms-sync", rules["ThingSpaceSyncTargetDown"]["expr"])
    assert rules["ThingSpaceSyncMetricsAbsent"]["expr"].startswith("absent(")


def _exported_series() -> set[str]:
    """Every series name the daemon and the callback receiver can export (each family's sample names)."""
    from sync_worker import callback_metrics  # noqa: PLC0415  # only this check needs the receiver's

    m = metrics.Metrics()
    m.watch_claim_poll(lambda: 0.0)  # what the daemon registers when it starts claiming
    callback_metrics.CallbackMetrics(m.registry)
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("_count", "_sum", ""),
    }
    names: set[str] = set()
    for family in m.registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


@pytest.mark.parametrize("name", sorted(_rules()))
def test_alert_expressions_name_only_exported_series(name: str) -> None:
    """Every thingspace_sync_* series an alert reads is one the daemon or the receiver exports (a typo
    or a renamed metric would make the alert silently never fire)."""
    referenced = set(re.findall(r"\bthingspace_sync_[a-z_]+", _rules()[name]["expr"]))
    assert referenced <= _exported_series(), sorted(referenced - _exported_series())


def test_the_callback_receiver_has_alerts_for_refusals_503s_and_unknown_shapes() -> None:
    """Refusal spikes, 503 answers and kept unknown shapes of the receiver each have an alert."""
    exprs = {n: r["expr"] for n, r in _rules().items()}
    assert "thingspace_sync_callbacks_refused_total" in exprs["ThingSpaceSyncCallbacksRefusedSpike"]
    answered_503 = exprs["ThingSpaceSyncCallbacksAnswered503"]
    for kind in ("busy", "queue_full", "commit_timeout", "database_unavailable"):
        assert kind in answered_503
    assert "thingspace_sync_callbacks_kept_unknown_total" in exprs["ThingSpaceSyncCallbackUnknownShapeKept"]
