"""``deploy/``: the Grafana dashboard and the Prometheus alerting rules, checked against the code.

- every metric name in the dashboard's and the rules' PromQL is one the code exports (the
  families :mod:`sds_plugins._observability._metrics` registers, with the ``_total``,
  ``_bucket``, ``_count`` and ``_sum`` series their types give them; ``prometheus_client``'s
  process metrics, which ``serve`` and the worker export from the default registry;
  Prometheus's own ``up``);
- ``promtool check rules`` accepts the rules, and ``promtool test rules`` runs their unit tests
  (``tests/test_deploy_rules.yml``: each alert fires on its failure, quiet beside it); the
  dashboard's queries, Grafana's variables replaced, are checked by promtool as recording rules.
  Without ``promtool`` on the PATH (Debian: ``apt-get install prometheus``) these are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sds_plugins._events import LookupEvent, RouteEvent

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus-rules.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
RULE_TESTS = Path(__file__).with_name("test_deploy_rules.yml")

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not on the PATH (Debian's 'prometheus' package provides it)",
)

#: Series Prometheus itself adds to every scrape target.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# PromQL words that are not metric names.
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
        # aggregations (written "sum by (x) (...)": not always followed by a parenthesis)
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_DURATION = re.compile(r"^\d")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and labels left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)  # label matchers hold label names and values
    text = _RANGE.sub("", text)  # [5m], [$__rate_interval]
    text = _LABEL_LIST.sub(r"\1", text)  # sum by (job, source)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def test_the_metric_name_parser() -> None:
    expr = (
        'sum by (job, source) (rate(sds_plugins_lookups_total{cache=~"miss|bypass", '
        'outcome="error"}[5m]) or rate(x_total{a="b"}[$__rate_interval])) / '
        "sum without (le) (histogram_quantile(0.95, y_bucket)) > 0.5 and on(instance) up "
        "unless max_over_time(z[5m] offset 1h) == bool 2 * vector(0) "
        '+ count(label_replace(w, "a", "b", "c", "d"))'
    )
    assert metric_names(expr) == {
        "sds_plugins_lookups_total",
        "x_total",
        "y_bucket",
        "up",
        "z",
        "w",
    }


# -- what the code exports --------------------------------------------------------------------


class _Link:
    down = False


class _Backend:
    link = _Link()


class _Cache:
    backend = _Backend()

    def breaker_states(self) -> dict[str, str]:
        return {"sds": "open"}


class _Router:
    """What the collector reads of a router (a started one with Redis), without starting one."""

    started = True
    cache = _Cache()
    rate_limiter = None


def _expanded(name: str, kind: str) -> set[str]:
    if kind == "counter":
        return {name if name.endswith("_total") else f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    if kind == "summary":
        return {name, f"{name}_count", f"{name}_sum"}
    return {name}


def exported_names() -> set[str]:
    """Every series name ``serve`` and the worker can export, from a registry built as theirs."""
    from prometheus_client import (
        GC_COLLECTOR,
        PLATFORM_COLLECTOR,
        PROCESS_COLLECTOR,
        CollectorRegistry,
    )

    from sds_plugins import PrometheusMetrics

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    router = _Router()
    metrics.watch(router)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    metrics.sds_lookup_completed(
        LookupEvent(
            time=now,
            source="sds",
            query="Device?x",
            namespace="sds:",
            cache="miss",
            attempts=1,
            duration_s=0.01,
            outcome="error",
            error="RateLimitedError: 429",
            correlation_id="c",
        )
    )
    metrics.sds_route_completed(
        RouteEvent(time=now, adapter="a", org="X", interaction="i", correlation_id="c",
                   outcome="ok", duration_s=0.01)
    )  # fmt: skip
    metrics.worker_message("in")
    names: set[str] = set()
    collectors: list[Any] = [registry, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR]
    for collector in collectors:
        for family in collector.collect():
            names |= _expanded(family.name, family.type)
            names |= {sample.name for sample in family.samples}
    return names


def test_the_exported_names_include_every_family_of_the_code() -> None:
    names = exported_names()
    for family in (
        "sds_plugins_lookups_total",
        "sds_plugins_lookup_errors_total",
        "sds_plugins_lookup_duration_seconds_bucket",
        "sds_plugins_cache_fallbacks_total",
        "sds_plugins_routes_total",
        "sds_plugins_route_duration_seconds_sum",
        "sds_plugins_directory_responses_total",
        "sds_plugins_worker_messages_total",
        "sds_plugins_breaker_state",
        "sds_plugins_pacing_wait_seconds_total",
        "sds_plugins_gateway_throttles_total",
        "sds_plugins_redis_up",
        "process_start_time_seconds",
    ):
        assert family in names, family
    assert "sds_plugins_routes" not in names  # a counter is only ever exported with _total


# -- the rules and the dashboard ----------------------------------------------------------------


def rule_expressions() -> list[tuple[str, str]]:
    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load(RULES.read_text())
    return [
        (rule.get("alert") or rule.get("record"), rule["expr"])
        for group in document["groups"]
        for rule in group["rules"]
    ]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def dashboard_expressions() -> list[tuple[str, str]]:
    document = dashboard()
    found = [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in _panels(document["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in document["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        values = re.fullmatch(r"label_values\((.*),\s*\w+\)", text or "")
        if values:  # label_values(<series selector>, <label>)
            found.append((f"variable {variable['name']}", values.group(1)))
    return found


def test_every_metric_the_rules_and_the_dashboard_use_is_exported() -> None:
    exported = exported_names() | PROMETHEUS_OWN
    used: dict[str, set[str]] = {}
    for where, expr in [*rule_expressions(), *dashboard_expressions()]:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            used.setdefault(name, set()).add(where)
    unknown = {name: sorted(places) for name, places in used.items() if name not in exported}
    assert not unknown, f"not exported by the code: {unknown}"


def test_the_dashboard_shows_what_operators_look_at() -> None:
    shown = set().union(*(metric_names(expr) for _, expr in dashboard_expressions()))
    assert {
        "sds_plugins_routes_total",  # routes by outcome
        "sds_plugins_lookup_duration_seconds_bucket",  # lookup latency
        "sds_plugins_lookups_total",  # cache hits
        "sds_plugins_breaker_state",
        "sds_plugins_pacing_wait_seconds_total",
        "sds_plugins_directory_responses_total",  # 429s
        "sds_plugins_gateway_throttles_total",
        "sds_plugins_worker_messages_total",  # worker outcomes and redeliveries
    } <= shown


def test_the_rules_alert_on_what_operators_must_hear_of() -> None:
    alerts = {name for name, _ in rule_expressions()}
    assert {
        "SdsDirectoryDown",
        "SdsBreakerOpen",
        "SdsDirectoryRateLimited",
        "SdsWorkerNotConsuming",
        "SdsWorkerDown",
    } <= alerts


def test_the_dashboard_is_one_grafana_can_import() -> None:
    document = dashboard()
    assert document["uid"] and document["title"] and document["schemaVersion"] >= 36
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [panel["id"] for panel in _panels(document["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(document["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for column in range(grid["x"], grid["x"] + grid["w"]):
                assert (row, column) not in cells, (panel["title"], cells.get((row, column)))
                cells[(row, column)] = panel["title"]
        if panel["type"] == "row":
            continue
        # Every query goes to the dashboard's data source variable, never to a fixed uid.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert 'job=~"$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"]


# -- promtool -----------------------------------------------------------------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    # The control: the check can fail.
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(\n")
    assert _promtool("check", "rules", str(broken)).returncode != 0


@needs_promtool
def test_the_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each query, Grafana's variables given values, as a recording rule promtool parses."""
    yaml = pytest.importorskip("yaml")
    substitutions = {
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$__range": "1h",
        "$job": ".*",
        "$instance": ".*",
    }
    rules = []
    for index, (_, expr) in enumerate(dashboard_expressions()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    checked = tmp_path / "dashboard-queries.yml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", str(checked))
    assert result.returncode == 0, result.stdout + result.stderr
