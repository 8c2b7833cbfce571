"""The alerting rules: valid for Prometheus, behaving as alerts_test.yaml says on synthetic series,
reading only catalogued series, and shipped unchanged (targets aside) by the chart."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from llmops.devcluster.build import bin_dir
from llmops.observability import alerts, catalogue, promql

HERE = Path(__file__).parent
REPO = HERE.parents[1]
CHART = REPO / "charts" / "llmops"
UNIT_TESTS = HERE / "alerts_test.yaml"
PROMTOOL = shutil.which("promtool")
HELM = bin_dir() / "helm"

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not on PATH (Debian: apt-get install prometheus)")
needs_helm = pytest.mark.skipif(not HELM.exists(), reason=f"no helm at {HELM}: run scripts/setup.sh")


def all_rules(groups: dict) -> list[dict]:
    return [rule for group in groups["groups"] for rule in group["rules"]]


SEED_RULES = all_rules(alerts.rules(alerts.SEEDS))
ALERT_NAMES = [rule["alert"] for rule in SEED_RULES]


def promtool(*args: str, cwd: Path) -> None:
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


# ---------------------------------------------------------------- promql.series_names


@pytest.mark.parametrize("expr, names", [
    ("up", {"up"}),
    ('rate(http_requests_total{handler=~"/v1/.*"}[5m])', {"http_requests_total"}),
    # Binary operators with vector matching: both sides.
    ("a / on (namespace, pod) group_left (model) b", {"a", "b"}),
    ("sum by (pod) (a) > 0 and on (pod) max(b) > 1", {"a", "b"}),
    # Set operators, including `unless` on a parenthesised operand.
    ("a or (b > 0.8 unless on (pod) c)", {"a", "b", "c"}),
    # A histogram quantile: the selector inside rate inside an aggregation inside a function.
    ("histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[5m])))",
     {"vllm:time_to_first_token_seconds_bucket"}),
    # Subqueries, offsets, unary minus, and an aggregation whose parameter is itself a query.
    ("max_over_time(rate(a[1m])[30m:1m]) - b offset 1h", {"a", "b"}),
    ("topk(scalar(k), -c)", {"c", "k"}),
    ("absent(llmops_reconcile_total)", {"llmops_reconcile_total"}),
    # Every argument of a function, string arguments aside.
    ('label_replace(a, "x", "$1", "y", "(.*)") or vector(0)', {"a"}),
    # The name written as a matcher is still one series' name.
    ('{__name__="a", job="x"}', {"a"}),
    ("1 + 2", set()),
])
def test_series_names(expr, names):
    assert promql.series_names(expr) == names


@pytest.mark.parametrize("expr", ['{job="x"}', '{__name__=~"a|b"}', 'sum(a) / count({__name__!="b", job="y"})'])
def test_series_names_refuses_selectors_that_name_no_one_series(expr):
    # Such a selector could read anything: the catalogue check must not pass it over.
    with pytest.raises(ValueError, match="does not name one series"):
        promql.series_names(expr)


# ---------------------------------------------------------------- the rules themselves


@pytest.mark.parametrize("rule", SEED_RULES, ids=ALERT_NAMES)
def test_every_alert_reads_only_catalogued_series(rule):
    unknown = promql.series_names(rule["expr"]) - catalogue.readable_names()
    assert not unknown, f"{rule['alert']} reads series the catalogue does not list: {sorted(unknown)}"


@pytest.mark.parametrize("rule", SEED_RULES, ids=ALERT_NAMES)
def test_every_alert_says_what_and_how_bad(rule):
    assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip()
    assert rule["labels"]["severity"] in ("info", "warning", "critical")


def test_alert_names_are_unique():
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES))


# ---------------------------------------------------------------- promtool

UNIT_GROUPS = yaml.safe_load(UNIT_TESTS.read_text())["tests"]


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The generated seeds rule file as alerts.yaml, which alerts_test.yaml loads."""
    (tmp_path / "alerts.yaml").write_text(alerts.render(alerts.SEEDS))
    return tmp_path


@needs_promtool
def test_seed_rules_pass_promtool_check(rules_dir):
    promtool("check", "rules", "alerts.yaml", cwd=rules_dir)


# One promtool run per test group, so a failure names its case (and the others still report).
@needs_promtool
@pytest.mark.parametrize("group", UNIT_GROUPS, ids=[g["name"] for g in UNIT_GROUPS])
def test_promtool_unit_test(rules_dir, group):
    unit = yaml.safe_load(UNIT_TESTS.read_text())
    unit["tests"] = [group]
    (rules_dir / "alerts_test.yaml").write_text(yaml.safe_dump(unit, sort_keys=False))
    promtool("test", "rules", "alerts_test.yaml", cwd=rules_dir)


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    fired: set[str] = set()
    silent: set[str] = set()
    for group in UNIT_GROUPS:
        for case in group.get("alert_rule_test", []):
            (fired if case["exp_alerts"] else silent).add(case["alertname"])
    assert set(ALERT_NAMES) - fired == set(), "alerts no unit test shows firing"
    assert set(ALERT_NAMES) - silent == set(), "alerts no unit test shows silent"
    assert fired | silent <= set(ALERT_NAMES), "unit tests for alerts that no longer exist"


def test_the_unit_tests_load_the_generated_rule_file():
    assert yaml.safe_load(UNIT_TESTS.read_text())["rule_files"] == ["alerts.yaml"]


# ---------------------------------------------------------------- the chart


def prometheus_rule(*sets: str) -> tuple[dict, str]:
    """The chart's PrometheusRule, and the whole render, with the rule enabled and `sets` applied."""
    args = ["--set", "metrics.prometheusRule.enabled=true", *(a for s in sets for a in ("--set", s))]
    done = subprocess.run([str(HELM), "template", "llmops", str(CHART), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rules = [d for d in yaml.safe_load_all(done.stdout) if d and d.get("kind") == "PrometheusRule"]
    assert len(rules) == 1, f"{len(rules)} PrometheusRules rendered"
    return rules[0], done.stdout


@needs_helm
def test_chart_rules_default_to_the_seeds():
    rule, _ = prometheus_rule()
    # Stale charts/llmops/files/alerts.yaml (run llmops-crdgen) or values.yaml targets not the seeds.
    assert rule["spec"] == yaml.safe_load(alerts.render(alerts.SEEDS))


@needs_helm
def test_chart_rules_take_the_targets_from_values(tmp_path):
    rule, rendered = prometheus_rule("metrics.prometheusRule.targets.tokensPerSecondPerGpu=200",
                                     "metrics.prometheusRule.targets.ttftP95Seconds=0.25")
    assert "__LLMOPS_" not in rendered
    exprs = {r["alert"]: r["expr"] for r in all_rules(rule["spec"])}
    assert re.search(r"\)\) > 0\.25$", exprs["LlmopsTimeToFirstTokenHigh"])
    assert " < 200 and " in exprs["LlmopsGenerationThroughputLow"]
    # Everything else as the generator writes it for those targets.
    assert rule["spec"] == yaml.safe_load(alerts.render(replace(alerts.SEEDS, tokens_per_second_per_gpu=200, ttft_p95_seconds=0.25)))
    if PROMTOOL:
        (tmp_path / "chart-alerts.yaml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
        promtool("check", "rules", "chart-alerts.yaml", cwd=tmp_path)


def test_every_target_has_a_placeholder_and_a_chart_value():
    chart_file = alerts.render(alerts.PLACEHOLDERS)
    template = (CHART / "templates" / "monitoring.yaml").read_text()
    targets = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"]["targets"]
    for field, value in alerts.HELM_VALUES.items():
        placeholder = getattr(alerts.PLACEHOLDERS, field)
        assert placeholder in chart_file, f"no alert uses the {field} target"
        assert f'replace "{placeholder}" (toString $targets.{value})' in template
        assert targets[value] == getattr(alerts.SEEDS, field), f"values.yaml's {value} is not the seed"
