"""deploy/otel: the collector config is valid YAML whose pipelines name only defined components; the
Grafana dashboard uses only metrics and labels that tongban/runtime/instruments.py defines, and all of
them (so neither can drift from the code)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tongban.core.outcomes import ANSWERED
from tongban.runtime.instruments import INSTRUMENTS, TimedHop
from tongban.v1 import exchange_pb2

OTEL = Path(__file__).resolve().parents[2] / "deploy" / "otel"
METRIC = re.compile(r"\btongban_[a-z_]+\b")
SELECTOR = re.compile(r"\b(tongban_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds to every scraped series (le: histogram buckets).
SCRAPE_LABELS = {"instance", "job", "le"}


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    text = (OTEL / "collector.yaml").read_text(encoding="utf-8")
    assert text.startswith("# "), "the config opens with a comment header"
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((OTEL / "grafana-dashboard.json").read_text(encoding="utf-8"))
    return loaded


def exprs(dashboard: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    out += [v["definition"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return out


def test_collector_pipelines_use_defined_components(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in collector[kind], f"{name}: undefined {kind[:-1]} {component}"
    for extension in collector["service"].get("extensions", []):
        assert extension in collector["extensions"]


def test_collector_receives_otlp_grpc_and_scrapes_both_roles(collector: dict[str, Any]) -> None:
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    jobs = {j["job_name"]: j for j in collector["receivers"]["prometheus"]["config"]["scrape_configs"]}
    assert set(jobs) == {"tongban-gateway", "tongban-connector"}
    ports = {"tongban-gateway": "9464", "tongban-connector": "9465"}  # as in README.md
    for name, job in jobs.items():
        assert job["metrics_path"] == "/metrics"
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        assert targets and all(t.rsplit(":", 1)[1] == ports[name] for t in targets)
    # The collector expands ${...} and $VAR: a stray dollar would silently change a value.
    assert "$" not in (OTEL / "collector.yaml").read_text(encoding="utf-8")


def test_dashboard_uses_only_defined_metrics_and_all_of_them(dashboard: dict[str, Any]) -> None:
    series = {name: spec for spec in INSTRUMENTS for name in spec.series()}
    used = {m for e in exprs(dashboard) for m in METRIC.findall(e)}
    assert used, "the dashboard queries tongban metrics"
    assert used <= set(series), f"not defined in tongban/runtime/instruments.py: {sorted(used - set(series))}"
    assert {series[m].name for m in used} == {i.name for i in INSTRUMENTS}, "every instrument has a panel"


def test_dashboard_labels_are_the_metrics_labels(dashboard: dict[str, Any]) -> None:
    series = {name: spec for spec in INSTRUMENTS for name in spec.series()}
    every_label = {label for spec in INSTRUMENTS for label in spec.labels} | SCRAPE_LABELS
    hops = {h.value for h in TimedHop}
    rpcs = set(exchange_pb2.DESCRIPTOR.services_by_name["Exchange"].methods_by_name)
    for expr in exprs(dashboard):
        for metric, body in SELECTOR.findall(expr):
            allowed = set(series[metric].labels) | SCRAPE_LABELS
            for label, op, value in MATCHER.findall(body):
                assert label in allowed, f"{metric} has no label {label} ({expr})"
                if label == "role" and op == "=":
                    assert value in ("gateway", "connector")
                if label == "hop" and op == "=":
                    assert value in hops
                if label == "rpc" and op == "=":
                    assert value in rpcs
        for group in GROUPING.findall(expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in every_label, f"grouping by unknown label {label} ({expr})"


def test_success_is_what_tongban_outcomes_calls_answered(dashboard: dict[str, Any]) -> None:
    """Every expression that tells success from failure by ``outcome`` matches exactly
    tongban.core.outcomes.ANSWERED (NOT_FOUND is an answer, not a failure), as ``tongban report``
    counts: the panels cannot drift from the report or from each other."""
    matchers = [
        (op, value, expr)
        for expr in exprs(dashboard)
        for _, body in SELECTOR.findall(expr)
        for label, op, value in MATCHER.findall(body)
        if label == "outcome"
    ]
    assert {op for op, _, _ in matchers} == {"=~", "!~"}, "success and failure are both shown"
    for op, value, expr in matchers:
        assert op in ("=~", "!~"), f"outcome {op} {value!r}: one outcome is not success ({expr})"
        assert set(value.split("|")) == ANSWERED, f"outcome {op} {value!r} is not ANSWERED ({expr})"
    titles = {
        p["title"] for p in dashboard["panels"] for t in p.get("targets", []) if "outcome=~" in t["expr"]
    }
    assert titles == {"Success rate by service (gateway)"}


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "region"}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
